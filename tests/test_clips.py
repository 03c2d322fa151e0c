"""Clip extraction: sync round trips, odd and broken files, the worker pool, the output folder."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from mmdisco.config import ClipConfig
from mmdisco.data.checks import MediaRejected
from mmdisco.data.clips import ClipExtractionError, cut_windows, extract_clips, read_media
from mmdisco.data.media import write_av
from mmdisco.data.shards import load_clips

CFG = ClipConfig(seconds=1.0, hop_seconds=0.5, fps=8, size=16, sample_rate=16000, workers=2,
                 file_timeout_s=2.0, max_reject_fraction=1.0, shard_size=4)
EVENT_S = 1.0  # flash and click time (video time) in the sync files


# --------------------------------------------------------------------------- media makers
def _flash_video(seconds: float, fps: int, h: int = 64, w: int = 64, flash_s: float | None = None
                 ) -> np.ndarray:
    """Dark frames with one white frame shown at ``flash_s`` (on the source frame grid)."""
    video = np.full((round(seconds * fps), h, w, 3), 20, np.uint8)
    if flash_s is not None:
        video[round(flash_s * fps)] = 235
    return video


def _click_audio(seconds: float, sr: int, click_s: float | None = None, channels: int = 1
                 ) -> np.ndarray:
    """Quiet noise with a 20 ms tone burst starting at ``click_s``."""
    rng = np.random.default_rng(0)
    audio = (0.001 * rng.standard_normal(round(seconds * sr))).astype(np.float32)
    if click_s is not None:
        s = round(click_s * sr)
        n = round(0.02 * sr)
        audio[s:s + n] += 0.8 * np.sin(2 * np.pi * 440 * np.arange(n) / sr).astype(np.float32)
    return np.stack([audio] * channels) if channels > 1 else audio


def _write_offset(path: Path, video: np.ndarray, fps: int, audio: np.ndarray, sr: int, *,
                  video_start: int, audio_start: int, options: dict | None = None) -> None:
    """Write H.264 + AAC whose streams start at video_start frames and audio_start samples."""
    with av.open(str(path), "w", options=options or {}) as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.height, vs.width = video.shape[1:3]
        vs.pix_fmt = "yuv420p"
        ast = out.add_stream("aac", rate=sr)
        ast.layout = "mono"
        for i, image in enumerate(video):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = video_start + i
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
        for s in range(0, len(audio), 1024):
            frame = av.AudioFrame.from_ndarray(audio[None, s:s + 1024].copy(), format="fltp",
                                               layout="mono")
            frame.sample_rate, frame.pts = sr, audio_start + s
            frame.time_base = Fraction(1, sr)
            out.mux(ast.encode(frame))
        out.mux(ast.encode(None))


def _write_faststart_av(path: Path, video: np.ndarray, fps: int, audio: np.ndarray, sr: int
                        ) -> None:
    """Write an mp4 with its index (moov) before the media data."""
    _write_offset(path, video, fps, audio, sr, video_start=0, audio_start=0,
                  options={"movflags": "faststart"})


def _truncate(src: Path, dst: Path) -> None:
    data = src.read_bytes()
    dst.write_bytes(data[:len(data) // 2])


def _onset_s(audio: np.ndarray, sr: int) -> float:
    """First sample above half the peak, in seconds."""
    mag = np.abs(audio)
    return int(np.argmax(mag > 0.5 * mag.max())) / sr


def _bright_frame(video: np.ndarray) -> int:
    return int(np.argmax(video.reshape(len(video), -1).mean(axis=1)))


# --------------------------------------------------------------------------- sync round trips
SYNC_CASES = [  # (name, source fps, source rate, writer kwargs)
    ("mp4_8fps_8k.mp4", 8, 8000, {}),
    ("mp4_24fps_16k.mp4", 24, 16000, {}),
    ("mp4_30fps_44k.mp4", 30, 44100, {}),
    ("mp4_8fps_48k.mp4", 8, 48000, {}),
    ("mov_24fps_48k.mov", 24, 48000, {}),
    ("mkv_30fps_44k.mkv", 30, 44100, {}),                      # AAC codec delay in Matroska
    ("webm_24fps_48k.webm", 24, 48000,                        # Opus pre-skip
     {"video_codec": "libvpx-vp9", "audio_codec": "libopus"}),
]


def _write_sync_file(path: Path, fps: int, sr: int, kwargs: dict) -> None:
    """A flash and a click at EVENT_S; VP8/VP9 files are written in a fresh interpreter."""
    video = _flash_video(2.0, fps, flash_s=EVENT_S)
    audio = _click_audio(2.0, sr, click_s=EVENT_S)
    if "vpx" not in kwargs.get("video_codec", ""):
        write_av(path, video, fps, audio, sr, **kwargs)
        return
    # PyAV's libvpx encoders fail to open in a process that loaded decord before av.
    np.savez(path.with_suffix(".npz"), video=video, audio=audio)
    code = ("import sys, json, numpy as np; from mmdisco.data.media import write_av; "
            "d = np.load(sys.argv[1]); write_av(sys.argv[2], d['video'], int(sys.argv[3]), "
            "d['audio'], int(sys.argv[4]), **json.loads(sys.argv[5]))")
    subprocess.run([sys.executable, "-c", code, str(path.with_suffix(".npz")), str(path),
                    str(fps), str(sr), json.dumps(kwargs)], check=True,
                   cwd=Path(__file__).resolve().parents[1])


@pytest.mark.parametrize("name,fps,sr,kwargs", SYNC_CASES, ids=[c[0] for c in SYNC_CASES])
def test_flash_and_click_coincide(tmp_path, name, fps, sr, kwargs):
    path = tmp_path / name
    _write_sync_file(path, fps, sr, kwargs)
    frames, audio, info = read_media(path, CFG)
    assert frames.shape == (16, 16, 16, 3) and frames.dtype == np.uint8
    assert audio.dtype == np.float32 and abs(len(audio) / 16000 - 2.0) < 0.1
    assert info["source_sample_rate"] == sr and abs(info["source_fps"] - fps) < 1e-6
    windows = cut_windows(frames, audio, CFG)
    assert [w[0] for w in windows] == [0.0, 0.5, 1.0]
    start_s, video, clip_audio = windows[1]          # the flash is 0.5 s into this clip
    k = _bright_frame(video)
    assert k == 4 and video[k].mean() > 200 and video[k - 1].mean() < 40
    assert abs(_onset_s(clip_audio, 16000) - k / 8) <= 1e-3  # within one ~1 ms audio hop


@pytest.mark.parametrize("video_start,audio_start", [(2, 0), (0, 8000), (2, 12000)],
                         ids=["video_late", "audio_late", "both_late"])
def test_stream_start_offsets_are_aligned(tmp_path, video_start, audio_start):
    """Streams that start at different times: events at the same file time stay together."""
    fps, sr = 8, 16000
    event_file_s = video_start / fps + EVENT_S       # the flash, in file time
    video = _flash_video(2.0, fps, flash_s=EVENT_S)
    audio = _click_audio(2.5, sr, click_s=event_file_s - audio_start / sr)
    path = tmp_path / "offset.mp4"
    _write_offset(path, video, fps, audio, sr, video_start=video_start, audio_start=audio_start)
    frames, audio_out, info = read_media(path, CFG)
    assert _bright_frame(frames) == 8
    assert abs(_onset_s(audio_out, 16000) - EVENT_S) <= 1e-3
    assert abs(info["audio_offset_s"] - (info["audio_start_s"] - info["video_start_s"])) < 1e-9


# --------------------------------------------------------------------------- cut_windows
def test_cut_windows_grid_coverage_and_limit():
    frames = np.arange(20, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    audio = np.arange(round(2.2 * 16000), dtype=np.float32)
    windows = cut_windows(frames, audio, CFG)
    assert [w[0] for w in windows] == [0.0, 0.5, 1.0]       # 1.5 + 1.0 > 2.2 s of audio
    start, video, clip_audio = windows[2]
    assert video.shape == (8, 2, 2, 3) and video[0, 0, 0, 0] == 8 and clip_audio.shape == (16000,)
    assert clip_audio[0] == 16000
    limited = replace(CFG, max_windows_per_file=2)
    assert len(cut_windows(frames, audio, limited)) == 2
    odd_hop = replace(CFG, hop_seconds=0.3)
    assert [w[0] for w in cut_windows(frames, audio, odd_hop)][:3] == [0.0, 0.25, 0.625]
    tiny_hop = [w[0] for w in cut_windows(frames, audio, replace(CFG, hop_seconds=0.05))]
    assert tiny_hop == [k / 8 for k in range(10)]           # one window per frame, no repeats
    assert cut_windows(frames[:7], audio, CFG) == []


# --------------------------------------------------------------------------- odd and broken files
EXPECTED = {  # file -> clips (int) or reject reason (str)
    "a_good.mp4": 3, "b_stereo_24fps_44k.mp4": 3, "c_odd_102x78_30fps_48k.mp4": 2,
    "d_other.mkv": 3, "e_tiny_yuv444.mp4": 1, "f_short.mp4": "too_short",
    "g_truncated.mp4": "truncated", "h_truncated_faststart.mp4": "truncated",
    "i_zero.mp4": "zero_bytes", "j_garbage.mp4": "not_media", "k_no_audio.mp4": "no_audio",
    "l_no_video.mp4": "no_video", "m_hang.mp4": "timeout",
}
LABELS = {"a_good.mp4": {"class": 2, "contact_times": [0.25, 1.0, 1.5], "pitch_hz": 1000.0}}


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("media")
    write_av(d / "a_good.mp4", _flash_video(2.0, 8, flash_s=EVENT_S), 8,
             _click_audio(2.0, 16000, click_s=EVENT_S), 16000)
    write_av(d / "b_stereo_24fps_44k.mp4", _flash_video(2.0, 24), 24,
             _click_audio(2.0, 44100, click_s=0.5, channels=2), 44100)
    odd = _flash_video(1.5, 30, h=78, w=102)
    odd[:, :, :12] = (255, 0, 0)                     # red strip outside the centre square
    write_av(d / "c_odd_102x78_30fps_48k.mp4", odd, 30, _click_audio(1.5, 48000), 48000)
    write_av(d / "d_other.mkv", _flash_video(2.0, 8), 8, _click_audio(2.0, 16000), 16000)
    write_av(d / "e_tiny_yuv444.mp4", np.full((8, 8, 8, 3), (200, 100, 50), np.uint8), 8,
             _click_audio(1.0, 8000), 8000, pix_fmt="yuv444p")
    write_av(d / "f_short.mp4", _flash_video(0.5, 8), 8, _click_audio(0.5, 16000), 16000)
    _truncate(d / "a_good.mp4", d / "g_truncated.mp4")
    _write_faststart_av(d / "fs.mp4", _flash_video(2.0, 8), 8,
                        _click_audio(2.0, 16000), 16000)
    _truncate(d / "fs.mp4", d / "h_truncated_faststart.mp4")
    (d / "fs.mp4").unlink()
    (d / "i_zero.mp4").write_bytes(b"")
    (d / "j_garbage.mp4").write_bytes(np.random.default_rng(1).bytes(4000))
    write_av(d / "k_no_audio.mp4", _flash_video(2.0, 8), 8, None, 16000)
    write_av(d / "l_no_video.mp4", None, 8, _click_audio(2.0, 16000), 16000)
    os.mkfifo(d / "m_hang.mp4")                      # opening it blocks forever: a hung file
    return d


@pytest.fixture(scope="module")
def extracted(media_dir, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("out")
    files = sorted(media_dir.iterdir(), reverse=True)  # input order must not matter
    runs = {}
    for workers in (1, 2):
        cfg = replace(CFG, workers=workers)
        summary = extract_clips(files, out / f"w{workers}", cfg, labels=LABELS)
        runs[workers] = (summary, out / f"w{workers}")
    return runs


def test_odd_files_used_or_rejected_with_reason(extracted):
    summary, folder = extracted[2]
    rejects = {r["source"]: r["reason"] for r in json.loads((folder / "rejects.json").read_text())}
    assert rejects == {k: v for k, v in EXPECTED.items() if isinstance(v, str)}
    video, audio, index = load_clips(folder)
    per_file = {}
    for clip in index["clips"]:
        per_file[clip["source"]] = per_file.get(clip["source"], 0) + 1
    assert per_file == {k: v for k, v in EXPECTED.items() if isinstance(v, int)}
    n = sum(per_file.values())
    assert video.shape == (n, 8, 16, 16, 3) and video.dtype == torch.uint8
    assert audio.shape == (n, 16000) and audio.dtype == torch.float32
    assert summary["clips"] == n == index["num_clips"]
    assert summary["files"] == len(EXPECTED) and summary["used_files"] == len(per_file)
    assert summary["reject_reasons"] == dict(Counter(rejects.values()))
    assert [c["source"] for c in index["clips"]] == sorted(c["source"] for c in index["clips"])
    by_source = {}
    for j, clip in enumerate(index["clips"]):
        by_source.setdefault(clip["source"], []).append(j)
    odd = video[by_source["c_odd_102x78_30fps_48k.mp4"]].float()
    assert (odd[..., 0] - odd[..., 1]).abs().max() < 10  # the red strip was cropped away
    tiny = video[by_source["e_tiny_yuv444.mp4"]].float().mean(dim=(0, 1, 2, 3))
    assert torch.allclose(tiny, torch.tensor([200.0, 100.0, 50.0]), atol=6)  # PyAV fallback
    decoders = {k: v["video_decoder"] for k, v in index["sources"].items()}
    assert decoders == {k: ("pyav" if k == "e_tiny_yuv444.mp4" else "decord") for k in per_file}
    assert index["sources"]["d_other.mkv"]["audio_skipped_samples"] == 1024  # AAC codec delay
    assert index["sources"]["a_good.mp4"]["audio_skipped_samples"] == 0      # edit list
    stereo = audio[by_source["b_stereo_24fps_44k.mp4"][1]].numpy()  # clip at 0.5 s
    assert _onset_s(stereo, 16000) <= 1e-3


def test_results_independent_of_worker_count(extracted):
    v1, a1, i1 = load_clips(extracted[1][1])
    v2, a2, i2 = load_clips(extracted[2][1])
    assert torch.equal(v1, v2) and torch.equal(a1, a2) and i1 == i2
    assert (extracted[1][1] / "rejects.json").read_text() == \
        (extracted[2][1] / "rejects.json").read_text()


def test_shards_rows_and_labels(extracted):
    folder = extracted[2][1]
    video, audio, index = load_clips(folder)
    assert index["num_clips"] == 12 and index["shards"] == [f"shard_{i:05d}.safetensors"
                                                           for i in range(3)]
    assert (index["fps"], index["size"], index["sample_rate"]) == (8, 16, 16000)
    assert (index["num_frames"], index["num_samples"]) == (8, 16000)
    for j, clip in enumerate(index["clips"]):
        assert (clip["shard"], clip["row"]) == divmod(j, 4)
    good = [c for c in index["clips"] if c["source"] == "a_good.mp4"]
    assert [c["start_s"] for c in good] == [0.0, 0.5, 1.0]
    assert [c["contact_frames"] for c in good] == [[2], [4], [0, 4]]
    assert all(c["class"] == 2 and c["pitch_hz"] == 1000.0 and "contact_times" not in c
               for c in good)
    assert all("class" not in c for c in index["clips"] if c["source"] != "a_good.mp4")
    j = index["clips"].index(good[1])
    assert _bright_frame(video[j].numpy()) == 4
    assert abs(_onset_s(audio[j].numpy(), 16000) - 0.5) <= 1e-3


# --------------------------------------------------------------------------- failure paths
def test_reject_fraction_raises_and_writes_nothing(media_dir, tmp_path):
    files = [media_dir / n for n in ("a_good.mp4", "i_zero.mp4", "j_garbage.mp4")]
    cfg = replace(CFG, max_reject_fraction=0.5)
    out = tmp_path / "clips"
    with pytest.raises(ClipExtractionError, match=r"2 of 3 files rejected.*rejects\.json"):
        extract_clips(files, out, cfg)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["clips.rejects.json"]
    rejects = json.loads((tmp_path / "clips.rejects.json").read_text())
    assert {r["source"]: r["reason"] for r in rejects} == {"i_zero.mp4": "zero_bytes",
                                                           "j_garbage.mp4": "not_media"}
    with pytest.raises(ClipExtractionError, match="no usable clip"):
        extract_clips(files[1:], out, CFG)
    assert not out.exists()


def test_read_media_names_the_reason(media_dir):
    for name in ("i_zero.mp4", "j_garbage.mp4", "g_truncated.mp4", "k_no_audio.mp4"):
        with pytest.raises(MediaRejected) as err:
            read_media(media_dir / name, CFG)
        assert err.value.reason == EXPECTED[name] and name in str(err.value)


def test_load_clips_missing_or_incomplete(extracted, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        load_clips(tmp_path / "nope")
    broken = tmp_path / "broken"
    shutil.copytree(extracted[2][1], broken)
    (broken / "shard_00001.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="shard_00001.*incomplete"):
        load_clips(broken)
    (broken / "index.json").unlink()
    with pytest.raises(FileNotFoundError, match="index.json"):
        load_clips(broken)


def test_duplicate_names_and_reserved_label_keys(media_dir, tmp_path):
    other = tmp_path / "x"
    other.mkdir()
    shutil.copy(media_dir / "a_good.mp4", other / "a_good.mp4")
    with pytest.raises(ValueError, match="a_good.mp4"):
        extract_clips([media_dir / "a_good.mp4", other / "a_good.mp4"], tmp_path / "o", CFG)
    with pytest.raises(ValueError, match="reserved"):
        extract_clips([media_dir / "a_good.mp4"], tmp_path / "o", CFG,
                      labels={"a_good.mp4": {"row": 1}})
