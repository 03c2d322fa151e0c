"""Stage `sample_fakes`: the bank of fake pairs the discriminator learns to reject.

Each base model samples alone (`fakes.kind`, `fakes.steps`, `fakes.eta`: keep them equal to
`sample.*`, so that the discriminator sees the fakes it will correct); audio and video are then paired by a
random permutation, so a fake pair is a draw from the product of the two bases' marginals.

Seeds are per item (``mmdisco.seeds.item_seeds``): fake ``i`` comes from its own
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

from mmdisco import distributed as dist
from mmdisco import tracking
from mmdisco.config import to_dict
from mmdisco.guidance.bank import fake_bank, write_bank
from mmdisco.guidance.sampler import SamplerSettings
from mmdisco.io import atomic_path
from mmdisco.seeds import stage_seed
from stages.bases import load_bases
from stages.common import Timer, load, params_option, user_errors


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
    audio, video, prompt = fake_bank(base_a, base_v, SamplerSettings(cfg.steps, cfg.kind, cfg.eta),
                                     num_pairs=cfg.num_pairs, batch_size=cfg.batch_size, seed=seed,
                                     table=table, device=dist.device(params.device))
    if dist.is_main():
        bank = {"num_pairs": cfg.num_pairs, "kind": cfg.kind, "steps": cfg.steps, "eta": cfg.eta,
                "seed": seed, "seeding": "per-item", "condition": params.condition}
        if prompt is not None:
            bank.update(cfg_audio=params.cfg.audio, cfg_video=params.cfg.video,
                        captions=[table.prompts[i] for i in prompt.tolist()])
        with atomic_path(out) as tmp:
            write_bank(tmp, audio, video, prompt, bank)
        summary = {"pairs": cfg.num_pairs, "seconds": timer.seconds, "processes": dist.world_size(),
                   "pairs_per_second": round(cfg.num_pairs / max(timer.seconds, 1e-9), 2)}
        click.echo(f"sample_fakes: {cfg.num_pairs} pairs in {summary['seconds']} s "
                   f"({dist.world_size()} process(es)) -> {out}")
        with tracking.stage_run("sample_fakes", {"seed": params.seed, "fakes": to_dict(cfg),
                                                 "condition": params.condition,
                                                 "cfg": to_dict(params.cfg)}):
            tracking.log_metrics(summary)
    dist.barrier()
