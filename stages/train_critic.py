"""Stage `train_critic`: the contrastive critic (InfoNCE on real pairs) for semantic guidance.

It needs only the real latents and the bases' noise schedules (never their networks).
Checkpoints live in `checkpoints/critic/`, so rerunning an interrupted stage resumes.
Launched with several processes (`docs/scaling.md`) it trains data-parallel with the embeddings
gathered across processes before InfoNCE (`mmdisco.guidance.critic`).
"""
from __future__ import annotations

from pathlib import Path

import click

from mmdisco import distributed as dist
from mmdisco.bases import load_base
from mmdisco.bases.protocol import check_pair
from mmdisco.config import to_dict
from mmdisco.guidance.critic import new_critic, train_critic
from mmdisco.io import load_tensors
from mmdisco.seeds import stage_seed
from stages.common import (bases_options, guide_outputs, latents_option, load, params_option,
                           user_errors)
from stages.curves import curve_logger
from stages.guides import save_guide, summarise


@click.command("train-critic")
@params_option
@latents_option
@bases_options
@guide_outputs("critic")
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
    critic = new_critic(cfg, real_a.shape[1:], real_v.shape[1:], seed)
    curve: list[dict] = []
    with dist.main_run("train_critic", {"seed": params.seed, "critic": to_dict(cfg)}) as run:
        summary = train_critic(critic, real_a=real_a, real_v=real_v,
                               alphas_a=base_a.alphas_cumprod(), alphas_v=base_v.alphas_cumprod(),
                               cfg=cfg, checkpoint_dir=checkpoints, seed=seed,
                               log=curve_logger(curve), accelerator=accelerator,
                               device=dist.device(params.device))
        summarise(summary, run, base_a, base_v)
    save_guide("train_critic", critic, summary, curve, out=out, checkpoints=checkpoints,
               plot_path=plot_path, metrics_path=metrics_path)
