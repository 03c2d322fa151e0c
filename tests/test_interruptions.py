"""kill -9 in the middle of a stage, then rerun it: the same outputs as an uninterrupted run.

A reference project runs the stages up to `train_discriminator` once, uninterrupted (in one
process, `tests/stage_driver.py`). For `extract-clips`, `sample-fakes` and
`train-discriminator`, a second project gets the reference's inputs and runs the real
`mmdisco` command as a subprocess, which is SIGKILLed (twice, once for `sample-fakes`) at
points drawn from a seeded RNG (`MMDISCO_KILL_SEED`, default 0), then run once more to the
end. Kill points are events, not wall-clock delays, so a seed lands on the same point
whatever the machine's speed:

- from outside, `kill -9` once the k-th clip shard or the k-th training checkpoint is on
  disk, or once the video base starts sampling (its progress bar appears);
- from inside, `MMDISCO_TEST_KILL_AT=NAME:before|after[:K]` (`mmdisco.io`): the process
  SIGKILLs itself just before or just after the rename that commits its K-th write of NAME.

After every kill the output folder is absent or complete (identical to the reference): no
half-written file is ever taken as valid. The final run's outputs are byte-identical to the
reference (JSON: apart from timings and MLflow run ids), a killed training resumes from its
last checkpoint (`resumed_from`), and no temp folder is left beside an output.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mmdisco import io
from support.project import ROOT, set_params
from stage_driver import stage_commands
from support import pipeline
from support.pipeline import SMALL, normalise

SEED = int(os.environ.get("MMDISCO_KILL_SEED", "0"))
BIN = Path(sys.executable).parent
PARAMS = {**SMALL, "data.synth.num_files": 12, "data.clip.workers": 1,
          "data.clip.shard_size": 2,          # 24 clips in 12 shards: 12 kill points
          "discriminator.steps": 40, "discriminator.checkpoint_every": 5, "discriminator.eval_every": 20,
          "discriminator.log_every": 5}
UPSTREAM = ("acquire", "extract_clips", "encode", "train_base_audio", "train_base_video",
            "sample_fakes", "train_discriminator")
# JSON fields that measure time or name an MLflow run: they differ between any two runs
VOLATILE = {*pipeline.VOLATILE, "resumed_from", "stopped_at"}   # a resumed run says so
TMP = re.compile(r"\..+\.tmp")


def env(**extra: str) -> dict:
    e = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
         "OMP_NUM_THREADS": "1", "MMDISCO_THREADS": "1"}
    e.pop("MLFLOW_TRACKING_URI", None)
    e.update(extra)
    return e


def new_project(path: Path) -> Path:
    path.mkdir(parents=True)
    shutil.copy(ROOT / "dvc.yaml", path / "dvc.yaml")
    shutil.copy(ROOT / "params.yaml", path / "params.yaml")
    set_params(path / "params.yaml", PARAMS)
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    ref = new_project(tmp_path_factory.mktemp("kill") / "reference")
    subprocess.run([sys.executable, str(Path(__file__).with_name("stage_driver.py")), str(ref),
                    *UPSTREAM], env=env(), check=True, capture_output=True, timeout=600)
    return ref


def copy_inputs(ref: Path, dest: Path, rels: tuple[str, ...]) -> Path:
    new_project(dest)
    for rel in rels:
        shutil.copytree(ref / rel, dest / rel)
    return dest


def same_output(ref: Path, got: Path) -> list[str]:
    """Files of ``ref`` (a folder or a file) that ``got`` lacks or holds differently."""
    if ref.is_file():
        pairs = [(ref, got)]
    else:
        names = sorted({p.relative_to(ref) for p in ref.rglob("*") if p.is_file()}
                       | {p.relative_to(got) for p in got.rglob("*") if p.is_file()})
        pairs = [(ref / n, got / n) for n in names]
    bad = []
    for a, b in pairs:
        if not (a.is_file() and b.is_file()):
            bad.append(f"{b}: {'missing' if a.is_file() else 'extra'}")
        elif a.suffix == ".json":
            if normalise(json.loads(a.read_text()), VOLATILE) != normalise(json.loads(b.read_text()), VOLATILE):
                bad.append(f"{b}: JSON differs")
        elif a.read_bytes() != b.read_bytes():
            bad.append(f"{b}: bytes differ")
    return bad


def absent_or_complete(ref: Path, proj: Path, rel: str) -> bool:
    """The invariant after a kill: the output does not exist, or it is the complete output."""
    if not (proj / rel).exists():
        return False
    assert same_output(ref / rel, proj / rel) == [], f"half-written {rel} after a kill"
    return True


KILL_AT = ROOT / "tests" / "support" / "kill_at.py"   # SIGKILL at one write point


def start(proj: Path, stage: str, kill_at: str | None = None) -> tuple[subprocess.Popen, Path]:
    log = proj / f"{stage}.{time.monotonic_ns()}.log"
    cmd = [str(BIN / "mmdisco")] if kill_at is None else \
        [sys.executable, str(KILL_AT), kill_at, "-m", "mmdisco.cli"]
    with open(log, "w") as f:
        proc = subprocess.Popen([*cmd, *stage_commands(proj)[stage]], cwd=proj,
                                env=env(DVC_ROOT=str(proj), DVC_STAGE=stage),
                                stdout=f, stderr=subprocess.STDOUT)
    return proc, log


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc), e.g. the decoding workers of extract-clips."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        found.update(kids)
        todo += kids
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_killed(proc: subprocess.Popen, stage: str, log: Path, what: str, seen: set[int]) -> None:
    """The stage died of SIGKILL, and the processes it had started end soon after."""
    proc.wait(timeout=300)
    assert proc.returncode == -signal.SIGKILL, \
        f"{stage} ended ({proc.returncode}) before {what}:\n{log.read_text()[-3000:]}"
    deadline = time.monotonic() + 30
    while any(alive(p) for p in seen) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in seen if alive(p)], f"{stage}: workers outlived the killed process"


def kill_when(proj: Path, stage: str, event, timeout: float = 300) -> None:
    """Run ``stage`` and ``kill -9`` it as soon as ``event()`` holds (polled every 2 ms)."""
    proc, log = start(proj, stage)
    deadline, seen, polls = time.monotonic() + timeout, set(), 0
    try:
        while not event():
            if proc.poll() is not None:
                pytest.fail(f"{stage} ended ({proc.returncode}) before the kill point:\n"
                            f"{log.read_text()[-3000:]}")
            assert time.monotonic() < deadline, f"{stage}: kill point never reached"
            polls += 1
            if polls % 50 == 0:
                seen |= descendants(proc.pid)
            time.sleep(0.002)
        seen |= descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    wait_killed(proc, stage, log, "the kill", seen)


def kill_at(proj: Path, stage: str, spec: str) -> None:
    """Run ``stage`` until it SIGKILLs itself at write point ``spec`` (``support/kill_at.py``)."""
    proc, log = start(proj, stage, kill_at=spec)
    seen: set[int] = set()
    while proc.poll() is None:
        seen |= descendants(proc.pid)
        time.sleep(0.1)
    wait_killed(proc, stage, log, f"reaching {spec}", seen)


def finish(proj: Path, stage: str) -> str:
    proc, log = start(proj, stage)
    proc.wait(timeout=300)
    assert proc.returncode == 0, log.read_text()[-3000:]
    return log.read_text()


def store_ok(proj: Path) -> None:
    """SIGKILL during an MLflow write leaves at most a journal that SQLite rolls back."""
    with sqlite3.connect(proj / "mlflow.db") as con:
        assert con.execute("pragma integrity_check").fetchall() == [("ok",)]


def temp_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if TMP.fullmatch(p.name)) \
        if folder.is_dir() else []


# --------------------------------------------------------------------------- stages
@pytest.mark.slow
def test_extract_clips_killed_twice_then_rerun(reference, tmp_path):
    rng = random.Random(f"{SEED}:extract_clips")
    proj = copy_inputs(reference, tmp_path / "proj", ("data/raw",))
    data = proj / "data"

    # 1. kill -9 from outside once the k-th of the 12 shards is in the temp folder
    k = rng.randint(1, 11)

    def shards_written() -> bool:
        return any(len(list(t.glob("clips/shard_*.safetensors"))) >= k
                   for t in data.glob(".clips.*.tmp"))
    kill_when(proj, "extract_clips", shards_written)
    assert not (data / "clips").exists(), "a half-written clips folder was published"
    assert len(temp_leftovers(data)) == 1          # what SIGKILL left: never read as output

    # 2. kill at a write point of the commit sequence: the index, the folder, the metrics
    spec = rng.choice(["index.json:after", "clips:before", "clips:after", "extract.json:before"])
    kill_at(proj, "extract_clips", spec)
    published = absent_or_complete(reference, proj, "data/clips")
    assert published == (spec in ("clips:after", "extract.json:before")), spec
    assert len(temp_leftovers(data)) <= 1          # the first run's temp folder was removed

    # 3. the rerun finishes with the reference's clips, and nothing left beside them
    finish(proj, "extract_clips")
    assert same_output(reference / "data/clips", data / "clips") == []
    assert same_output(reference / "metrics/extract.json", proj / "metrics/extract.json") == []
    assert temp_leftovers(data) == [] and temp_leftovers(proj / "metrics") == []
    store_ok(proj)


@pytest.mark.slow
def test_sample_fakes_killed_then_rerun(reference, tmp_path):
    rng = random.Random(f"{SEED}:sample_fakes")
    proj = copy_inputs(reference, tmp_path / "proj",
                       ("models/base_audio", "models/base_video"))

    # one kill -9: from outside while the bases sample, or at one of the eight points of the
    # write sequence (each file before/after its rename, then the folder's)
    points = ["sampling"] + [f"{name}:{when}" for name in ("audio.safetensors",
                                                           "video.safetensors", "bank.json",
                                                           "fakes") for when in ("before", "after")]
    spec = rng.choice(points)
    if spec == "sampling":   # as soon as the video base starts sampling (audio bank done)
        def sampling() -> bool:
            logs = sorted(proj.glob("sample_fakes.*.log"))
            return bool(logs) and "fakes video" in logs[-1].read_text(errors="replace")
        kill_when(proj, "sample_fakes", sampling)
        absent_or_complete(reference, proj, "data/fakes")   # (absent, unless very fast)
    else:
        kill_at(proj, "sample_fakes", spec)
        assert absent_or_complete(reference, proj, "data/fakes") == (spec == "fakes:after")

    # the rerun writes the reference's bank
    finish(proj, "sample_fakes")
    assert same_output(reference / "data/fakes", proj / "data/fakes") == []
    assert temp_leftovers(proj / "data") == []
    store_ok(proj)


def checkpoint_step(proj: Path) -> int:
    """Step of the discriminator's checkpoint (0: none); it must be complete and loadable."""
    folder = proj / "checkpoints/discriminator"
    if not folder.exists():
        return 0
    meta = json.loads((folder / "meta.json").read_text())
    state = torch.load(folder / "state.pt", weights_only=True)
    assert state["step"] == meta["step"]
    return meta["step"]


@pytest.mark.slow
def test_train_discriminator_killed_twice_resumes(reference, tmp_path):
    rng = random.Random(f"{SEED}:train_discriminator")
    proj = copy_inputs(reference, tmp_path / "proj",
                       ("data/latents", "data/fakes", "models/base_audio", "models/base_video"))
    every, steps = PARAMS["discriminator.checkpoint_every"], PARAMS["discriminator.steps"]

    # 1. kill -9 from outside as soon as the checkpoint of step k is on disk
    k = every * rng.randint(1, steps // every - 2)
    meta = proj / "checkpoints/discriminator/meta.json"

    def checkpointed() -> bool:
        try:
            return json.loads(meta.read_text())["step"] >= k
        except (FileNotFoundError, ValueError):
            return False
    kill_when(proj, "train_discriminator", checkpointed)
    first = checkpoint_step(proj)
    assert k <= first < steps and not (proj / "models/discriminator").exists()

    # 2. the resumed run is killed while writing its j-th checkpoint, or the model (the
    #    name `discriminator` is shared: the last write of that name is models/discriminator)
    saves = (steps - first) // every
    j = rng.randint(1, saves + 1)
    when = rng.choice(["before", "after"])
    kill_at(proj, "train_discriminator", f"discriminator:{when}:{j}")
    second = checkpoint_step(proj)
    assert second == first + every * (min(j, saves) - (when == "before" and j <= saves))
    published = absent_or_complete(reference, proj, "models/discriminator")
    assert published == (j == saves + 1 and when == "after")

    # 3. the rerun resumes from the last checkpoint and ends with the reference's weights
    finish(proj, "train_discriminator")
    summary = json.loads((proj / "metrics/discriminator.json").read_text())
    assert summary["resumed_from"] == second > 0
    assert same_output(reference / "models/discriminator", proj / "models/discriminator") == []
    assert same_output(reference / "metrics/discriminator.json",
                       proj / "metrics/discriminator.json") == []
    # the curve of a resumed run holds the steps it ran itself: the reference's from there on
    ref_rows = (reference / "plots/discriminator.csv").read_text().splitlines()
    rows = (proj / "plots/discriminator.csv").read_text().splitlines()
    assert rows[1:] == [r for r in ref_rows[1:] if int(r.split(",")[0]) > second]
    assert rows[0] == (ref_rows[0] if rows[1:] else "step")
    assert not (proj / "checkpoints/discriminator").exists()
    assert temp_leftovers(proj / "checkpoints") == [] and temp_leftovers(proj / "models") == []
    store_ok(proj)


# --------------------------------------------------------------------------- mmdisco.io
def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_a_killed_writers_temp_folder_is_removed_by_the_next_write(tmp_path):
    stale = tmp_path / f".out.{dead_pid()}.abc_123.tmp"
    (stale / "out").mkdir(parents=True)
    (stale / "out" / "half.safetensors").write_bytes(b"\0" * 10)
    live = tmp_path / f".out.{os.getppid()}.xyz.tmp"      # a live process's: left alone
    live.mkdir()
    old = tmp_path / ".out.old"                             # the two-rename fallback's
    old.mkdir()
    other = tmp_path / f".other.{dead_pid()}.abc.tmp"      # another output's: not ours
    other.mkdir()
    io.write_text(tmp_path / "out", "done")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", live.name, other.name])


@pytest.mark.parametrize("exchange", [True, False])
def test_a_folder_is_replaced_whole(tmp_path, monkeypatch, exchange):
    if not exchange:   # where renameat2 is missing: two renames
        monkeypatch.setattr(io, "_renameat2", False)
    for text in ("one", "two"):
        with io.atomic_path(tmp_path / "d") as t:
            t.mkdir()
            (t / text).write_text(text)
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["two"]
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_remove_tree_is_all_or_nothing(tmp_path):
    (tmp_path / "ck" / "sub").mkdir(parents=True)
    (tmp_path / "ck" / "meta.json").write_text("{}")
    io.remove_tree(tmp_path / "ck")
    io.remove_tree(tmp_path / "ck")                         # absent: nothing to do
    assert list(tmp_path.iterdir()) == []


def test_the_kill_hook_stops_at_the_named_write(tmp_path):
    code = ("from mmdisco.io import write_text\n"
            "for i in range(3):\n    write_text('a.txt', str(i))\n")
    for spec, left in (("a.txt:before:2", "0"), ("a.txt:after:2", "1"), ("a.txt:after", "0")):
        proc = subprocess.run([sys.executable, str(KILL_AT), spec, "-c", code], cwd=tmp_path,
                              env=env())
        assert proc.returncode == -signal.SIGKILL, spec
        assert (tmp_path / "a.txt").read_text() == left, spec
    # what the kills left beside a.txt goes with the next write
    io.write_text(tmp_path / "a.txt", "x")
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
