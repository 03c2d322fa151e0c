"""Robustness of media input: every file of a corpus of broken and unusual media
(``tests/media_corpus.py``) is either used correctly (clip count, source rates, frames, sync)
or rejected with its named reason; the stage never crashes or hangs; memory stays bounded.

The corpus goes through the real stage commands (`acquire` on a ``data.source: folder``, then
`extract-clips`, via click's CliRunner); the entries `acquire` does not list (a named pipe,
which it skips unopened, and a folder, which it searches) go through ``extract_clips``
directly.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from media_corpus import CFG, ENTRIES, LONG_NAME, build_corpus  # noqa: E402

from mmdisco.data.checks import REJECT_REASONS  # noqa: E402
from mmdisco.data.clips import extract_clips  # noqa: E402
from mmdisco.data.shards import load_clips  # noqa: E402
from support.project import ROOT, set_params  # noqa: E402

FRAME_S = 1 / CFG.fps
CLICK_TOL_S = 0.002   # the click's onset, against when the file says it plays


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("corpus")
    return folder, build_corpus(folder)


@pytest.fixture(scope="module")
def stage(corpus, tmp_path_factory) -> dict:
    """`acquire` + `extract-clips` on the corpus folder, run in-process like `dvc repro`."""
    from stages.acquire import main as acquire
    from stages.extract_clips import main as extract

    folder, _ = corpus
    work = tmp_path_factory.mktemp("stage")
    params = work / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    set_params(params, {"data.source": "folder", "data.folder": str(folder),
                        **{f"data.clip.{k}": v for k, v in asdict(CFG).items()}})
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    runner = CliRunner()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        for k, v in env.items():
            mp.setenv(k, v)
        acq = runner.invoke(acquire, ["--params", str(params), "--out", str(work / "raw")])
        assert acq.exit_code == 0, acq.output + repr(acq.exception)
        t0 = time.monotonic()
        ext = runner.invoke(extract, ["--params", str(params), "--raw", str(work / "raw"),
                                      "--out", str(work / "clips"),
                                      "--metrics", str(work / "extract.json")])
        seconds = time.monotonic() - t0
    assert ext.exit_code == 0, ext.output + repr(ext.exception)
    video, audio, index = load_clips(work / "clips")
    return {"video": video.numpy(), "audio": audio.numpy(), "index": index, "seconds": seconds,
            "rejects": json.loads((work / "clips" / "rejects.json").read_text()),
            "manifest": json.loads((work / "raw" / "manifest.json").read_text()),
            "metrics": json.loads((work / "extract.json").read_text()), "output": ext.output}


@pytest.fixture(scope="module")
def library(corpus, tmp_path_factory) -> dict:
    """``extract_clips`` on the files `acquire` does not list, plus one good file."""
    folder, entries = corpus
    names = [n for n, e in entries.items() if not e.in_stage]
    names.append("u01_h264_aac_24fps_44k_stereo.mp4")
    cfg = replace(CFG, file_timeout_s=2.0)  # the named pipe hangs until killed
    out = tmp_path_factory.mktemp("lib") / "clips"
    t0 = time.monotonic()
    summary = extract_clips([folder / n for n in names], out, cfg)
    return {"names": names, "summary": summary, "seconds": time.monotonic() - t0,
            "rejects": json.loads((out / "rejects.json").read_text()),
            "index": load_clips(out)[2]}


def outcome(name: str, stage: dict, library: dict) -> dict:
    """{"used": clip rows + source info} or {"rejected": reason, detail} for one file."""
    for run in (stage, library):
        if name in run["index"]["sources"]:
            rows = [j for j, c in enumerate(run["index"]["clips"]) if c["source"] == name]
            return {"used": True, "rows": rows, "info": run["index"]["sources"][name],
                    "starts": [run["index"]["clips"][j]["start_s"] for j in rows]}
        hit = [r for r in run["rejects"] if r["source"] == name]
        if hit:
            return {"used": False, **hit[0]}
    raise AssertionError(f"{name} is neither in index.json nor in rejects.json")


# --------------------------------------------------------------------------- measurements
def flash_frame(frames: np.ndarray) -> int | None:
    """First frame whose green channel is bright (the red rotation marker has none)."""
    bright = frames[..., 1].reshape(len(frames), -1).mean(axis=1) > (20 + 235) / 2
    return int(np.argmax(bright)) if bright.any() else None


def onset_s(audio: np.ndarray) -> float:
    """First sample above half the peak, in seconds."""
    mag = np.abs(audio)
    return int(np.argmax(mag > 0.5 * mag.max())) / CFG.sample_rate


def marker_side(frame: np.ndarray) -> str:
    """Where the red marker strip lies in a frame: top, bottom, left, right or none."""
    red = (frame[..., 0] > 150) & (frame[..., 1] < 90)
    sides = {"top": red[:3].mean(), "bottom": red[-3:].mean(), "left": red[:, :3].mean(),
             "right": red[:, -3:].mean()}
    best = max(sides, key=sides.get)
    return best if sides[best] > 0.8 else "none"


def sync_of(video: np.ndarray, audio: np.ndarray) -> tuple[int | None, float]:
    """Flash frame and click onset of a timeline (frames [F, ...], audio [L])."""
    return flash_frame(video), onset_s(audio)


# --------------------------------------------------------------------------- the corpus
def test_corpus_is_complete(corpus):
    """At least 15 broken or unusual files; the ffmpeg-made ones only when ffmpeg exists."""
    import shutil

    _, entries = corpus
    pyav = [n for n, e in ENTRIES.items() if e.made_by == "pyav"]
    assert set(pyav) <= set(entries) and len(pyav) >= 15
    assert sum(not e.used for e in entries.values()) >= 15
    made_by_ffmpeg = [n for n, e in entries.items() if e.made_by == "ffmpeg"]
    if shutil.which("ffmpeg") is None:
        assert made_by_ffmpeg == []
    assert all(e.reason in REJECT_REASONS for e in ENTRIES.values() if not e.used)


def test_stage_runs_and_accounts_for_every_listed_file(corpus, stage):
    _, entries = corpus
    listed = sorted(f["name"] for f in stage["manifest"]["files"])
    assert listed == sorted(n for n, e in entries.items() if e.in_stage)
    # the rest of the folder is accounted for: the named pipe skipped with its reason, the
    # (empty) folder searched
    skipped = {r["name"]: r["reason"] for r in stage["manifest"]["skipped"]}
    assert skipped == {"r14_hang_fifo.mp4": "not_regular"}
    used = set(stage["index"]["sources"])
    rejected = [r["source"] for r in stage["rejects"]]
    assert len(rejected) == len(set(rejected)) and not used & set(rejected)
    assert used | set(rejected) == set(listed)
    m = stage["metrics"]
    assert (m["files"], m["used_files"], m["rejected_files"]) == (len(listed), len(used),
                                                                  len(rejected))
    assert m["clips"] == stage["index"]["num_clips"] == len(stage["video"])
    assert f"{m['clips']} clips from {len(used)} files" in stage["output"]
    # nothing hung: no file reached the per-file timeout, and the whole run stayed well below it
    assert "timeout" not in m["reject_reasons"]
    assert stage["seconds"] < CFG.file_timeout_s


def test_library_run_accounts_for_the_rest(library):
    names = library["names"]
    got = set(library["index"]["sources"]) | {r["source"] for r in library["rejects"]}
    assert got == set(names)
    # the named pipe blocks its worker; the pool kills it after 2 s and carries on
    assert library["summary"]["reject_reasons"].get("timeout") == 1
    assert library["seconds"] < 30


@pytest.mark.parametrize("name", list(ENTRIES))
def test_each_file(corpus, stage, library, name):
    folder, entries = corpus
    if name not in entries:
        pytest.skip("made by the ffmpeg command line, which is not installed")
    e = entries[name]
    got = outcome(name, stage, library)
    if not e.used:
        assert not got["used"], f"{name} should be rejected ({e.reason}), but was used"
        assert got["reason"] == e.reason, got
        assert e.detail is None or e.detail in got["detail"], got
        assert str(folder) not in got["detail"]  # names the file, not where it lies
        return
    assert got["used"], f"{name} should be used, but was rejected: {got}"
    info = got["info"]
    assert len(got["rows"]) == e.windows
    assert got["starts"] == [float(k) for k in range(e.windows)]  # hop = seconds = 1
    assert info["source_sample_rate"] == e.sample_rate and info["channels"] == e.channels
    if e.fps is not None:
        assert info["source_fps"] == pytest.approx(e.fps, rel=1e-3)
    assert info.get("rotation", 0) == e.rotation
    assert name in stage["index"]["sources"]  # every used file goes through the stage
    clips_v, clips_a = stage["video"][got["rows"]], stage["audio"][got["rows"]]
    assert np.isfinite(clips_a).all() and np.abs(clips_a).max() <= 1.5
    if name == LONG_NAME:   # one flash and one click per second: every window, no drift
        for w in range(e.windows):
            k, t = sync_of(clips_v[w], clips_a[w])
            assert k == math.ceil(e.event_s * CFG.fps - 1e-9), (w, k)
            assert abs(t - e.click_at) < CLICK_TOL_S, (w, t)
        return
    timeline_v = clips_v.reshape(-1, *clips_v.shape[2:])
    timeline_a = clips_a.reshape(-1)
    if e.event_s is not None:
        k = flash_frame(timeline_v)
        assert k == math.ceil(e.event_s * CFG.fps - 1e-9), f"flash in frame {k}"
        assert flash_frame(timeline_v[:k]) is None
    if e.silent:
        assert np.abs(timeline_a).max() < 1e-4
    elif e.click_at is not None:
        t, expected = onset_s(timeline_a), e.click_at + e.audio_delay_s
        assert abs(t - expected) < CLICK_TOL_S, f"click at {t:.4f} s, expected {expected:.4f} s"
        if e.click_at == e.event_s:   # audio and video line up within one output frame
            assert abs(t - k * FRAME_S) < FRAME_S
    if e.rotation:
        expected = {90: "left", 270: "right"}[e.rotation]
        assert marker_side(timeline_v[0]) == expected


# --------------------------------------------------------------------------- memory
MEMORY_PROBE = """
import av, json, sys
from dataclasses import replace
sys.path.insert(0, sys.argv[2])
from media_corpus import CFG
from mmdisco.data.clips import _process_file

def hwm_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024

_process_file(sys.argv[3], CFG)            # warm up: imports, decoders, a short file
base = hwm_mb()
limited = _process_file(sys.argv[1], replace(CFG, max_windows_per_file=3))
after_limited = hwm_mb()
full = _process_file(sys.argv[1], CFG)
print(json.dumps({"base": base, "limited": after_limited - base,
                  "full": hwm_mb() - base, "windows": [len(limited.get("windows", [])),
                  len(full.get("windows", []))]}))
"""


def test_memory_stays_bounded_on_the_long_file(corpus):
    """10 minutes of 48 kHz audio: reading 3 windows costs no more than a short file, and
    reading all 600 costs little beyond the clips themselves (~42 MB)."""
    folder, _ = corpus
    proc = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(folder / LONG_NAME),
                           str(Path(__file__).parent),
                           str(folder / "u01_h264_aac_24fps_44k_stereo.mp4")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    mem = json.loads(proc.stdout.strip().splitlines()[-1])
    assert mem["windows"] == [3, 600]
    assert mem["limited"] < 64, mem     # MB above the short file's peak
    assert mem["full"] < 400, mem
