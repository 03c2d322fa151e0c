"""What the two guide-training stages (`train_discriminator`, `train_critic`) share: logging a
finished run's summary, and writing the trained guide, its curve and metrics on the main process."""
from __future__ import annotations

from pathlib import Path

import click
from torch import nn

from mmdisco import distributed as dist
from mmdisco import tracking
from mmdisco.guidance import store
from mmdisco.io import atomic_path, remove_tree, write_json
from stages.curves import write_curve


def summarise(summary: dict, run, base_a, base_v) -> None:
    """Add the parameter ratio and run id to ``summary`` and log it (main process only)."""
    if run is None:
        return
    summary["base_parameters"] = base_a.num_parameters() + base_v.num_parameters()
    summary["parameter_ratio"] = summary["num_parameters"] / summary["base_parameters"]
    summary["mlflow_run_id"] = run.info.run_id
    tracking.log_metrics({"processes": dist.world_size(),
                          **{k: v for k, v in summary.items() if k != "resumed_from"}})


def save_guide(stage: str, guide: nn.Module, summary: dict, curve: list[dict], *, out: Path,
               checkpoints: Path, plot_path: Path, metrics_path: Path) -> None:
    """Write the guide folder atomically, then the curve and metrics; drop the checkpoints.
    Other processes only wait at the barrier."""
    if dist.is_main():
        with atomic_path(out) as tmp:
            tmp.mkdir()
            store.save_guide(guide.cpu(), tmp)
            write_json(tmp / "training.json", summary)
        remove_tree(checkpoints)  # finished: nothing left to resume (never seen half-deleted)
        write_curve(plot_path, curve)
        write_json(metrics_path, summary)
        click.echo(f"{stage}: {summary['steps']} steps, {summary['num_parameters']} parameters "
                   f"({100 * summary['parameter_ratio']:.1f}% of the bases), "
                   f"{summary['wall_s']:.1f} s ({dist.world_size()} process(es)) -> {out}")
    dist.barrier()
