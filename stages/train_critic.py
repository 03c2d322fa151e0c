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
from mmdisco import tracking
from mmdisco.bases import load_base
from mmdisco.bases.protocol import check_pair
from mmdisco.config import to_dict
from mmdisco.guidance.critic import Critic, train_critic
from mmdisco.guidance.store import save_discriminator
from mmdisco.io import atomic_path, load_tensors, remove_tree, write_json
from stages.common import load, params_option, stage_seed, user_errors
from stages.train_base import write_curve


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
    with dist.main_run("train_critic", {"seed": params.seed, "critic": to_dict(cfg)}) as run:
        def log(step: int, stats: dict) -> None:
            curve.append({"step": step, **{k: round(float(v), 6) for k, v in stats.items()}})
            tracking.log_metrics(stats, step=step)

        summary = train_critic(critic, real_a=real_a, real_v=real_v,
                               alphas_a=base_a.alphas_cumprod(), alphas_v=base_v.alphas_cumprod(),
                               cfg=cfg, checkpoint_dir=checkpoints, seed=seed, log=log,
                               accelerator=accelerator)
        if run is not None:   # the main process
            summary["base_parameters"] = base_a.num_parameters() + base_v.num_parameters()
            summary["parameter_ratio"] = summary["num_parameters"] / summary["base_parameters"]
            summary["mlflow_run_id"] = run.info.run_id
            tracking.log_metrics({"processes": dist.world_size(),
                                  **{k: v for k, v in summary.items() if k != "resumed_from"}})
    if not dist.is_main():
        dist.barrier()
        return
    critic = critic.cpu()
    with atomic_path(out) as tmp:
        tmp.mkdir()
        save_discriminator(critic, tmp)
        write_json(tmp / "training.json", summary)
    remove_tree(checkpoints)  # finished: nothing left to resume (never seen half-deleted)
    write_curve(plot_path, curve)
    write_json(metrics_path, summary)
    click.echo(f"train_critic: {summary['steps']} steps, {summary['num_parameters']} parameters "
               f"({100 * summary['parameter_ratio']:.1f}% of the bases), "
               f"{summary['wall_s']:.1f} s ({dist.world_size()} process(es)) -> {out}")
    dist.barrier()
