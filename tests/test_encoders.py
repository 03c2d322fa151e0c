"""Frozen encoders: exact pixel round trip, log-mel normalisation, pitch read-back and rendering."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchaudio

from mmdisco.config import AudioEncoderConfig, VideoEncoderConfig
from mmdisco.encoders import encoder_from_state, make_audio_encoder, make_video_encoder, sines
from mmdisco.eval.tonality import pitch_energy_fraction


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
    # rendered at the encoded level (analysis by synthesis): no rescaling before re-encoding
    again = encoder_from_state(enc.state()).encode(wave)
    assert (again - lat).abs().mean() < 0.03
    onset = round(0.25 * enc.frame_rate)
    envelope = lambda x: x[:, 0].max(-1).values                       # noqa: E731
    assert (envelope(again)[:, : onset - 1] < -0.9).all()             # still silent before
    assert (envelope(again)[:, onset:onset + 2] > 0.5).all()          # loud at the onset


@pytest.mark.parametrize("freq", [437.0, 1234.5, 2890.0])
def test_decode_renders_a_tone_at_its_pitch(freq):
    """Not a mel-bin centre: the exact peak frequency comes from the filters' geometry."""
    enc = mel_encoder()
    audio = tone(freq)[None]
    enc.fit(audio)
    wave = enc.decode(enc.encode(audio)).numpy()
    # ±4% of the pitch is 17 Hz at 437 Hz: narrower than one STFT bin (31 Hz) or mel band
    # (~70 Hz), so only an exact frequency puts the energy there. The source's abrupt onset
    # spreads a few % of its own energy, which bounds what a faithful render can reach.
    rendered = pitch_energy_fraction(wave, 8000, [freq])[0]
    source = pitch_energy_fraction(audio.numpy(), 8000, [freq])[0]
    assert rendered > 0.93 and rendered > source - 0.02


def test_peaks_recover_the_power_weighted_frequency_exactly():
    """Σ_m y_m = Σ_k P_k and Σ_m y_m c_m = Σ_k P_k f_k for triangular filters.

    torchaudio builds the filters in float32, so each weight carries a relative rounding of
    about 6e-8; sums of a few of them agree to ~1e-7, hence rel=1e-6."""
    n_fft, sr, n_mels = 256, 8000, 32
    fb = torchaudio.functional.melscale_fbanks(n_fft // 2 + 1, 0.0, sr / 2, n_mels, sr)
    fb = fb.double().numpy()                                          # [K, M]
    f_k = np.linspace(0, sr / 2, n_fft // 2 + 1)
    power = np.zeros((2, n_fft // 2 + 1))
    power[0, 40:43] = [1.0, 3.0, 0.5]        # one peak, between mel centres
    power[1, [20, 21, 90]] = [2.0, 1.0, 4.0]  # two far-apart peaks
    energy, freq = sines.peaks(power @ fb, sines.filter_centres(n_mels, 0.0, sr / 2))
    expected = [[(power[0] * f_k).sum() / power[0].sum()],
                [(power[1, :22] * f_k[:22]).sum() / 3.0, f_k[90]]]
    for e, f, want, total in zip(energy, freq, expected, power.sum(1)):
        assert e.sum() == pytest.approx(total, rel=1e-6)
        assert np.sort(f[e > 0]) == pytest.approx(want, rel=1e-6)


def test_decode_of_silence_is_silent():
    enc = mel_encoder()
    enc.fit(tone(500)[None])
    assert torch.equal(enc.decode(-torch.ones(2, 1, 32, 32)), torch.zeros(2, 8000))


def test_state_round_trip_and_unfitted_error():
    enc = mel_encoder()
    with pytest.raises(RuntimeError, match="fit"):
        enc.encode(tone(500)[None])
    enc.fit(tone(500)[None])
    again = encoder_from_state(enc.state())
    assert torch.equal(again.encode(tone(500)[None]), enc.encode(tone(500)[None]))
    # the caller's device and progress reach the pretrained kinds; the embedded ones take them too
    quiet = encoder_from_state(enc.state(), device="cpu", progress=False)
    assert torch.equal(quiet.encode(tone(500)[None]), enc.encode(tone(500)[None]))
    with pytest.raises(ValueError, match="unknown"):
        encoder_from_state({"kind": "mystery"})
