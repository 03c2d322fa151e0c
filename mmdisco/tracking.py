"""MLflow conventions shared by every stage.

Store: ``MLFLOW_TRACKING_URI`` when set (a team server), else ``sqlite:///<root>/mlflow.db``
where ``<root>`` is ``DVC_ROOT`` (set by DVC for every stage, including ``dvc exp run --temp``
and queued runs, which execute in a temporary copy) or the current folder. Each run is tagged
with the stage, the DVC experiment and the git commit, and carries the stage's resolved params.
"""
from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator

from mmdisco.config import flatten

EXPERIMENT = "mmdisco"


def repo_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{repo_root() / 'mlflow.db'}"


def git_commit(root: Path | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root or repo_root(),
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_tags(stage: str) -> dict[str, str]:
    tags = {"mmdisco.stage": os.environ.get("DVC_STAGE", stage),
            "mmdisco.git_commit": git_commit()}
    for env, tag in (("DVC_EXP_NAME", "dvc.exp_name"),
                     ("DVC_EXP_BASELINE_REV", "dvc.exp_baseline_rev")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


def _quiet_mlflow() -> None:
    for name in ("mlflow", "alembic", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.contextmanager
def stage_run(stage: str, params: dict[str, Any] | None = None) -> Iterator[Any]:
    """Open one MLflow run for a stage; yields the active run (``mlflow.active_run()``)."""
    import mlflow

    _quiet_mlflow()
    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT))
    with mlflow.start_run(run_name=stage, tags=run_tags(stage)) as run:
        if params:
            log_params(params)
        yield run


def log_params(params: dict[str, Any]) -> None:
    import mlflow

    flat = {k: ("null" if v is None else str(v)) for k, v in flatten(params).items()}
    items = list(flat.items())
    for i in range(0, len(items), 100):  # MLflow's batch limit
        mlflow.log_params(dict(items[i:i + 100]))


def log_metrics(metrics: dict[str, Any], step: int | None = None, prefix: str = "") -> None:
    """Log every finite scalar in a (possibly nested) dict; lists and strings are skipped."""
    import mlflow

    scalars = {}
    for k, v in flatten(metrics).items():
        if isinstance(v, bool):
            v = float(v)
        if isinstance(v, (int, float)) and v == v and abs(v) != float("inf"):
            scalars[(prefix + k).replace("[", "_").replace("]", "")] = float(v)
    if scalars:
        mlflow.log_metrics(scalars, step=step)
