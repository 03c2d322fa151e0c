"""Stage `train_critic`: the contrastive critic (InfoNCE on real pairs) for semantic guidance.

It needs only the real latents and the bases' noise schedules (never their networks).
Checkpoints live in `checkpoints/critic/`, so rerunning an interrupted stage resumes.
Launched with several processes (`docs/scaling.md`) it trains data-parallel with the embeddings
gathered across processes before InfoNCE (`mmdisco.guidance.critic`).
"""
from __future__ import annotations

from pathlib import Path

import click
import torch

from mmdisco import distributed as dist
from mmdisco.bases import load_base
from mmdisco.bases.protocol import check_pair
from mmdisco.config import to_dict
from mmdisco.guidance.critic import Critic, train_critic
from mmdisco.io import load_tensors
from mmdisco.seeds import stage_seed
from stages.common import load, params_option, user_errors
from stages.curves import curve_logger
from stages.guides import save_guide, summarise


@click.command("train-critic")
@params_option
@click.option("--latents", "latents_dir", type=click.Path(file_okay=False, path_type=Path),
              default="data/latents", show_default=True)
@click.option("--audio-base", type=click.Path(file_okay=False, path_type=Path),
              default="models/base_audio", show_default=True)
@click.option("--video-base", type=click.Path(file_okay=False, path_type=Path),
              default="models/base_video", show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              default="models/critic", show_default=True)
@click.option("--checkpoints", type=click.Path(file_okay=False, path_type=Path),
              default="checkpoints/critic", show_default=True)
@click.option("--metrics", "metrics_path", type=click.Path(dir_okay=False, path_type=Path),
              default="metrics/critic.json", show_default=True)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              default="plots/critic.csv", show_default=True)
@user_errors
def main(params_path: Path, latents_dir: Path, audio_base: Path, video_base: Path, out: Path,
         checkpoints: Path, metrics_path: Path, plot_path: Path) -> None:
    """Train the contrastive critic on real pairs (critic.*)."""
    params = load(params_path)
    cfg = params.critic
    accelerator = dist.accelerator()   # None in one process
    base_a, base_v = load_base(audio_base), load_base(video_base)
    check_pair(base_a, base_v)
    real_a = load_tensors(latents_dir / "audio.safetensors")["latents"]
    real_v = load_tensors(latents_dir / "video.safetensors")["latents"]
    seed = stage_seed(params.seed, "train_critic")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        critic = Critic(audio_shape=tuple(real_a.shape[1:]), video_shape=tuple(real_v.shape[1:]),
                        width=cfg.width, time_dim=cfg.time_dim, dim=cfg.dim,
                        temperature=cfg.temperature)
    curve: list[dict] = []
    log = curve_logger(curve)
    with dist.main_run("train_critic", {"seed": params.seed, "critic": to_dict(cfg)}) as run:
        summary = train_critic(critic, real_a=real_a, real_v=real_v,
                               alphas_a=base_a.alphas_cumprod(), alphas_v=base_v.alphas_cumprod(),
                               cfg=cfg, checkpoint_dir=checkpoints, seed=seed, log=log,
                               accelerator=accelerator, device=dist.device(params.device))
        summarise(summary, run, base_a, base_v)
    save_guide("train_critic", critic, summary, curve, out=out, checkpoints=checkpoints,
               plot_path=plot_path, metrics_path=metrics_path)
