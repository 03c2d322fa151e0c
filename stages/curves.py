"""Training curves: each logged step goes to MLflow and to a CSV that `dvc plots` draws."""
from __future__ import annotations

from pathlib import Path

from mmdisco import tracking
from mmdisco.io import atomic_path


def write_curve(path: Path, rows: list[dict]) -> None:
    """A CSV that `dvc plots` draws (step on x)."""
    keys = list(dict.fromkeys(k for r in rows for k in r)) or ["step"]
    lines = [",".join(keys)] + [",".join(str(r.get(k, "")) for k in keys) for r in rows]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def curve_logger(curve: list[dict]):
    """A ``log(step, stats)`` callback that keeps the curve and sends the stats to MLflow."""
    def log(step: int, stats: dict) -> None:
        curve.append({"step": step, **{k: round(float(v), 6) for k, v in stats.items()}})
        tracking.log_metrics(stats, step=step)
    return log
