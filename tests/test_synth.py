"""Tests for mmdisco.data.synth: the ground truth matches the pixels and the sound, on raw renders
and after the H.264/AAC round trip; rendering is deterministic and atomic."""
from __future__ import annotations

import dataclasses
import json

import decord
import numpy as np
import pytest
from einops import reduce

from mmdisco.config import ConfigError, SynthConfig
from mmdisco.data.synth import class_colours, class_pitches, render_clip, render_world

SMALL = SynthConfig(num_files=6, seconds=2.0, fps=8, size=64, sample_rate=16000)


# --------------------------------------------------------------------------- helpers
def ball_rows_and_colour(video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertical centroid of the bright ball pixels per frame, and their mean colour."""
    v = video.astype(np.float64)
    mask = v.max(axis=-1) > 128
    assert mask.any(axis=(1, 2)).all(), "a frame has no ball"
    rows = np.array([np.nonzero(m)[0].mean() for m in mask])
    colour = np.concatenate([f[m] for f, m in zip(v, mask)]).mean(axis=0)
    return rows, colour


def nearest(table: np.ndarray, value: np.ndarray) -> int:
    return int(np.argmin(((table.astype(np.float64) - value) ** 2).sum(axis=-1)))


def check_video_truth(video: np.ndarray, truth: dict, num_classes: int, factor: int = 1) -> None:
    """The ball is lowest exactly at the contact frames and has its class colour.

    ``factor`` > 1 first shrinks the frames by that factor (area mean), as clip extraction does.
    """
    if factor > 1:
        video = reduce(video.astype(np.float64), "f (h a) (w b) c -> f h w c", "mean",
                       a=factor, b=factor)
    rows, colour = ball_rows_and_colour(video)
    lowest = [int(f) for f in np.nonzero(rows >= rows.max() - 0.5 / factor)[0]]
    assert lowest == truth["contact_frames"], (np.round(rows, 1), truth["contact_frames"])
    others = np.delete(rows, truth["contact_frames"])
    assert rows.max() - others.max() >= 0.1 * truth["size"] / factor  # clearly higher between
    assert nearest(class_colours(num_classes), colour) == truth["class"]


def dominant_hz(segment: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(segment * np.hanning(len(segment)), n=1 << 15))
    return float(np.fft.rfftfreq(1 << 15, 1 / sample_rate)[np.argmax(spectrum)])


def check_audio_truth(audio: np.ndarray, truth: dict, sample_rate: int) -> None:
    """Each contact starts a tone: a jump in energy just after it, at the class pitch."""
    ms = sample_rate // 1000
    envelope = np.convolve(np.abs(audio), np.ones(2 * ms) / (2 * ms), mode="same")
    for t in truth["contact_times"]:
        at = round(t * sample_rate)
        window = envelope[max(0, at - 20 * ms): at + 40 * ms]
        peak = int(np.argmax(window)) + max(0, at - 20 * ms)
        assert 0 <= peak - at <= 15 * ms, (t, (peak - at) / ms)
        if at >= 10 * ms:
            assert envelope[at - 10 * ms] < 0.1 * envelope[peak]
        segment = audio[at: at + 50 * ms]
        if len(segment) >= 20 * ms:
            assert dominant_hz(segment, sample_rate) == pytest.approx(truth["pitch_hz"], rel=0.03)


def decode(path) -> tuple[np.ndarray, np.ndarray]:
    reader = decord.VideoReader(str(path))
    video = reader.get_batch(list(range(len(reader)))).asnumpy()
    audio = decord.AudioReader(str(path), sample_rate=SMALL.sample_rate, mono=True)[:].asnumpy()
    return video, audio[0]


# --------------------------------------------------------------------------- classes
@pytest.mark.parametrize("k", range(2, 9))
def test_class_colours_and_pitches_are_distinct_and_bounded(k):
    colours, pitches = class_colours(k).astype(int), class_pitches(k)
    assert colours.shape == (k, 3) and class_colours(k).dtype == np.uint8
    assert (colours.max(axis=1) == 255).all()  # bright
    assert (colours.max(axis=1) - colours.min(axis=1) == 255).all()  # saturated
    gaps = np.sqrt(((colours[:, None] - colours[None]) ** 2).sum(-1))[~np.eye(k, dtype=bool)]
    assert gaps.min() > 120  # K = 8: about 142 between the two greens
    assert pitches.shape == (k,) and pitches[0] == pytest.approx(500) and pitches[-1] == pytest.approx(3000)
    assert (np.diff(pitches) > 0).all() and pitches.max() < 4000
    assert np.allclose(pitches[1:] / pitches[:-1], (3000 / 500) ** (1 / (k - 1)))


def test_four_class_pitches_and_bad_class_counts():
    assert np.allclose(class_pitches(4), [500, 908.56, 1650.96, 3000], atol=0.1)
    for k in (1, 9):
        with pytest.raises(ConfigError, match="num_classes"):
            class_colours(k)
        with pytest.raises(ConfigError, match="num_classes"):
            class_pitches(k)


# --------------------------------------------------------------------------- one clip
@pytest.mark.parametrize("sample_rate", [8000, 16000])
def test_render_clip_truth_matches_pixels_and_sound(sample_rate):
    cfg = dataclasses.replace(SMALL, sample_rate=sample_rate, num_classes=6)
    periods = set()
    for i in range(12):
        video, audio, truth = render_clip(cfg, np.random.default_rng(i))
        assert video.shape == (16, 64, 64, 3) and video.dtype == np.uint8
        assert audio.shape == (2 * sample_rate,) and audio.dtype == np.float32
        assert np.abs(audio).max() <= 1.0
        p, phase = truth["period"], truth["phase"]
        assert cfg.min_period <= p <= cfg.max_period and 0 <= phase < p
        assert truth["contact_frames"] == list(range(phase, 16, p))
        assert truth["contact_times"] == [f / 8 for f in truth["contact_frames"]]
        assert truth["pitch_hz"] == class_pitches(6)[truth["class"]]
        assert truth["bounce_height"] >= 0.25 * cfg.size
        for start in range(16 - cfg.fps + 1):  # a contact in every 1 s window
            assert any(start <= f < start + cfg.fps for f in truth["contact_frames"])
        check_video_truth(video, truth, cfg.num_classes)
        check_audio_truth(audio, truth, sample_rate)
        periods.add(p)
    assert len(periods) >= 3


def _late_first_contact(cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray, dict]:
    """The first clip (seeds 0, 1, ...) whose first contact is at frame 2 or later."""
    for seed in range(100):
        video, audio, truth = render_clip(cfg, np.random.default_rng(seed))
        if truth["contact_frames"][0] >= 2:
            return video, audio, truth
    raise AssertionError("no clip starts with a late contact")


def test_render_clip_noise_levels_follow_config():
    quiet = dataclasses.replace(SMALL, video_noise=0.0, audio_noise=0.0)
    video, audio, truth = _late_first_contact(quiet)
    assert (video[:, :2, :2] == 20).all()  # clean dark background corner
    first = round(truth["contact_times"][0] * quiet.sample_rate)
    assert np.abs(audio[:first]).max() == 0.0
    noisy = dataclasses.replace(SMALL, video_noise=0.1, audio_noise=0.01)
    video, audio, truth = _late_first_contact(noisy)
    assert video[:, :4, :4].astype(float).std() == pytest.approx(0.1 * 127.5, rel=0.15)
    first = round(truth["contact_times"][0] * noisy.sample_rate)
    assert audio[:first].std() == pytest.approx(0.01, rel=0.1)


def test_render_clip_rejects_settings_without_contacts_each_second():
    with pytest.raises(ConfigError, match="max_period"):
        render_clip(dataclasses.replace(SMALL, fps=4), np.random.default_rng(0))


# --------------------------------------------------------------------------- world
def test_render_world_files_decode_to_their_truth(tmp_path):
    cfg = dataclasses.replace(SMALL, num_files=16, num_classes=8)
    records = render_world(tmp_path / "world", cfg, seed=7, workers=2)
    names = sorted(p.name for p in (tmp_path / "world").iterdir())
    assert names == [f"clip_{i:05d}.mp4" for i in range(16)] + ["truth.json"]
    assert json.loads((tmp_path / "world" / "truth.json").read_text()) == records
    assert len({r["class"] for r in records}) >= 5
    for record in records:
        video, audio = decode(tmp_path / "world" / record["file"])
        assert video.shape == (16, 64, 64, 3)
        check_video_truth(video, record, cfg.num_classes)
        check_video_truth(video, record, cfg.num_classes, factor=4)  # still right at 16×16
        check_audio_truth(audio, record, cfg.sample_rate)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["world"]  # no temporary folders left


def test_render_world_is_deterministic_and_independent_of_workers(tmp_path):
    a = render_world(tmp_path / "a", SMALL, seed=3, workers=2)
    b = render_world(tmp_path / "b", SMALL, seed=3, workers=1)
    c = render_world(tmp_path / "c", SMALL, seed=4, workers=2)
    assert a == b and a != c
    for r in a:
        assert (tmp_path / "a" / r["file"]).read_bytes() == (tmp_path / "b" / r["file"]).read_bytes()
        assert (tmp_path / "a" / r["file"]).read_bytes() != (tmp_path / "c" / r["file"]).read_bytes()
    assert (tmp_path / "a" / "truth.json").read_bytes() == (tmp_path / "b" / "truth.json").read_bytes()


def test_render_world_replaces_an_old_folder_whole(tmp_path):
    out = tmp_path / "world"
    out.mkdir()
    (out / "stale.mp4").write_bytes(b"old")
    render_world(out, dataclasses.replace(SMALL, num_files=2, seconds=1.0), seed=0, workers=1)
    assert sorted(p.name for p in out.iterdir()) == ["clip_00000.mp4", "clip_00001.mp4",
                                                     "truth.json"]
