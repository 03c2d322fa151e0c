"""Stage `train_base_audio` / `train_base_video`: train one tiny single-modal base model.

Only for the embedded default; pretrained bases skip it. Each base sees only its own
modality's latents. Checkpoints live in `checkpoints/base_<modality>/` (outside DVC's outputs,
which DVC clears before a stage runs), so rerunning an interrupted stage resumes it.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import click

from mmdisco import tracking
from mmdisco.bases.train import train_base
from mmdisco.config import to_dict
from mmdisco.devices import resolve_device
from mmdisco.io import atomic_path, load_tensors, remove_tree, write_json
from mmdisco.prompts import PromptTable
from mmdisco.seeds import stage_seed
from stages.common import latents_option, load, params_option, user_errors
from stages.curves import curve_logger, write_curve


@click.command("train-base")
@params_option
@click.option("--modality", type=click.Choice(["audio", "video"]), required=True)
@latents_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="model folder (save_pretrained layout + base.json)")
@click.option("--checkpoints", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="resumable checkpoints [default: checkpoints/base_<modality>]")
@click.option("--metrics", "metrics_path", type=click.Path(dir_okay=False, path_type=Path),
              required=True)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              required=True, help="loss curve CSV")
@user_errors
def main(params_path: Path, modality: str, latents_dir: Path, out: Path, checkpoints: Path | None,
         metrics_path: Path, plot_path: Path) -> None:
    """Train the tiny base diffusion model of one modality on its latents (base.<modality>)."""
    params = load(params_path)
    cfg = getattr(params.base, modality)
    latents = load_tensors(latents_dir / f"{modality}.safetensors")["latents"]
    cond = uncond = None
    if params.condition == "caption":   # (latent, caption embedding) pairs, for CFG
        table = PromptTable(latents_dir)
        cond, uncond = table.embeddings(modality, table.clip_prompt), table.null(modality)
    work = checkpoints or Path("checkpoints") / f"base_{modality}"
    curve: list[dict] = []
    with tracking.stage_run(f"train_base_{modality}", {"seed": params.seed, "condition":
                                                       params.condition,
                                                       f"base.{modality}": to_dict(cfg)}) as run:
        log = curve_logger(curve)
        summary = train_base(latents, cfg, work, seed=stage_seed(params.seed, f"base_{modality}"),
                             log=log, cond=cond, uncond=uncond,
                             device=resolve_device(params.device))
        summary["mlflow_run_id"] = run.info.run_id
        tracking.log_metrics({k: v for k, v in summary.items() if k != "resumed_from"})
    with atomic_path(out) as tmp:
        shutil.copytree(work, tmp, ignore=shutil.ignore_patterns("checkpoint"))
        write_json(tmp / "training.json", summary)
    remove_tree(work)  # finished (never left half-deleted): a checkpoint is only for resuming
    write_curve(plot_path, curve)
    write_json(metrics_path, summary)
    click.echo(f"train_base_{modality}: {summary['steps']} steps, final loss "
               f"{summary['final_loss']:.4f}, {summary['num_parameters']} parameters, "
               f"{summary['wall_s']:.1f} s -> {out}")
