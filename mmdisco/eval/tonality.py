"""How tonal a rendered sound is: the share of its energy that sits at the world's pitches.

Measured on waveforms (decoded media files), not on latents, so that a broken renderer shows
up even when every latent-level metric looks perfect. For each clip: the power spectrum of
the whole clip (Hann window, one FFT), restricted to frequencies above ``min_hz`` (below it
lie hum and DC, which the world never makes); the figure is the fraction of that power
within ``±tol`` (relative) of a class pitch or of its second harmonic. Noise scores about the
fraction of the band those ``±tol`` windows cover; what real files and samples score is in the
README ("Listening to the samples").
"""
from __future__ import annotations

import av
import numpy as np


def pitch_energy_fraction(waves: np.ndarray, sample_rate: int, pitches, *, tol: float = 0.04,
                          min_hz: float = 200.0) -> np.ndarray:
    """Per clip of ``waves`` ``[N, L]``: power within ``±tol`` of a pitch or 2× pitch, over all
    power above ``min_hz``. A silent clip gives NaN."""
    waves = np.atleast_2d(np.asarray(waves, dtype=np.float64))
    n = waves.shape[-1]
    spec = np.abs(np.fft.rfft(waves * np.hanning(n), axis=-1)) ** 2
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    targets = np.concatenate([np.asarray(pitches, float), 2 * np.asarray(pitches, float)])
    near = (np.abs(freqs[:, None] - targets) <= tol * targets).any(-1)
    band = freqs >= min_hz
    total = spec[:, band].sum(-1)
    on = spec[:, band & near].sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, on / total, np.nan)


def read_sound(path) -> tuple[np.ndarray, int]:
    """A media file's first audio stream as mono float ``[L]`` at its own rate (PyAV): what a
    player would play."""
    to_mono = av.AudioResampler(format="fltp", layout="mono")
    with av.open(str(path)) as src:
        if not src.streams.audio:
            raise ValueError(f"{path}: no audio stream")
        stream = src.streams.audio[0]
        rate = stream.codec_context.sample_rate
        chunks = [f.to_ndarray()[0] for frame in src.decode(stream)
                  for f in to_mono.resample(frame)]
    wave = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return wave, rate


def media_pitch_fraction(paths, pitches, **kw) -> np.ndarray:
    """``pitch_energy_fraction`` of each media file's sound, decoded from the file."""
    out = []
    for p in paths:
        wave, rate = read_sound(p)
        out.append(pitch_energy_fraction(wave[None], rate, pitches, **kw)[0])
    return np.asarray(out, dtype=np.float64)
