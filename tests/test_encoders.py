"""Frozen encoders: exact pixel round trip, log-mel normalisation and pitch read-back."""
from __future__ import annotations

import math

import pytest
import torch

from mmdisco.config import AudioEncoderConfig, VideoEncoderConfig
from mmdisco.encoders import encoder_from_state, make_audio_encoder, make_video_encoder


def tone(freq: float, sr: int = 8000, n: int = 8000, onset: float = 0.25) -> torch.Tensor:
    t = torch.arange(n) / sr
    env = torch.where(t >= onset, torch.exp(-(t - onset) / 0.06), torch.zeros(()))
    return (0.5 * env * torch.sin(2 * math.pi * freq * (t - onset))).float()


def mel_encoder():
    return make_audio_encoder(AudioEncoderConfig(), sample_rate=8000, num_samples=8000)


def test_pixels_round_trip_exactly():
    enc = make_video_encoder(VideoEncoderConfig())
    clips = torch.randint(0, 256, (3, 8, 16, 16, 3), dtype=torch.uint8)
    lat = enc.encode(clips)
    assert lat.shape == (3, 8, 3, 16, 16) and lat.min() >= -1 and lat.max() <= 1
    assert torch.equal(enc.decode(lat), clips)
    with pytest.raises(ValueError, match="uint8"):
        enc.encode(clips.float())


def test_logmel_layout_range_and_reference():
    enc = mel_encoder()
    audio = torch.stack([tone(500), tone(3000), 0.1 * tone(1000)])
    enc.fit(audio)
    lat = enc.encode(audio)
    assert lat.shape == (3, 1, 32, 32)
    assert lat.max().item() == pytest.approx(1.0) and lat.min().item() == pytest.approx(-1.0)
    # the quieter tone peaks 20 dB lower: 20 / 45 of the range, i.e. 2·20/45 lower
    assert (lat[0].max() - lat[2].max()).item() == pytest.approx(40 / 45, abs=0.08)
    # to_db inverts the linear map
    db = enc.to_db(lat)
    assert db.max().item() == pytest.approx(enc.ref_db, abs=1e-4)


@pytest.mark.parametrize("freq", [500, 909, 1651, 3000])
def test_logmel_peak_bin_is_at_the_tone(freq):
    enc = mel_encoder()
    audio = tone(freq)[None]
    enc.fit(audio)
    lat = enc.encode(audio)[0, 0]                      # [T, M]
    onset_frame = round(0.25 * enc.frame_rate)
    hz = enc.mel_frequencies()[lat[onset_frame + 1].argmax()].item()
    assert abs(math.log2(hz / freq)) < 0.15            # within ~10% of the pitch
    assert lat[: onset_frame - 1].max() < -0.9         # silence before the onset


def test_decode_gives_audio_that_re_encodes_close():
    enc = mel_encoder()
    audio = torch.stack([tone(909), tone(1651)])
    enc.fit(audio)
    lat = enc.encode(audio)
    wave = enc.decode(lat)
    assert wave.shape == (2, 8000) and torch.isfinite(wave).all() and wave.abs().max() <= 1
    enc2 = encoder_from_state(enc.state())
    again = enc2.encode(wave / wave.abs().max() * audio.abs().max())
    assert (again - lat).abs().mean() < 0.12


def test_state_round_trip_and_unfitted_error():
    enc = mel_encoder()
    with pytest.raises(RuntimeError, match="fit"):
        enc.encode(tone(500)[None])
    enc.fit(tone(500)[None])
    again = encoder_from_state(enc.state())
    assert torch.equal(again.encode(tone(500)[None]), enc.encode(tone(500)[None]))
    with pytest.raises(ValueError, match="unknown"):
        encoder_from_state({"kind": "mystery"})
