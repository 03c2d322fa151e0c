"""Stage `sample_fakes`: the bank of fake pairs the discriminator learns to reject.

Each base model samples alone (DDIM, `fakes.steps`, `fakes.eta`: the same sampler as
`sample`, so the discriminator sees the fakes it will correct); audio and video are then paired by a
random permutation, so a fake pair is a draw from the product of the two bases' marginals.
"""
from __future__ import annotations

from pathlib import Path

import click
import torch
from tqdm import tqdm

from mmdisco import tracking
from mmdisco.bases import load_base
from mmdisco.config import to_dict
from mmdisco.guidance.sampler import modality_generators, sample_single
from mmdisco.io import atomic_path, save_tensors, write_json
from stages.common import Timer, load, params_option, stage_seed, user_errors


def sample_bank(base, n: int, steps: int, batch_size: int, generator: torch.Generator,
                label: str, eta: float = 0.0) -> torch.Tensor:
    """``n`` independent samples in batches with a progress bar (same as one batched call)."""
    out = []
    for lo in tqdm(range(0, n, batch_size), desc=f"fakes {label}", unit="batch", leave=False):
        x, _ = sample_single(base, num_samples=min(batch_size, n - lo), steps=steps,
                             generator=generator, kind="ddim", eta=eta)
        out.append(x)
    return torch.cat(out)


@click.command("sample-fakes")
@params_option
@click.option("--audio-base", type=click.Path(file_okay=False, path_type=Path),
              default="models/base_audio", show_default=True)
@click.option("--video-base", type=click.Path(file_okay=False, path_type=Path),
              default="models/base_video", show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default="data/fakes",
              show_default=True)
@user_errors
def main(params_path: Path, audio_base: Path, video_base: Path, out: Path) -> None:
    """Sample each base model independently and pair the samples at random (fakes.*)."""
    params = load(params_path)
    cfg, timer = params.fakes, Timer()
    base_a, base_v = load_base(audio_base), load_base(video_base)
    seed = stage_seed(params.seed, "sample_fakes")
    gen_a, gen_v = modality_generators(seed)
    audio = sample_bank(base_a, cfg.num_pairs, cfg.steps, cfg.batch_size, gen_a, "audio", cfg.eta)
    video = sample_bank(base_v, cfg.num_pairs, cfg.steps, cfg.batch_size, gen_v, "video", cfg.eta)
    pairing = torch.randperm(cfg.num_pairs, generator=torch.Generator().manual_seed(seed))
    video = video[pairing]
    with atomic_path(out) as tmp:
        tmp.mkdir()
        save_tensors(tmp / "audio.safetensors", {"latents": audio})
        save_tensors(tmp / "video.safetensors", {"latents": video})
        write_json(tmp / "bank.json", {"num_pairs": cfg.num_pairs, "steps": cfg.steps,
                                      "eta": cfg.eta, "seed": seed})
    summary = {"pairs": cfg.num_pairs, "seconds": timer.seconds,
               "pairs_per_second": round(cfg.num_pairs / max(timer.seconds, 1e-9), 2)}
    click.echo(f"sample_fakes: {cfg.num_pairs} pairs in {summary['seconds']} s -> {out}")
    with tracking.stage_run("sample_fakes", {"seed": params.seed, "fakes": to_dict(cfg)}):
        tracking.log_metrics(summary)
