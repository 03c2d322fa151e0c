"""Several processes logging into one MLflow SQLite store at once (`dvc queue start -j 2`):
they all succeed, or one fails with a message naming the way out (a tracking server); the
store is never corrupted."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmdisco import tracking
from support.project import make_project, run
from support.pipeline import SMALL

# one stage's worth of tracking, like a real stage: params, metrics over steps, summary
WORKER = """
import os, sys, time
from mmdisco import tracking
start = float(sys.argv[2])
while time.time() < start:
    time.sleep(0.001)
for r in range(3):
    with tracking.stage_run(f"writer{sys.argv[1]}",
                            {"section": {f"k{i}": i for i in range(120)}}):
        for step in range(10):
            tracking.log_metrics({f"m{j}": j * step for j in range(20)}, step=step)
        tracking.log_metrics({"done": 1.0})
"""


def check_store(db: Path) -> list:
    """integrity_check passes and every run reads back through MLflow's client."""
    import mlflow

    with sqlite3.connect(db) as con:
        assert con.execute("pragma integrity_check").fetchall() == [("ok",)]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name(tracking.EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    for r in runs:
        assert r.info.status == "FINISHED", r.info
    return runs


def test_two_writers_on_a_fresh_sqlite_store(tmp_path):
    """Both start on a store that does not exist yet: the schema is created once (the file lock
    in tracking.stage_run), then MLflow's busy timeout lets the writers take turns."""
    env = {**os.environ, "DVC_ROOT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    start = str(time.time() + 8)       # both import mlflow first, then start together
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(i), start], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in (1, 2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    ok = [rc == 0 for rc, _ in results]
    for rc, err in results:
        assert rc == 0 or ("MLFLOW_TRACKING_URI" in err and "dvc queue start -j 1" in err), err
    assert any(ok)
    runs = check_store(tmp_path / "mlflow.db")
    assert len(runs) == 3 * sum(ok)
    for r in runs:
        assert len(r.data.params) == 120 and r.data.metrics["done"] == 1.0


def test_a_store_that_stays_locked_fails_with_the_fix(tmp_path, monkeypatch):
    """When MLflow gives up waiting for the lock, the stage says what to do."""
    import mlflow
    from mlflow.exceptions import MlflowException

    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def locked(*a, **k):
        raise MlflowException("(sqlite3.OperationalError) database is locked")
    monkeypatch.setattr(mlflow, "start_run", locked)
    with pytest.raises(tracking.TrackingStoreBusy) as e:
        with tracking.stage_run("sample"):
            pass
    msg = str(e.value)
    assert "MLFLOW_TRACKING_URI" in msg and "dvc queue start -j 1" in msg and "README" in msg
    # any other failure passes through unchanged
    monkeypatch.setattr(mlflow, "start_run", lambda *a, **k: (_ for _ in ()).throw(KeyError("x")))
    with pytest.raises(KeyError):
        with tracking.stage_run("sample"):
            pass


def test_the_store_init_lock_leaves_no_file(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert tracking.sqlite_path(uri) == tmp_path / "mlflow.db"
    assert tracking.sqlite_path(uri + "?timeout=30") == tmp_path / "mlflow.db"
    assert tracking.sqlite_path("http://mlflow:5000") is None
    with tracking._store_init_lock(uri):
        pass
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_dvc_queue_runs_two_experiments_at_once(tmp_path):
    """`dvc exp run --queue` twice, `dvc queue start -j 2`: both experiments succeed (only
    `sample` and `evaluate` rerun), and every stage's run is in the one store."""
    proj = make_project(tmp_path / "proj", SMALL)
    threads = {"OMP_NUM_THREADS": "1", "MMDISCO_THREADS": "1"}
    env = {**os.environ, **threads}
    env.pop("MLFLOW_TRACKING_URI", None)
    # the upstream stages in one process (fast), then recorded as DVC's own results
    subprocess.run([sys.executable, str(Path(__file__).with_name("stage_driver.py")), str(proj)],
                   env=env, check=True, capture_output=True, timeout=900)
    run(["dvc", "commit", "-f", "-q"], proj, env=threads)
    git = ["git", "-c", "user.email=test@mmdisco.invalid", "-c", "user.name=test"]
    run(git + ["add", "dvc.lock"], proj)
    run(git + ["commit", "-qm", "repro"], proj)
    assert "up to date" in run(["dvc", "status"], proj).stdout
    n_before = len(check_store(proj / "mlflow.db"))

    for scale in (2, 3):
        run(["dvc", "exp", "run", "--queue", "-S", f"guidance.scale={scale}"], proj, env=threads)
    run(["dvc", "queue", "start", "-j", "2"], proj, env=threads)
    deadline = time.monotonic() + 900
    while True:
        status = run(["dvc", "queue", "status"], proj).stdout
        if "Running" not in status and "Queued" not in status:
            break
        assert time.monotonic() < deadline, status
        time.sleep(3)
    assert status.count("Success") == 2, (status, run(["dvc", "queue", "logs", "-h"], proj,
                                                      check=False).stdout)

    shown = json.loads(run(["dvc", "exp", "show", "--json"], proj).stdout)
    exps = [r for row in shown for e in (row.get("experiments") or []) for r in e["revs"]]
    scales = sorted(r["data"]["params"]["params.yaml"]["data"]["guidance"]["scale"]
                    for r in exps)
    assert scales == [2, 3], shown
    runs = check_store(proj / "mlflow.db")
    new = runs[: len(runs) - n_before]            # newest first
    assert sorted(r.data.tags["mmdisco.stage"] for r in new) == \
        ["evaluate", "evaluate", "sample", "sample"]
    assert len({r.data.tags.get("dvc.exp_name") for r in new}) == 2
