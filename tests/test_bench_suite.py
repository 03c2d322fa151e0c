"""bench/suite.py on a tiny project built from scratch: report keys and positive numbers only."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mmdisco.bases import TinyBase, TinyBaseConfig
from mmdisco.data.media import write_av
from mmdisco.guidance.critic import Critic
from mmdisco.guidance.discriminator import Discriminator
from mmdisco.guidance.store import save_guide
from support.project import ROOT

AUDIO, VIDEO = (1, 8, 8), (2, 3, 8, 8)
BASE_CFG = TinyBaseConfig(channels=(8, 16), patch=2, norm_groups=4, attn_head_dim=8,
                          mid_attention=False)


def _load_suite():
    spec = importlib.util.spec_from_file_location("bench_suite", ROOT / "bench/suite.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


suite = _load_suite()


def _media(path: Path, seconds: float = 1.5, fps: int = 8, sr: int = 16000, hz: float = 440.0) -> None:
    n = round(seconds * fps)
    video = np.zeros((n, 32, 32, 3), np.uint8)
    video[:, 8:24, 8:24] = (np.arange(n)[:, None, None, None] * 20) % 255
    t = np.arange(round(seconds * sr)) / sr
    write_av(path, video, fps, (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32), sr)


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory) -> Path:
    """params.yaml, tiny untrained bases, discriminator, critic and two media files."""
    proj = tmp_path_factory.mktemp("suite") / "proj"
    proj.mkdir()
    shutil.copy(ROOT / "params.yaml", proj / "params.yaml")
    torch.manual_seed(0)
    TinyBase(BASE_CFG, AUDIO).save(proj / "models/base_audio")
    TinyBase(BASE_CFG, VIDEO).save(proj / "models/base_video")
    for name, module in (("discriminator", Discriminator(audio_shape=AUDIO, video_shape=VIDEO, width=8,
                                                         time_dim=16, head_hidden=16)),
                         ("critic", Critic(audio_shape=AUDIO, video_shape=VIDEO, width=8,
                                           time_dim=16, dim=8))):
        (proj / "models" / name).mkdir(parents=True)
        save_guide(module, proj / "models" / name)
    for i, hz in enumerate((440.0, 880.0)):
        _media(proj / "data/raw" / f"clip_{i:05d}.mp4", hz=hz)
    return proj


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0


def test_suite_cheap_sections_report(tiny_project, tmp_path):
    out = tmp_path / "report.json"
    returned = suite.main(["--project", str(tiny_project), "--out", str(out), "--batch", "4",
                           "--steps", "2", "--warmup-steps", "1", "--repeats", "1", "--files", "2",
                           "--rss-interval", "0.005"])
    report = json.loads(out.read_text())
    assert report == json.loads(json.dumps(returned))
    assert set(report) == {"meta", "sampling", "parameters", "clips", "memory"}
    assert report["meta"]["sections"] == ["sampling", "parameters", "clips"]

    sampling = report["sampling"]
    assert sampling["batch"] == 4 and sampling["steps"] == 2
    configs = sampling["configs"]
    assert list(configs) == ["unguided", "discriminator", "critic", "discriminator+critic"]
    for name, row in configs.items():
        assert _positive(row["step_s"]) and _positive(row["base_pass_s"])
        assert _positive(row["step_ratio_vs_unguided"])
        assert row["base_passes_per_step"] == 2
        assert _positive(row["memory"]["peak_rss_mib"])
        if name != "unguided":
            assert _positive(row["guidance_pass_s"])
            assert _positive(row["guidance_pass_over_base_pass"])
            assert _positive(row["guidance_pass_over_step_base"])
    assert configs["unguided"]["guidance_passes_per_step"] == 0
    assert "guidance_pass_s" not in configs["unguided"]
    assert configs["discriminator"]["guidance_passes_per_step"] == 1
    assert configs["discriminator+critic"]["guidance_passes_per_step"] == 2

    params = report["parameters"]
    assert set(params["counts"]) == {"base_audio", "base_video", "discriminator", "critic"}
    assert all(_positive(v) for v in params["counts"].values())
    assert all(_positive(v) for v in params["ratios"].values())
    assert params["bases_total"] == params["counts"]["base_audio"] + params["counts"]["base_video"]

    clips = report["clips"]
    assert clips["files"] == 2 and clips["clips"] == 2  # 1.5 s files, 1 s windows, 1 s hop
    assert set(clips["methods"]) == {"extract_clips[2 workers]", "extract_clips[1 worker]",
                                     "pyav_decode", "decord_video"}
    for row in clips["methods"].values():
        assert _positive(row["seconds"]) and _positive(row["files_per_s"]) and _positive(row["clips_per_s"])
        assert _positive(row["memory"]["peak_tree_rss_mib"])
    assert clips["methods"]["pyav_decode"]["frames"] == 24
    assert clips["methods"]["pyav_decode"]["audio_samples"] > 0
    assert clips["methods"]["decord_video"]["frames"] == 24
    assert all(_positive(v) for v in clips["time_ratios"].values())
    assert _positive(clips["first_call_s"])

    assert _positive(report["memory"]["self_maxrss_mib"])


def test_peak_rss_sees_this_process_and_its_children():
    with suite.PeakRSS(0.005, tree=True) as mem:
        block = np.ones(64 * 2 ** 20 // 8)  # 64 MiB, every page written
        code = "import time; x = bytes(range(256)) * (96 * 2 ** 12); time.sleep(0.5)"  # 96 MiB
        subprocess.run([sys.executable, "-c", code], check=True)
        del block
    r = mem.result
    assert r["peak_rss_mib"] >= r["rss_start_mib"] + 50
    assert r["peak_tree_rss_mib"] >= r["peak_rss_mib"] + 60
    assert r["samples"] > 0


def test_suite_needs_a_project_without_the_pipeline(capsys):
    with pytest.raises(SystemExit):
        suite.parse_args(["--no-pipeline"])
    with pytest.raises(SystemExit):
        suite.parse_args(["--project", "x", "--sections", "sampling,bogus"])
    args = suite.parse_args(["--project", "x"])
    assert args.pipeline is False and args.sections == list(suite.SECTIONS)
    assert suite.parse_args([]).pipeline is True


def test_pipeline_stage_lines_are_recognised():
    assert suite._STAGE_LINE.match("train_base_audio          41.78 s").group(1) == "train_base_audio"
    assert suite._STAGE_LINE.match("    acquire: 1000 files from synth in 9.975 s -> data/raw") is None
