"""Stage `train_discriminator`: learn D(a_t, v_t, t) to tell real pairs from negatives.

Checkpoints live in `checkpoints/discriminator/` (outside DVC's outputs), so rerunning an
interrupted stage resumes from the last one. Launched with several processes (`docs/scaling.md`)
it trains data-parallel (`mmdisco.guidance.train`); the main process logs and writes.
With `condition: caption` it trains a `ConditionalDiscriminator` on each pair's prompt (the
clip's caption, the fake's caption from the bank) with condition dropout
(`discriminator.cond_dropout`).
"""
from __future__ import annotations

from pathlib import Path

import click
import torch

from mmdisco import distributed as dist
from mmdisco.config import to_dict
from mmdisco.guidance.conditional import joint_condition
from mmdisco.guidance.train import Conditions, new_discriminator, train_discriminator
from mmdisco.io import load_tensors
from mmdisco.prompts import PromptTable
from mmdisco.seeds import stage_seed
from stages.bases import load_bases
from stages.common import (bases_options, guide_outputs, latents_option, load, params_option,
                           user_errors)
from stages.curves import curve_logger
from stages.guides import save_guide, summarise


@click.command("train-discriminator")
@params_option
@latents_option
@click.option("--fakes", "fakes_dir", type=click.Path(file_okay=False, path_type=Path),
              default="data/fakes", show_default=True)
@bases_options
@guide_outputs("discriminator")
@user_errors
def main(params_path: Path, latents_dir: Path, fakes_dir: Path, audio_base: Path,
         video_base: Path, out: Path, checkpoints: Path, metrics_path: Path,
         plot_path: Path) -> None:
    """Train the joint discriminator on real vs negative pairs (discriminator.*, train.*)."""
    params = load(params_path)
    accelerator = dist.accelerator()   # None in one process
    base_a, base_v, table = load_bases(params, audio_base, video_base, latents_dir)
    (real_a, real_v), (fake_a, fake_v) = pairs(latents_dir), pairs(fakes_dir)
    seed = stage_seed(params.seed, "train_discriminator")
    conditions = None if table is None else \
        caption_conditions(table, fakes_dir, params.discriminator.cond_dropout)
    D = new_discriminator(params.discriminator, real_a.shape[1:], real_v.shape[1:], seed,
                          cond_dim=None if conditions is None else conditions.joint.shape[1])
    curve: list[dict] = []
    run_params = {"seed": params.seed, "discriminator": to_dict(params.discriminator),
                  "condition": params.condition,
                  "cfg": to_dict(params.cfg)}
    with dist.main_run("train_discriminator", run_params) as run:
        summary = train_discriminator(D, base_a, base_v, real_a=real_a, real_v=real_v,
                                      fake_a=fake_a, fake_v=fake_v, cfg=params.discriminator,
                                      checkpoint_dir=checkpoints, seed=seed,
                                      log=curve_logger(curve), accelerator=accelerator,
                                      conditions=conditions, device=dist.device(params.device))
        summarise(summary, run, base_a, base_v)
    save_guide("train_discriminator", D, summary, curve, out=out, checkpoints=checkpoints,
               plot_path=plot_path, metrics_path=metrics_path)


def pairs(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The audio and video latents of a folder of pairs (the real clips', the fake bank's)."""
    return (load_tensors(folder / "audio.safetensors")["latents"],
            load_tensors(folder / "video.safetensors")["latents"])


def caption_conditions(table: PromptTable, fakes_dir: Path, dropout: float) -> Conditions:
    """The prompt of each real clip (its caption) and of each fake (the bank's), and the joint
    condition of both bases' embeddings of every prompt."""
    if not (fakes_dir / "prompt.safetensors").is_file():
        raise click.ClickException(f"{fakes_dir} holds no captions (prompt.safetensors): the "
                                   f"bank was sampled with condition: none; rerun sample_fakes")
    every = torch.arange(len(table.prompts))
    base_a_rows, base_v_rows = table.embeddings("audio", every), table.embeddings("video", every)
    return Conditions(joint_condition(base_a_rows, base_v_rows), table.clip_prompt,
                      load_tensors(fakes_dir / "prompt.safetensors")["prompt"],
                      dropout=dropout, base_a=base_a_rows, base_v=base_v_rows)
