"""Same params, same seed, same machine: byte-identical outputs, stage by stage.

The whole pipeline runs at small size (test_pipeline's SMALL) in two project copies, with
`MMDISCO_THREADS=1`:

- copy A runs every stage in ONE process (`tests/stage_driver.py`), so a stage that leaned on
  global state left by an earlier one (torch's global RNG, a cache) would show;
- copy B runs each `dvc.yaml` command as its own `mmdisco` process, as `dvc repro` does; every
  process has its own string-hash seed, so anything written in set or hash order shows.

Every file under data/, models/, metrics/ and plots/ must then be identical: latents, clip
shards, fake banks, base / discriminator / critic weights, sampled latents, mp4 media (H.264 +
AAC), PNG sheets, CSV curves; JSON files after dropping the fields that hold timings and MLflow
run ids.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.project import make_project, run
from stage_driver import stage_commands
from support.pipeline import SMALL, normalise

BIN = Path(sys.executable).parent
FOLDERS = ("data", "models", "metrics", "plots")


def thread_env() -> dict:
    return {"OMP_NUM_THREADS": "1", "MMDISCO_THREADS": "1"}


def files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for f in FOLDERS for p in (root / f).rglob("*")
            if p.is_file()}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("determinism")
    a, b = make_project(base / "a", SMALL), make_project(base / "b", SMALL)
    env = {**os.environ, **thread_env()}
    env.pop("MLFLOW_TRACKING_URI", None)
    subprocess.run([sys.executable, str(Path(__file__).with_name("stage_driver.py")), str(a)],
                   env=env, check=True, capture_output=True, timeout=900)
    for stage, argv in stage_commands(b).items():
        run(["mmdisco", *argv], b, env={**thread_env(), "DVC_ROOT": str(b), "DVC_STAGE": stage})
    return a, b


@pytest.mark.slow
def test_same_seed_same_bytes(two_runs):
    a, b = two_runs
    assert files(a) == files(b)
    names = sorted(files(a))
    kinds = {Path(n).suffix for n in names}
    assert {".safetensors", ".mp4", ".png", ".csv", ".json"} <= kinds, kinds
    for must in ("data/latents/audio.safetensors", "data/latents/video.safetensors",
                 "data/fakes/audio.safetensors", "models/discriminator/model.safetensors",
                 "models/critic/model.safetensors", "data/samples/guided/video.safetensors",
                 "data/samples/guided/sheet.png", "metrics/eval.json"):
        assert must in names, must
    assert any(n.startswith("models/base_audio/") and n.endswith(".safetensors") for n in names)
    assert any(n.startswith("data/samples/guided/media/") and n.endswith(".mp4") for n in names)

    differ = []
    for n in names:
        x, y = a / n, b / n
        if x.suffix == ".json":
            if normalise(json.loads(x.read_text())) != normalise(json.loads(y.read_text())):
                differ.append(n)
        elif x.read_bytes() != y.read_bytes():
            differ.append(n)
    assert differ == [], f"outputs differ between two runs with the same seed: {differ}"
