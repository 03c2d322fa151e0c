"""Mel power spectrogram → waveform, as a sum of sinusoids placed at each spectral peak.

Why not Griffin-Lim: the embedded log-mel has a hop (``samples / frames``) about as long as
its FFT window, so consecutive STFT frames barely overlap and Griffin-Lim cannot agree on a
phase; it renders clicks at the frame boundaries and no audible pitch. And the inverse mel
scale it needs (least squares) smears each tone over the whole width of its mel filters.

What this does instead, frame by frame:

1. **Peaks.** Every mel bin is assigned to the local maximum it climbs to (steepest ascent
   over neighbouring bins). Each peak's energy ``E = Σ_m y_m`` and frequency
   ``f = Σ_m y_m c_m / E`` are sums over its bins, with ``c_m`` the centre of mel filter m.
   This is exact, not a heuristic: triangular mel filters (peak 1, no area normalisation,
   torchaudio's default) form a partition of unity whose weighted centres reproduce linear
   functions, ``Σ_m w_m(f) c_m = f``. So ``Σ_m y_m`` is the peak's power and
   ``Σ_m y_m c_m`` its first spectral moment: ``f`` is the power-weighted mean frequency of
   the STFT bins under the peak, whatever the mel resolution.
2. **Oscillators.** A peak drives the oscillator of the mel bin nearest its frequency (on
   the mel scale), so a steady tone keeps one oscillator with a continuous phase from frame
   to frame. Its amplitude is the one whose Hann-windowed STFT has that power.
3. **Envelopes between frame centres.** A falling amplitude is interpolated geometrically
   (an exponential decay stays one); a rising one holds until the boundary between the two
   frames and rises there within ``RISE_SAMPLES``, so an onset stays in the frame that
   measured it and re-encoding the sound gives the same onset frame.

Power at or below the latent's floor (``ref_db − top_db``, where the encoder clipped) is
treated as silence: the floor means "this quiet or quieter", not a noise level to render.
"""
from __future__ import annotations

import numpy as np

RISE_SAMPLES = 32  # length of an onset's raised-cosine rise, samples (4 ms at 8 kHz, the world's attack)
_CHUNK = 256       # oscillators rendered at once (bounds memory: chunk × samples floats)


def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def filter_centres(n_mels: int, f_min: float, f_max: float) -> np.ndarray:
    """Peak frequency of each triangular (HTK) mel filter, Hz ``[M]``."""
    pts = _mel_to_hz(np.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), n_mels + 2))
    return pts[1:-1]


def peaks(power: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame, the energy and frequency of each spectral peak, laid out by mel bin.

    ``power`` ``[..., M]`` (non-negative). Returns ``energy`` and ``freq`` of the same shape:
    a peak's totals sit at the bin nearest its frequency on the mel scale; every other bin
    holds zero energy (and its own centre frequency).
    """
    shape, m = power.shape, power.shape[-1]
    y = power.reshape(-1, m)
    rows = np.arange(len(y))[:, None]
    pad = np.full((len(y), 1), -1.0)
    left, right = np.hstack([pad, y[:, :-1]]), np.hstack([y[:, 1:], pad])
    # steepest ascent: each bin points at the largest of itself and its two neighbours ...
    ptr = np.arange(m) + np.where(right > np.maximum(y, left), 1, np.where(left > y, -1, 0))
    for _ in range(m.bit_length()):  # ... and pointer jumping follows that to the maximum
        ptr = np.take_along_axis(ptr, ptr, axis=-1)
    total = np.zeros_like(y)
    moment = np.zeros_like(y)
    np.add.at(total, (rows, ptr), y)
    np.add.at(moment, (rows, ptr), y * centres)
    f_peak = moment / np.maximum(total, 1e-300)
    # each peak moves to the bin nearest its frequency (mel scale), so that a tone keeps its
    # oscillator when its loudest bin flips between two filters
    home = np.abs(_hz_to_mel(f_peak)[..., None] - _hz_to_mel(centres)).argmin(-1)
    home = np.where(total > 0, home, np.arange(m))
    energy = np.zeros_like(y)
    np.add.at(energy, (rows, home), total)
    freq = np.broadcast_to(centres, y.shape).copy()
    r, c = np.nonzero(total > 0)
    freq[r, home[r, c]] = f_peak[r, c]
    return energy.reshape(shape), freq.reshape(shape)


def _frame_grid(t_frames: int, hop: int, num_samples: int):
    """For each sample n: the frames ``t0, t1`` whose centres (``t · hop``) bracket it and its
    position ``u`` in [0, 1] between them (held before the first and after the last centre)."""
    n = np.arange(num_samples)
    pos = np.clip(n / hop, 0, t_frames - 1)
    t0 = np.minimum(np.floor(pos).astype(int), max(t_frames - 2, 0))
    return n, t0, np.minimum(t0 + 1, t_frames - 1), pos - t0


def _envelope(amp: np.ndarray, hop: int, num_samples: int) -> np.ndarray:
    """Per-sample amplitude ``[..., L]`` from per-frame amplitudes ``[..., T]`` (frame t centred
    at sample ``t · hop``): geometric between centres when falling, a short rise at the frame
    boundary when rising, held before the first and after the last centre."""
    n, t0, t1, u = _frame_grid(amp.shape[-1], hop, num_samples)
    a0, a1 = amp[..., t0], amp[..., t1]
    floor = 1e-4 * np.maximum(np.maximum(a0, a1), 1e-30)
    fall = np.exp((1 - u) * np.log(np.maximum(a0, floor)) + u * np.log(np.maximum(a1, floor)))
    fall = np.where(a1 > 0, fall, a0 * (1 - u))  # to silence: linear, reaches zero
    rise_start = (t0 + 0.5) * hop - RISE_SAMPLES / 2
    r = np.clip((n - rise_start) / RISE_SAMPLES, 0.0, 1.0)
    rise = a0 + (a1 - a0) * np.sin(0.5 * np.pi * r) ** 2
    return np.where(a1 > a0, rise, fall)


def _synthesise(amp: np.ndarray, freq: np.ndarray, *, hop: int, sample_rate: int,
                num_samples: int) -> np.ndarray:
    """Oscillator bank: per-frame amplitudes and frequencies ``[N, M, T]`` → waves ``[N, L]``.

    Only oscillators that sound somewhere in their clip are computed (a clip's tone and its
    harmonic use a handful of the M bins).
    """
    n_clips, _, t_frames = amp.shape
    clip, osc = np.nonzero(amp.max(-1) > 0)
    out = np.zeros((n_clips, num_samples))
    if len(clip) == 0:
        return out.astype(np.float32)
    _, t0, t1, u = _frame_grid(t_frames, hop, num_samples)
    for s in range(0, len(clip), _CHUNK):
        c, o = clip[s:s + _CHUNK], osc[s:s + _CHUNK]
        f = freq[c, o]                                           # [k, T]
        phase = 2 * np.pi * np.cumsum(f[:, t0] * (1 - u) + f[:, t1] * u, axis=-1) / sample_rate
        np.add.at(out, c, _envelope(amp[c, o], hop, num_samples) * np.sin(phase))
    return out.astype(np.float32)


def render(power: np.ndarray, *, centres: np.ndarray, hop: int, n_fft: int, sample_rate: int,
           num_samples: int, analyse=None, refine: int = 2) -> np.ndarray:
    """Mel power ``[N, T, M]`` (above the floor) → waveform float32 ``[N, L]``.

    With ``analyse`` (waves ``[N, L]`` → mel power ``[N, T, M]``, the encoder's own analysis),
    ``refine`` rounds of analysis by synthesis follow: each peak's amplitude is scaled by the
    square root of target over measured power, so that the sound re-encodes to the mel it
    came from (the envelope's shape between frame centres biases each frame's power by up to
    about a decibel otherwise).
    """
    energy, freq = peaks(np.asarray(power, dtype=np.float64), centres)
    # a sinusoid of amplitude A under a periodic Hann window of n_fft samples puts
    # A² · 3 n_fft² / 32 into the one-sided power spectrum (Parseval; Σ w² = 3 n_fft / 8)
    amp = np.swapaxes(np.sqrt(32.0 / 3.0) / n_fft * np.sqrt(energy), 1, 2)  # [N, M, T]
    freq = np.swapaxes(freq, 1, 2)
    args = dict(hop=hop, sample_rate=sample_rate, num_samples=num_samples)
    wave = _synthesise(amp, freq, **args)
    for _ in range(refine if analyse is not None else 0):
        got, _ = peaks(np.asarray(analyse(wave), dtype=np.float64), centres)
        got = np.swapaxes(got, 1, 2)
        target = np.swapaxes(energy, 1, 2)
        ratio = np.where((got > 0) & (target > 0), np.sqrt(target / np.maximum(got, 1e-300)), 1.0)
        amp = amp * np.clip(ratio, 0.5, 2.0)
        wave = _synthesise(amp, freq, **args)
    return wave
