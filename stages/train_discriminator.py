"""Stage `train_discriminator`: learn D(a_t, v_t, t) to tell real pairs from negatives.

Checkpoints live in `checkpoints/discriminator/` (outside DVC's outputs), so rerunning an
interrupted stage resumes from the last one. Launched with several processes (`docs/scaling.md`)
it trains data-parallel (`mmdisco.guidance.train`); the main process logs and writes.
With `condition: caption` it trains a `ConditionalDiscriminator` on each pair's prompt (the
clip's caption, the fake's caption from the bank) with condition dropout
(`discriminator.cond_dropout`).

With `guidance.module: released` it trains nothing: it checks the authors' released module
(`guidance.released`) against the bases' latent shapes and prompt embeddings, loads it strictly,
and records a copy of it with its SHA-256, setting and parameter count (`mmdisco.guidance.store`
says why a copy), so that `sample` and `mmdisco generate` load it as they load a trained one.
"""
from __future__ import annotations

from pathlib import Path

import click
import torch

from mmdisco import distributed as dist
from mmdisco import tracking
from mmdisco.bases.protocol import read_meta
from mmdisco.config import Params, to_dict
from mmdisco.guidance import store
from mmdisco.guidance.conditional import joint_condition
from mmdisco.guidance.release import check_fits
from mmdisco.guidance.store import released_checkpoint
from mmdisco.guidance.train import Conditions, new_discriminator, train_discriminator
from mmdisco.io import atomic_path, load_tensors, remove_tree, write_json
from mmdisco.prompts import PromptTable
from mmdisco.seeds import stage_seed
from stages.bases import load_bases
from stages.common import (Timer, bases_options, guide_outputs, latents_option, load,
                           params_option, user_errors)
from stages.curves import curve_logger, write_curve
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
    """Train the joint discriminator on real vs negative pairs (discriminator.*, train.*), or
    record the released one (guidance.module: released)."""
    params = load(params_path)
    if params.guidance.module == "released":
        record_released_guide(params, latents_dir, (audio_base, video_base), out=out,
                              checkpoints=checkpoints, metrics_path=metrics_path,
                              plot_path=plot_path)
        return
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


def record_released_guide(params: Params, latents_dir: Path, bases: tuple[Path, Path], *,
                          out: Path, checkpoints: Path, metrics_path: Path,
                          plot_path: Path) -> None:
    """Check the released module against the bases (their ``base.json``: no weights are
    loaded), then record a copy of it in ``out`` with its summary in ``training.json`` and
    ``metrics_path``; the curve is empty. Only the main process works."""
    r, timer = params.guidance.released, Timer()
    checkpoint = released_checkpoint(r.checkpoint, r.setting)
    metas = [read_meta(b) for b in bases]
    table = PromptTable(latents_dir) if params.condition == "caption" else None
    texts = {} if table is None else {f"text_{m}": tuple(table.null(m).shape[1:])
                                      for m in ("audio", "video")}
    notes = check_fits(r.setting, audio_shape=metas[0]["latent_shape"],
                       video_shape=metas[1]["latent_shape"],
                       base_kinds=(metas[0]["kind"], metas[1]["kind"]), **texts)
    for note in notes:
        click.echo(f"note: {note}", err=True)
    logged = {"seed": params.seed, "condition": params.condition,
              "guidance": {"module": "released", "released": to_dict(r)}}
    with dist.main_run("train_discriminator", logged) as run:
        if run is not None:
            with atomic_path(out) as tmp:
                tmp.mkdir()
                _, record = store.record_released(checkpoint, r.setting, tmp)
                base_parameters = sum(m.get("num_parameters", 0) for m in metas)
                summary = {**record, "module": "released", "steps": 0, "notes": notes,
                           "base_parameters": base_parameters, "wall_s": timer.seconds,
                           "parameter_ratio": record["num_parameters"] / max(base_parameters, 1),
                           "mlflow_run_id": run.info.run_id}
                write_json(tmp / "training.json", summary)
            tracking.log_metrics({k: summary[k] for k in ("num_parameters", "base_parameters",
                                                          "parameter_ratio", "wall_s")})
            tracking.set_tags({"released.sha256": record["sha256"]})
            remove_tree(checkpoints)   # a trained run's leftovers cannot resume into this
            write_curve(plot_path, [])
            write_json(metrics_path, summary)
            click.echo(f"train_discriminator: recorded the released {r.setting} "
                       f"({record['num_parameters']} parameters, sha256 {record['sha256'][:12]}) "
                       f"-> {out}")
    dist.barrier()
