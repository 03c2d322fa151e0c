"""Stage `sample_fakes`: the bank of fake pairs the discriminator learns to reject.

Each base model samples alone (`fakes.kind`, `fakes.steps`, `fakes.eta`: keep them equal to
`sample.*`, so that the discriminator sees the fakes it will correct); audio and video are then paired by a
random permutation, so a fake pair is a draw from the product of the two bases' marginals.

Seeds are per item (``mmdisco.guidance.sampler.item_seeds``): fake ``i`` comes from its own
generators, whatever batch or process computed it. Launched with several processes
(``docs/scaling.md``) each samples its share of the batches (``mmdisco.distributed``), the
shares are gathered in item order and the main process writes the bank: the same files, bit
for bit, as one process makes on the same hardware. The pairing permutation is drawn from the
stage seed alone, so it does not depend on the process count either.

With `condition: caption` each fake pair comes from one real caption: caption ``i`` is a clip's
caption drawn from the stage seed, and both bases are prompted with it independently, each
with its own CFG weight (``cfg.audio``, ``cfg.video``). Pair ``i`` is then audio ``i`` with video
``i`` (no permutation: the caption pairs them), and the bank records the caption of each pair
(``prompt.safetensors``: its index in the prompt table; ``bank.json``: the texts).
"""
from __future__ import annotations

from pathlib import Path

import click
import torch
from tqdm import tqdm

from mmdisco import distributed as dist
from mmdisco import tracking
from mmdisco.config import to_dict
from mmdisco.guidance.sampler import item_seeds, sample_single
from mmdisco.io import atomic_path, save_tensors, write_json
from stages.bases import load_bases
from mmdisco.seeds import stage_seed
from stages.common import Timer, load, params_option, user_errors


def sample_bank(base, n: int, steps: int, batch_size: int, seed: int, label: str,
                eta: float = 0.0, cond: torch.Tensor | None = None,
                device: str | torch.device = "cpu", kind: str = "ddim") -> torch.Tensor:
    """``n`` independent samples, item ``i`` from ``item_seeds(seed, n)[i]`` (and prompted
    with ``cond[i]`` when given); this process samples its share of the batches, and every
    process gets all ``n`` in item order."""
    seeds, device = item_seeds(seed, n), dist.device(device)
    bar = tqdm(total=len(dist.batch_shard(n, batch_size)), desc=f"fakes {label}", unit="batch",
               leave=False, disable=not dist.is_main())

    def batch(lo: int, hi: int):
        x, _ = sample_single(base, num_samples=hi - lo, steps=steps, item_seeds=seeds[lo:hi],
                             kind=kind, eta=eta, device=device,
                             cond=None if cond is None else cond[lo:hi])
        bar.update()
        return (x.cpu(),), None

    (x,), _ = dist.map_batches(batch, n, batch_size)
    bar.close()
    return x


def fake_bank(base_a, base_v, *, num_pairs: int, steps: int, batch_size: int, eta: float,
              seed: int, table=None, device: str | torch.device = "cpu", kind: str = "ddim") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(audio, video, prompt)``: independent samples of each base. Unconditional
    (``table=None``): video paired by a permutation drawn from ``seed`` (the same with any number
    of processes), ``prompt`` None. Conditional: pair ``i`` prompted with the caption of a clip
    drawn from ``seed``, ``prompt[i]`` its index in ``table.prompts``."""
    if table is None:
        audio = sample_bank(base_a, num_pairs, steps, batch_size, seed, "audio", eta,
                            device=device, kind=kind)
        video = sample_bank(base_v, num_pairs, steps, batch_size, seed, "video", eta,
                            device=device, kind=kind)
        pairing = torch.randperm(num_pairs, generator=torch.Generator().manual_seed(seed))
        return audio, video[pairing], None
    clips = torch.randint(len(table.clip_prompt), (num_pairs,),
                          generator=torch.Generator().manual_seed(seed))
    prompt = table.clip_prompt[clips]
    audio = sample_bank(base_a, num_pairs, steps, batch_size, seed, "audio", eta,
                        cond=table.embeddings("audio", prompt), device=device, kind=kind)
    video = sample_bank(base_v, num_pairs, steps, batch_size, seed, "video", eta,
                        cond=table.embeddings("video", prompt), device=device, kind=kind)
    return audio, video, prompt


@click.command("sample-fakes")
@params_option
@click.option("--audio-base", type=click.Path(file_okay=False, path_type=Path),
              default="models/base_audio", show_default=True)
@click.option("--video-base", type=click.Path(file_okay=False, path_type=Path),
              default="models/base_video", show_default=True)
@click.option("--latents", "latents_dir", type=click.Path(file_okay=False, path_type=Path),
              default="data/latents", show_default=True,
              help="condition: caption: the prompt table stored by `encode`")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default="data/fakes",
              show_default=True)
@user_errors
def main(params_path: Path, audio_base: Path, video_base: Path, latents_dir: Path,
         out: Path) -> None:
    """Sample each base model independently and pair the samples at random, or by caption
    (fakes.*, condition, cfg.*)."""
    params = load(params_path)
    cfg, timer = params.fakes, Timer()
    base_a, base_v, table = load_bases(params, audio_base, video_base, latents_dir)
    seed = stage_seed(params.seed, "sample_fakes")
    audio, video, prompt = fake_bank(base_a, base_v, num_pairs=cfg.num_pairs, steps=cfg.steps,
                                     batch_size=cfg.batch_size, eta=cfg.eta, seed=seed,
                                     table=table, device=dist.device(params.device),
                                     kind=cfg.kind)
    if dist.is_main():
        with atomic_path(out) as tmp:
            tmp.mkdir()
            save_tensors(tmp / "audio.safetensors", {"latents": audio})
            save_tensors(tmp / "video.safetensors", {"latents": video})
            bank = {"num_pairs": cfg.num_pairs, "kind": cfg.kind, "steps": cfg.steps,
                    "eta": cfg.eta, "seed": seed,
                    "seeding": "per-item", "condition": params.condition}
            if prompt is not None:
                save_tensors(tmp / "prompt.safetensors", {"prompt": prompt})
                bank.update(cfg_audio=params.cfg.audio, cfg_video=params.cfg.video,
                            captions=[table.prompts[i] for i in prompt.tolist()])
            write_json(tmp / "bank.json", bank)
        summary = {"pairs": cfg.num_pairs, "seconds": timer.seconds, "processes": dist.world_size(),
                   "pairs_per_second": round(cfg.num_pairs / max(timer.seconds, 1e-9), 2)}
        click.echo(f"sample_fakes: {cfg.num_pairs} pairs in {summary['seconds']} s "
                   f"({dist.world_size()} process(es)) -> {out}")
        with tracking.stage_run("sample_fakes", {"seed": params.seed, "fakes": to_dict(cfg),
                                                 "condition": params.condition,
                                                 "cfg": to_dict(params.cfg)}):
            tracking.log_metrics(summary)
    dist.barrier()
