"""Ground-truth decoders: they read rendered clips exactly and reject what the world never makes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from mmdisco.config import AudioEncoderConfig, SynthConfig
from mmdisco.data.synth import class_colours, class_pitches, render_clip
from mmdisco.encoders.mel import LogMelEncoder
from mmdisco.eval.decoders import (AudioReading, VideoReading, decode_audio, decode_audios,
                                   decode_video, decode_videos, floor_row)

FPS, SR, SIZE = 8, 8000, 16


def render_world(num_classes: int, n: int, seed: int) -> dict:
    """``n`` clips as the pipeline sees them: 16×16 frames (area resize) and a dB log-mel."""
    cfg = SynthConfig(seconds=1.0, size=64, fps=FPS, sample_rate=SR, num_classes=num_classes)
    rng = np.random.default_rng(seed)
    clips = [render_clip(cfg, rng) for _ in range(n)]
    video = torch.from_numpy(np.stack([c[0] for c in clips])).float()
    video = F.interpolate(rearrange(video, "n f h w c -> (n f) c h w"), size=(SIZE, SIZE),
                          mode="area")
    video = rearrange(video.round().clamp(0, 255).to(torch.uint8), "(n f) c h w -> n f h w c", n=n)
    audio = torch.from_numpy(np.stack([c[1] for c in clips]))
    enc = LogMelEncoder(AudioEncoderConfig(), sample_rate=SR, num_samples=SR)
    enc.fit(audio)
    return {"video": video.numpy(), "mel_db": enc.to_db(enc.encode(audio)).numpy(),
            "truth": [c[2] for c in clips], "mel_hz": enc.mel_frequencies().numpy(),
            "mel_frame_rate": enc.frame_rate, "enc": enc, "K": num_classes}


def read_audio(world: dict, mel_db: np.ndarray) -> AudioReading:
    return decode_audio(mel_db, world["mel_hz"], class_pitches(world["K"]),
                        mel_frame_rate=world["mel_frame_rate"], fps=FPS, num_video_frames=8)


@pytest.fixture(scope="module", params=[2, 4, 8])
def world(request):
    return render_world(request.param, 300, seed=request.param)


@pytest.fixture(scope="module")
def world4():
    return render_world(4, 40, seed=123)


def test_decoders_read_class_and_timing_of_rendered_clips(world):
    truth = world["truth"]
    videos = decode_videos(world["video"], class_colours(world["K"]))
    audios = decode_audios(world["mel_db"], world["mel_hz"], class_pitches(world["K"]),
                           mel_frame_rate=world["mel_frame_rate"], fps=FPS, num_video_frames=8)
    assert len(videos) == len(audios) == len(truth) == 300
    video_ok = [r.valid and r.cls == t["class"] and r.contact_frames == t["contact_frames"]
                for r, t in zip(videos, truth)]
    audio_ok = [r.valid and r.cls == t["class"] and r.onset_frames == t["contact_frames"]
                for r, t in zip(audios, truth)]
    assert np.mean(video_ok) >= 0.99
    assert np.mean(audio_ok) >= 0.99
    assert all(r.reason == "" for r in videos + audios if r.valid)
    # the world uses every class, and the decoders do not collapse them
    assert {r.cls for r in videos} == set(range(world["K"]))


def test_single_clip_helpers_match_batch(world4):
    colours = class_colours(4)
    one = decode_video(world4["video"][3], colours)
    assert one == decode_videos(world4["video"][3:4], colours)[0]
    assert one.contact_frames == world4["truth"][3]["contact_frames"]
    # torch tensors are accepted as well
    assert decode_video(torch.from_numpy(world4["video"][3]), colours) == one
    audio = read_audio(world4, torch.from_numpy(world4["mel_db"][3]))
    assert (audio.valid, audio.cls) == (True, world4["truth"][3]["class"])


def test_floor_row_is_where_contacts_sit(world4):
    """The geometric floor lies within a fraction of a pixel of the measured contact rows."""
    clip, t = world4["video"][0], world4["truth"][0]
    bright = clip.max(-1).astype(float) - 20.0
    rows = np.arange(SIZE)[:, None]
    for f in t["contact_frames"]:
        w = np.clip(bright[f], 0, None) * (bright[f] > 100)
        assert abs((w * rows).sum() / w.sum() - floor_row(SIZE)) < 0.5


def test_onset_mel_frame_maps_to_contact_frame(world4):
    """A tone starting at frame f/fps first shows at mel frame 4f and is read as video frame f."""
    for mel_db, t in zip(world4["mel_db"][:10], world4["truth"][:10]):
        env = 10 * np.log10((10 ** (mel_db / 10)).sum(-1))
        rises = [j for j in range(1, len(env)) if env[j] - env[j - 1] > 6]
        assert rises == [4 * f for f in t["contact_frames"] if f > 0]
        assert read_audio(world4, mel_db).onset_frames == t["contact_frames"]


# --------------------------------------------------------------------------- garbage video
def _assert_invalid(reading, words: str) -> None:
    assert not reading.valid
    assert reading.cls == -1
    assert words in reading.reason, reading.reason


def test_video_garbage_is_invalid_with_a_reason(world4):
    rng = np.random.default_rng(0)
    colours = class_colours(4)
    clip = world4["video"][0]
    _assert_invalid(decode_video(rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8), colours),
                    "blobs")
    _assert_invalid(decode_video(np.zeros((8, 16, 16, 3), np.uint8), colours), "no ball")
    _assert_invalid(decode_video(np.full((8, 16, 16, 3), 255, np.uint8), colours), "no ball")
    two = np.maximum(clip, np.roll(clip, 8, axis=2))  # a second ball 8 px to the side
    _assert_invalid(decode_video(two, colours), "2 blobs")
    big = np.maximum(clip, np.roll(clip, 2, axis=2))  # a smeared double-width ball
    _assert_invalid(decode_video(big, colours), "px")
    grey = clip.max(-1, keepdims=True).repeat(3, -1)  # a white ball: no class colour
    _assert_invalid(decode_video(grey, colours), "colour")
    still = np.repeat(clip[world4["truth"][0]["contact_frames"][:1]], 8, axis=0)  # never bounces
    _assert_invalid(decode_video(still, colours), "no floor contact")
    gone = clip.copy()
    gone[5] = gone[5].min()  # the ball vanishes in one frame
    _assert_invalid(decode_video(gone, colours), "frame 5")


def test_video_colour_change_across_frames_is_invalid(world4):
    by_class = {}
    for v, t in zip(world4["video"], world4["truth"]):
        by_class.setdefault(t["class"], v)
    a, b = list(by_class.values())[:2]
    mixed = np.concatenate([a[:4], b[4:]])
    _assert_invalid(decode_video(mixed, class_colours(4)), "colour class changes")


def test_video_shape_errors():
    with pytest.raises(ValueError, match="uint8"):
        decode_videos(np.zeros((2, 8, 16, 16, 3), np.float32), class_colours(4))
    with pytest.raises(ValueError, match=r"\[F, H, W, 3\]"):
        decode_video(np.zeros((16, 16, 3), np.uint8), class_colours(4))
    assert decode_videos(np.zeros((0, 8, 16, 16, 3), np.uint8), class_colours(4)) == []


# --------------------------------------------------------------------------- garbage audio
def test_audio_garbage_is_invalid_with_a_reason(world4):
    rng = np.random.default_rng(0)
    enc = world4["enc"]
    floor = enc.ref_db - enc.cfg.top_db
    _assert_invalid(read_audio(world4, np.full((32, 32), floor)), "no tone onset")
    _assert_invalid(read_audio(world4, rng.uniform(floor, enc.ref_db, (32, 32))), "no tone onset")
    noise = torch.from_numpy(rng.standard_normal((1, SR)).astype(np.float32) * 0.3)
    _assert_invalid(read_audio(world4, enc.to_db(enc.encode(noise))[0].numpy()), "no tone onset")
    _assert_invalid(read_audio(world4, np.full((32, 32), np.nan)), "non-finite")
    _assert_invalid(read_audio(world4, np.full((32, 32), 1e6)), "no tone onset")
    # clicks: broadband bursts rise sharply but have no dominant band
    clicks = np.full((32, 32), floor)
    clicks[[4, 20]] = enc.ref_db
    _assert_invalid(read_audio(world4, clicks), "not tonal")


def test_audio_off_scale_and_mixed_pitches_are_invalid(world4):
    mel, truth = world4["mel_db"], world4["truth"]
    low = next(i for i, t in enumerate(truth) if t["class"] == 0)  # 500 Hz
    shifted = np.roll(mel[low], -6, axis=1)  # the tone now sits near 180 Hz
    _assert_invalid(read_audio(world4, shifted), "octave from every class pitch")
    # first tone of one class, later tones of another
    a = next(i for i, t in enumerate(truth) if t["class"] == 0 and t["contact_frames"][0] <= 2)
    b = next(i for i, t in enumerate(truth) if t["class"] == 3 and t["contact_frames"][-1] >= 5)
    mixed = np.concatenate([mel[a][:12], mel[b][12:]])
    _assert_invalid(read_audio(world4, mixed), "different pitch classes")


def test_audio_shape_errors(world4):
    with pytest.raises(ValueError, match="len\\(mel_hz\\)"):
        decode_audios(np.zeros((2, 32, 16)), world4["mel_hz"], class_pitches(4),
                      mel_frame_rate=32, fps=8, num_video_frames=8)
    with pytest.raises(ValueError, match=r"\[T, M\]"):
        read_audio(world4, np.zeros(32))
    with pytest.raises(ValueError, match="pitches"):
        decode_audios(np.zeros((1, 32, 32)), world4["mel_hz"], np.array([0.0, 500.0]),
                      mel_frame_rate=32, fps=8, num_video_frames=8)


def test_readings_default_to_invalid_shape():
    assert VideoReading(False) == VideoReading(False, -1, [], "")
    assert AudioReading(False) == AudioReading(False, -1, [], "")
