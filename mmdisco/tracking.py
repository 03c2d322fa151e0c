"""MLflow conventions shared by every stage.

Store: ``MLFLOW_TRACKING_URI`` when set (a team server), else ``sqlite:///<root>/mlflow.db``
where ``<root>`` is ``DVC_ROOT`` (set by DVC for every stage, including ``dvc exp run --temp``
and queued runs, which execute in a temporary copy) or the current folder. Each run is tagged
with the stage, the DVC experiment and the git commit, and carries the stage's resolved params.

Several processes may log into one SQLite store at once (``dvc queue start -j 2``): MLflow
waits up to 20 s for the database lock (its ``busy_timeout``), and the one step SQLite cannot
share, creating a new store (its schema migrations), is serialised here by a lock on the
store's folder, so two stages starting on a fresh ``mlflow.db`` do not both try to create its
tables. If the store still stays locked, the stage fails with a message naming the way out
(a tracking server via ``MLFLOW_TRACKING_URI``, or one experiment at a time).
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
SQLITE_LOCKED = ("database is locked", "database table is locked")


class TrackingStoreBusy(RuntimeError):
    """The SQLite MLflow store stayed locked by other writers longer than MLflow waits."""


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


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI, else ``None``."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):].split("?", 1)[0])


@contextlib.contextmanager
def _store_init_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock while this process first opens a SQLite store (MLflow creates
    and migrates the schema then, which two processes must not do at once). The lock is a
    ``flock`` on the database's folder, so no lock file is left anywhere (SQLite's own locks
    are ``fcntl`` locks on the database file: independent of this one)."""
    db = sqlite_path(uri)
    try:
        import fcntl
    except ImportError:   # not POSIX: no lock (the project targets Linux)
        fcntl = None
    if db is None or fcntl is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(db.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)   # releases the lock


def _busy_message(uri: str, e: Exception) -> str:
    return (f"the MLflow store {uri} stayed locked by another process ({e}); SQLite takes one "
            f"writer at a time. To run several experiments at once, set MLFLOW_TRACKING_URI "
            f"to an MLflow tracking server (README, 'Using it'), or run them one at a time "
            f"(`dvc queue start -j 1`); then rerun (`dvc repro` or `dvc exp run`)")


def _is_locked(e: BaseException) -> bool:
    return any(m in str(e) for m in SQLITE_LOCKED)


def _mlflow() -> Any:
    """MLflow, imported on first use: it takes seconds to import, and the library's users who
    never track (tests, bench, notebooks) should not pay for it."""
    import mlflow

    return mlflow


@contextlib.contextmanager
def stage_run(stage: str, params: dict[str, Any] | None = None) -> Iterator[Any]:
    """Open one MLflow run for a stage; yields the active run (``mlflow.active_run()``).

    A SQLite store that stays locked (too many writers at once) raises ``TrackingStoreBusy``
    with the fix in its message instead of MLflow's bare "database is locked".
    """
    mlflow = _mlflow()
    _quiet_mlflow()
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        with _store_init_lock(uri):
            mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT))
        with mlflow.start_run(run_name=stage, tags=run_tags(stage)) as run:
            if params:
                log_params(params)
            yield run
    except Exception as e:
        if sqlite_path(uri) is not None and _is_locked(e):
            raise TrackingStoreBusy(_busy_message(uri, e)) from e
        raise


def log_params(params: dict[str, Any]) -> None:
    mlflow = _mlflow()
    flat = {k: ("null" if v is None else str(v)) for k, v in flatten(params).items()}
    items = list(flat.items())
    for i in range(0, len(items), 100):  # MLflow's batch limit
        mlflow.log_params(dict(items[i:i + 100]))


def log_metrics(metrics: dict[str, Any], step: int | None = None, prefix: str = "") -> None:
    """Log every finite scalar in a (possibly nested) dict; lists and strings are skipped."""
    mlflow = _mlflow()
    scalars = {}
    for k, v in flatten(metrics).items():
        if isinstance(v, bool):
            v = float(v)
        if isinstance(v, (int, float)) and v == v and abs(v) != float("inf"):
            scalars[(prefix + k).replace("[", "_").replace("]", "")] = float(v)
    if scalars:
        mlflow.log_metrics(scalars, step=step)


def log_dict(obj: Any, artifact_file: str) -> None:
    """Log a JSON-serialisable object as an artifact of the active run (e.g. the prompts)."""
    _mlflow().log_dict(obj, artifact_file)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    """Copy one file into the active run's artifacts (under ``artifact_path`` if given)."""
    _mlflow().log_artifact(str(path), artifact_path=artifact_path)


def log_artifacts(folder: str | Path, artifact_path: str | None = None) -> None:
    """Copy a folder's files into the active run's artifacts."""
    _mlflow().log_artifacts(str(folder), artifact_path=artifact_path)


def set_tags(tags: dict[str, Any]) -> None:
    """Tag the active run; values are logged as strings."""
    _mlflow().set_tags({k: str(v) for k, v in tags.items()})
