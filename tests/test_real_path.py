"""The paper's real setting end to end, offline: `dvc repro` with ``condition: caption`` on a
folder of captioned media files, AudioLDM- and AnimateDiff-layout bases and encoders.

The pretrained components are tiny random models built from configs and saved locally in the
hub's folder layout (``tests/support/tiny_pretrained.py`` builds them); every stage loads them through
the same from-path code that loads the real weights. Nothing is downloaded
(``HF_HUB_OFFLINE=1``)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from mmdisco.guidance.conditional import ConditionalDiscriminator
from mmdisco.guidance.store import load_guide
from support.captioned_media import COLOURS, FPS, RATE, SIZE, media_folder
from support.pipeline import STAGES, fraction_of, ran
from support.project import make_project, run
from support.tiny_pretrained import animatediff_components, audioldm_components, save_components

@pytest.mark.slow
def test_dvc_repro_runs_the_text_conditional_real_path(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    weights = tmp_path / "weights"
    save_components(audioldm_components(), weights / "audioldm")
    video = animatediff_components()
    save_components(video, weights / "sd15")
    video["motion_adapter"].save_pretrained(weights / "motion_adapter")
    folder, captions = media_folder(tmp_path / "media")
    overrides = {
        "condition": "caption", "device": "cpu",
        "data.source": "folder", "data.folder": str(folder), "data.captions": str(captions),
        "data.clip.seconds": 0.64, "data.clip.hop_seconds": 0.64, "data.clip.fps": FPS,
        "data.clip.size": SIZE, "data.clip.sample_rate": RATE, "data.clip.workers": 1,
        "encoders.audio.kind": "audioldm", "encoders.audio.model": str(weights / "audioldm"),
        "encoders.audio.device": "cpu",
        "encoders.video.kind": "sd_vae", "encoders.video.model": str(weights / "sd15"),
        "encoders.video.device": "cpu", "encoders.batch_size": 8,
        "base.audio.kind": "audioldm", "base.audio.pretrained.model": str(weights / "audioldm"),
        "base.audio.pretrained.device": "cpu",
        "base.video.kind": "animatediff", "base.video.pretrained.model": str(weights / "sd15"),
        "base.video.pretrained.motion_adapter": str(weights / "motion_adapter"),
        "base.video.pretrained.device": "cpu", "base.video.pretrained.beta_schedule": "linear",
        "cfg.audio": 2.5, "cfg.video": 7.5,
        "fakes.num_pairs": 8, "fakes.steps": 2, "fakes.batch_size": 4,
        "discriminator.width": 8, "discriminator.time_dim": 16, "discriminator.head_hidden": 16,
        "discriminator.steps": 3, "discriminator.batch_size": 4, "discriminator.heldout": 8, "discriminator.eval_every": 3,
        "discriminator.log_every": 1, "discriminator.checkpoint_every": 3,
        "critic.width": 8, "critic.time_dim": 16, "critic.dim": 8, "critic.steps": 2,
        "critic.batch_size": 4, "critic.heldout": 8, "critic.eval_every": 2,
        "critic.log_every": 1, "critic.checkpoint_every": 2,
        "guidance.scale": 1.0, "guidance.audio_weight": 1.0, "guidance.video_weight": 8.0,
        "sample.num_samples": 4, "sample.steps": 2, "sample.batch_size": 2, "sample.media": 4,
        "sample.prompts": ["a red square with a tone", "a blue square with a tone"],
        "eval.bootstrap": 20, "eval.av_align_pairs": 4,
    }
    proj = make_project(tmp_path / "proj", overrides)
    first = run(["dvc", "repro"], proj)
    assert ran(first.stdout) == set(STAGES), first.stdout

    # captions: the CSV's for 7 files, the empty caption for the last; 2 clips per file
    index = json.loads((proj / "data/clips/index.json").read_text())
    assert index["num_clips"] == 16
    assert sum(c["caption"] == "" for c in index["clips"]) == 2
    text = json.loads((proj / "data/latents/text.json").read_text())
    assert set(text["prompts"]) == {"", *(f"a {c} square with a tone" for c in COLOURS)}
    assert text["encoders"]["audio"]["kind"] == "audioldm"
    emb_a = load_file(str(proj / "data/latents/text_audio.safetensors"))
    emb_v = load_file(str(proj / "data/latents/text_video.safetensors"))
    assert emb_a["prompts"].shape == (5, 32)            # CLAP's projection
    assert emb_v["prompts"].shape == (5, 16, 32)        # CLIP's hidden states
    assert emb_v["null"].shape == (1, 16, 32)

    # the fake bank holds a real caption for every pair; the discriminator is conditional
    bank = json.loads((proj / "data/fakes/bank.json").read_text())
    assert len(bank["captions"]) == 8 and set(bank["captions"]) <= set(text["prompts"])
    assert (bank["cfg_audio"], bank["cfg_video"]) == (2.5, 7.5)
    D = load_guide(proj / "models/discriminator")
    assert type(D) is ConditionalDiscriminator and D.cond_dim == 32 + 32
    disc = json.loads((proj / "metrics/discriminator.json").read_text())
    fraction_of(disc["acc_real_t500"], 8)           # a share of the 8 held-out real pairs

    # samples from the prompts, named by prompt index, prompts recorded; every set has AV-Align
    for name in ("baseline", "guided"):
        prompts = json.loads((proj / f"data/samples/{name}/prompts.json").read_text())
        assert prompts["prompts"] == overrides["sample.prompts"]
        assert prompts["prompt_of"] == [0, 1, 0, 1]
        media = sorted(p.name for p in (proj / f"data/samples/{name}/media").glob("*.mp4"))
        assert media == sorted(f"{name}_p{j:03d}_{i:03d}.mp4" for i, j in enumerate([0, 1, 0, 1]))
    guided = load_file(str(proj / "data/samples/guided/video.safetensors"))["latents"]
    baseline = load_file(str(proj / "data/samples/baseline/video.safetensors"))["latents"]
    assert guided.shape == baseline.shape == (4, 16, 4, 8, 8) and torch.isfinite(guided).all()
    assert not torch.equal(guided, baseline)            # the guide acts
    report = json.loads((proj / "metrics/eval.json").read_text())
    for name in ("real", "shuffled", "baseline", "guided"):
        assert report[name]["av_align_n"] == 4
    for name in ("baseline", "guided"):   # what a user plays is what evaluate scored
        files = sorted(str(p) for p in (proj / f"data/samples/{name}/media").glob("*.mp4"))
        lines = run(["mmdisco", "av-align", *files, "--json"], proj).stdout.splitlines()
        scores = [json.loads(line)["score"] for line in lines]
        assert report[name]["av_align"] == pytest.approx(sum(scores) / 4, rel=1e-12, abs=1e-12)

    # nothing is stale: a second repro runs nothing
    second = run(["dvc", "repro"], proj)
    assert ran(second.stdout) == set(), second.stdout
