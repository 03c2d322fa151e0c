"""Stage `train_discriminator`: learn D(a_t, v_t, t) to tell real pairs from negatives.

Checkpoints live in `checkpoints/discriminator/` (outside DVC's outputs), so rerunning an
interrupted stage resumes from the last one. Launched with several processes (`docs/scaling.md`)
it trains data-parallel (`mmdisco.guidance.train`); the main process logs and writes.
With `condition: caption` it trains a `ConditionalDiscriminator` on each pair's prompt (the
clip's caption, the fake's caption from the bank) with condition dropout (`train.cond_dropout`).
"""
from __future__ import annotations

from pathlib import Path

import click
import torch

from mmdisco import distributed as dist
from mmdisco.config import to_dict
from mmdisco.guidance.conditional import ConditionalDiscriminator, joint_condition
from mmdisco.guidance.discriminator import Discriminator
from mmdisco.guidance.train import Conditions, train_discriminator
from mmdisco.io import load_tensors
from stages.bases import load_bases
from mmdisco.seeds import stage_seed
from stages.common import load, params_option, user_errors
from stages.curves import curve_logger
from stages.guides import save_guide, summarise


@click.command("train-discriminator")
@params_option
@click.option("--latents", "latents_dir", type=click.Path(file_okay=False, path_type=Path),
              default="data/latents", show_default=True)
@click.option("--fakes", "fakes_dir", type=click.Path(file_okay=False, path_type=Path),
              default="data/fakes", show_default=True)
@click.option("--audio-base", type=click.Path(file_okay=False, path_type=Path),
              default="models/base_audio", show_default=True)
@click.option("--video-base", type=click.Path(file_okay=False, path_type=Path),
              default="models/base_video", show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              default="models/discriminator", show_default=True)
@click.option("--checkpoints", type=click.Path(file_okay=False, path_type=Path),
              default="checkpoints/discriminator", show_default=True)
@click.option("--metrics", "metrics_path", type=click.Path(dir_okay=False, path_type=Path),
              default="metrics/discriminator.json", show_default=True)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              default="plots/discriminator.csv", show_default=True)
@user_errors
def main(params_path: Path, latents_dir: Path, fakes_dir: Path, audio_base: Path,
         video_base: Path, out: Path, checkpoints: Path, metrics_path: Path,
         plot_path: Path) -> None:
    """Train the joint discriminator on real vs negative pairs (discriminator.*, train.*)."""
    params = load(params_path)
    accelerator = dist.accelerator()   # None in one process
    base_a, base_v, table = load_bases(params, audio_base, video_base, latents_dir)
    real_a = load_tensors(latents_dir / "audio.safetensors")["latents"]
    real_v = load_tensors(latents_dir / "video.safetensors")["latents"]
    fake_a = load_tensors(fakes_dir / "audio.safetensors")["latents"]
    fake_v = load_tensors(fakes_dir / "video.safetensors")["latents"]
    seed = stage_seed(params.seed, "train_discriminator")
    dcfg = params.discriminator
    conditions, extra = None, {}
    if table is not None:
        if not (fakes_dir / "prompt.safetensors").is_file():
            raise click.ClickException(f"{fakes_dir} holds no captions (prompt.safetensors): the "
                                       f"bank was sampled with condition: none; rerun sample_fakes")
        every = torch.arange(len(table.prompts))
        base_a_rows, base_v_rows = table.embeddings("audio", every), table.embeddings("video", every)
        joint = joint_condition(base_a_rows, base_v_rows)
        conditions = Conditions(joint, table.clip_prompt,
                                load_tensors(fakes_dir / "prompt.safetensors")["prompt"],
                                dropout=params.train.cond_dropout, base_a=base_a_rows,
                                base_v=base_v_rows)
        extra = {"cond_dim": joint.shape[1]}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        D = (ConditionalDiscriminator if conditions is not None else Discriminator)(
            audio_shape=tuple(real_a.shape[1:]), video_shape=tuple(real_v.shape[1:]),
            width=dcfg.width, time_dim=dcfg.time_dim, head_hidden=dcfg.head_hidden, **extra)
    curve: list[dict] = []
    log = curve_logger(curve)
    run_params = {"seed": params.seed, "discriminator": to_dict(dcfg), "train": to_dict(params.train),
                  "condition": params.condition, "cfg": to_dict(params.cfg)}
    with dist.main_run("train_discriminator", run_params) as run:
        summary = train_discriminator(D, base_a, base_v, real_a=real_a, real_v=real_v,
                                      fake_a=fake_a, fake_v=fake_v, cfg=params.train,
                                      checkpoint_dir=checkpoints, seed=seed, log=log,
                                      accelerator=accelerator, conditions=conditions,
                                      device=dist.device(params.device))
        summarise(summary, run, base_a, base_v)
    save_guide("train_discriminator", D, summary, curve, out=out, checkpoints=checkpoints,
               plot_path=plot_path, metrics_path=metrics_path)
