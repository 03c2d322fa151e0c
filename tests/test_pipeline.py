"""The real pipeline, end to end: `dvc repro` in a throw-away copy of the project."""
from __future__ import annotations

import json
import re
import sqlite3

import pytest
import torch
from safetensors.torch import load_file

from mmdisco.config import SynthConfig
from mmdisco.data.synth import class_captions, class_pitches
from mmdisco.eval.tonality import media_pitch_fraction
from mmdisco.guidance.conditional import ConditionalDiscriminator
from mmdisco.guidance.store import load_guide
from support.project import run
from support.pipeline import SMALL, STAGES, fraction_of, ran

@pytest.mark.slow
def test_dvc_repro_runs_the_pipeline_and_is_cached(project):
    proj = project({**SMALL, "sample.media": 6})   # every sample as mp4: AV-Align checks below
    first = run(["dvc", "repro"], proj)
    assert ran(first.stdout) == set(STAGES), first.stdout

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

    # bases, fakes, discriminator
    for m in ("audio", "video"):
        assert (proj / f"models/base_{m}/base.json").is_file()
        assert "loss" in (proj / f"plots/base_{m}.csv").read_text().splitlines()[0]
    fakes = load_file(str(proj / "data/fakes/audio.safetensors"))["latents"]
    assert fakes.shape == (16, 1, 32, 32) and torch.isfinite(fakes).all()
    disc = json.loads((proj / "metrics/discriminator.json").read_text())
    assert disc["steps"] == 4 and disc["parameter_ratio"] < 0.1
    critic = json.loads((proj / "metrics/critic.json").read_text())
    assert critic["steps"] == 4 and critic["heldout"] == 8
    fraction_of(critic["top1_t500"], 8)             # a share of the 8 held-out pairs
    assert (proj / "models/critic/model.safetensors").is_file()

    # samples: latents, mp4 files with sound, contact sheets, per-pass cost
    for name in ("baseline", "guided"):
        assert load_file(str(proj / f"data/samples/{name}/video.safetensors"))["latents"].shape \
            == (6, 8, 3, 16, 16)
        assert len(list((proj / f"data/samples/{name}/media").glob("*.mp4"))) == 6
        assert (proj / f"data/samples/{name}/sheet.png").stat().st_size > 0
    guided = json.loads((proj / "metrics/sample.json").read_text())
    baseline = json.loads((proj / "metrics/sample_baseline.json").read_text())
    assert guided["guidance_pass_s"] > 0 and baseline["base_pass_s"] > 0
    assert guided["guided_step_cost_ratio"] > 1      # measured within the guided run alone
    # the default guides with the discriminator and the critic: two guidance passes per step
    assert guided["guidance_passes"] == 2 * 3 and baseline["guidance_passes"] == 0

    # evaluate: real pairs at the ceiling, shuffled far below, samples scored
    report = json.loads((proj / "metrics/eval.json").read_text())
    assert set(report) == {"real", "shuffled", "baseline", "guided"}
    assert report["real"]["semantic_agreement"] >= 0.99
    assert report["real"]["aligned_fraction"] >= 0.95
    assert report["shuffled"]["aligned_fraction"] < 0.5
    assert report["guided"]["validity_audio_n"] == 6
    for name, n in (("real", 48), ("shuffled", 48), ("baseline", 6), ("guided", 6)):
        assert report[name]["av_align_n"] == n
    for name in ("baseline", "guided"):   # what a user plays is what evaluate scored
        files = sorted(str(p) for p in (proj / f"data/samples/{name}/media").glob("*.mp4"))
        lines = run(["mmdisco", "av-align", *files, "--json"], proj).stdout.splitlines()
        scores = [json.loads(line)["score"] for line in lines]
        assert report[name]["av_align"] == pytest.approx(sum(scores) / 6, rel=1e-12, abs=1e-12)
    assert "prompt_agreement_audio" not in report["guided"]      # condition: none
    sweep = (proj / "plots/sweep.csv").read_text().splitlines()
    assert sweep[0].startswith("scale,") and "guided_temporal_f1" in sweep[0]
    assert float(sweep[1].split(",")[0]) == 8.0 and len(sweep) == 2
    table = run(["mmdisco", "report"], proj).stdout
    assert table.startswith("| set |") and "| guided |" in table and "| real |" in table
    for name in ("baseline", "guided"):   # Fréchet distances to real clips of the same count
        # bases trained for 6 steps sample far from the real clips: above the real floor
        assert report[name]["fd_audio"] > report["real"]["fd_audio"] > 0
        assert report[name]["fd_video"] > report["real"]["fd_video"] > 0
        assert report[name]["fd_pairs"] == 6
        assert report[name]["tonal_fraction_n"] == 6     # read off the six mp4s
        files = sorted((proj / f"data/samples/{name}/media").glob("*.mp4"))
        tonal = media_pitch_fraction(files, class_pitches(SynthConfig().num_classes))
        assert report[name]["tonal_fraction"] == round(float(tonal.mean()), 4)
    # the headline metrics dvc exp show lists: alignment beside balance, FD and tonality
    headline = json.loads((proj / "metrics/headline.json").read_text())
    assert set(headline) == {"baseline", "guided"}
    assert {"aligned_fraction", "class_balance_audio", "class_balance_video", "fd_audio",
            "fd_video", "tonal_fraction"} <= set(headline["guided"])
    assert headline["guided"]["fd_audio"] == report["guided"]["fd_audio"]

    # one MLflow run per executed stage, tagged, with params; evaluate links the training runs
    db = sqlite3.connect(proj / "mlflow.db")
    runs = dict(db.execute("select name, run_uuid from runs").fetchall())
    assert sorted(runs) == sorted(STAGES)
    tags = dict(db.execute("select key, value from tags where run_uuid = ?",
                           (runs["evaluate"],)).fetchall())
    assert tags["mmdisco.stage"] == "evaluate" and len(tags["mmdisco.git_commit"]) == 40
    assert tags["mmdisco.run.discriminator"] == runs["train_discriminator"]
    assert tags["mmdisco.run.critic"] == runs["train_critic"]
    params = dict(db.execute("select key, value from params where run_uuid = ?",
                             (runs["evaluate"],)).fetchall())
    assert params["guidance.scale"] == "8.0" and "base.video.steps" in params
    metric_keys = {k for (k,) in db.execute("select key from metrics where run_uuid = ?",
                                            (runs["evaluate"],))}
    assert {"guided.validity_audio", "baseline.aligned_fraction", "real.semantic_agreement",
            "real.temporal_f1"} <= metric_keys

    # a second repro changes nothing and logs nothing
    second = run(["dvc", "repro"], proj)
    assert ran(second.stdout) == set(), second.stdout
    assert db.execute("select count(*) from runs").fetchone()[0] == len(STAGES)

    # the user's habit: a new guidance scale reruns sampling and evaluation only
    third = run(["dvc", "exp", "run", "-S", "guidance.scale=2"], proj)
    assert ran(third.stdout) == {"sample", "evaluate"}, third.stdout
    shown = json.loads(run(["dvc", "exp", "show", "--json"], proj).stdout)
    exps = [e for row in shown for e in (row.get("experiments") or [])]
    scales = [r["data"]["params"]["params.yaml"]["data"]["guidance"]["scale"]
              for e in exps for r in e["revs"]]
    assert 2 in scales, shown
    columns = [r["data"]["metrics"]["metrics/headline.json"]["data"] for e in exps for r in e["revs"]]
    # (DVC leaves out null values: with 6 tiny samples no class may decode, so no balance)
    assert columns and all({"aligned_fraction", "fd_audio", "fd_video"} <= set(c.get("guided", {}))
                           for c in columns), columns
    # the sweep plot reads each experiment's plots/sweep.csv: one point per scale
    names = run(["dvc", "exp", "ls", "--name-only"], proj).stdout.split()
    assert names, "no experiment listed"
    vega = run(["dvc", "plots", "diff", *names, "--targets", "plots/sweep.csv", "--show-vega"],
               proj).stdout
    assert "guided_temporal_f1" in vega, vega[:2000]
    assert re.search(r'"scale":\s*"?2(\.0)?"?[,}\s]', vega), vega[:2000]


@pytest.mark.slow
def test_condition_caption_runs_the_embedded_world_from_prompts(project):
    proj = project({**SMALL, "condition": "caption"})
    first = run(["dvc", "repro"], proj)
    assert ran(first.stdout) == set(STAGES), first.stdout
    captions = class_captions(SynthConfig())
    truth = json.loads((proj / "data/raw/truth.json").read_text())
    assert all(r["caption"] == captions[r["class"]] for r in truth)
    text = json.loads((proj / "data/latents/text.json").read_text())
    assert set(text["prompts"]) <= set(captions) and len(text["clip_prompt"]) == 48
    assert json.loads((proj / "models/base_audio/base.json").read_text())["cond_dim"] == 64
    bank = json.loads((proj / "data/fakes/bank.json").read_text())
    assert len(bank["captions"]) == 16 and set(bank["captions"]) <= set(captions)
    assert type(load_guide(proj / "models/discriminator")) is ConditionalDiscriminator
    for name in ("baseline", "guided"):
        prompts = json.loads((proj / f"data/samples/{name}/prompts.json").read_text())
        assert len(prompts["prompt_of"]) == 6 and set(prompts["prompts"]) <= set(captions)
        assert sorted(p.name for p in (proj / f"data/samples/{name}/media").glob("*.mp4")) == \
            [f"{name}_p{j:03d}_{i:03d}.mp4" for i, j in enumerate(prompts["prompt_of"][:2])]
    report = json.loads((proj / "metrics/eval.json").read_text())
    for name in ("baseline", "guided"):
        for m in ("audio", "video"):
            assert report[name][f"prompt_agreement_{m}_n"] == 6
            fraction_of(report[name][f"prompt_agreement_{m}"], 6)
    assert run(["dvc", "repro"], proj).stdout.count("Running stage") == 0
