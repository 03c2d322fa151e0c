"""The real pipeline, end to end: `dvc repro` in a throw-away copy of the project."""
from __future__ import annotations

import json
import sqlite3

import pytest
import torch
from safetensors.torch import load_file

from mmdisco.testing import run

SMALL = {
    "data.synth.num_files": 24,
    "data.synth.seconds": 2.0,
    "data.clip.workers": 2,
    "eval.bootstrap": 50,
}


@pytest.mark.slow
def test_dvc_repro_runs_the_pipeline_and_is_cached(project):
    proj = project(SMALL)
    first = run(["dvc", "repro"], proj)
    for stage in ("acquire", "extract_clips", "encode", "evaluate"):
        assert f"Running stage '{stage}'" in first.stdout, first.stdout

    # acquire: 24 real mp4 files with ground truth and a checksummed manifest
    manifest = json.loads((proj / "data/raw/manifest.json").read_text())
    assert len(manifest["files"]) == 24
    assert all(len(f["sha256"]) == 64 for f in manifest["files"])
    assert len(json.loads((proj / "data/raw/truth.json").read_text())) == 24

    # extract_clips: two 1-s windows per 2-s file, all files used
    index = json.loads((proj / "data/clips/index.json").read_text())
    assert index["num_clips"] == 48
    assert json.loads((proj / "data/clips/rejects.json").read_text()) == []

    # encode: latents in the fixed layouts
    audio = load_file(str(proj / "data/latents/audio.safetensors"))["latents"]
    video = load_file(str(proj / "data/latents/video.safetensors"))["latents"]
    assert audio.shape == (48, 1, 32, 32) and video.shape == (48, 8, 3, 16, 16)
    assert audio.min() >= -1 and audio.max() <= 1 and torch.isfinite(video).all()

    # evaluate: real pairs at the ceiling, shuffled far below
    report = json.loads((proj / "metrics/eval.json").read_text())
    assert report["real"]["semantic_agreement"] >= 0.99
    assert report["real"]["aligned_fraction"] >= 0.95
    assert report["shuffled"]["aligned_fraction"] < 0.5

    # one MLflow run per executed stage, tagged and with params
    db = sqlite3.connect(proj / "mlflow.db")
    runs = db.execute("select run_uuid, name from runs").fetchall()
    assert sorted(name for _, name in runs) == ["acquire", "encode", "evaluate", "extract_clips"]
    tags = dict(db.execute("select key, value from tags where key like 'mmdisco.%' "
                           "and run_uuid = ?", (runs[0][0],)).fetchall())
    assert tags["mmdisco.stage"] in {"acquire", "encode", "evaluate", "extract_clips"}
    assert len(tags["mmdisco.git_commit"]) == 40
    n_params = db.execute("select count(*) from params").fetchone()[0]
    assert n_params > 20

    # a second repro changes nothing and logs nothing
    second = run(["dvc", "repro"], proj)
    assert "Running stage" not in second.stdout, second.stdout
    assert db.execute("select count(*) from runs").fetchone()[0] == 4

    # a param of one stage reruns that stage and what follows, nothing before
    third = run(["dvc", "exp", "run", "-S", "eval.bootstrap=60"], proj)
    assert "Running stage 'evaluate'" in third.stdout
    assert "Running stage 'encode'" not in third.stdout
