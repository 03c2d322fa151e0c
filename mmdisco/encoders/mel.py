"""Audio encoder of the embedded default: a normalised log-mel spectrogram.

Encoding: power mel spectrogram (torchaudio), ``db = 10 log10(mel)``, clipped to
``[ref_db − top_db, ref_db]`` with ``ref_db`` the loudest value in the real clips (``fit``),
then mapped linearly to [-1, 1]. Decoding: the inverse map, then one sinusoid per spectral
peak (``mmdisco.encoders.sines``: exact peak frequencies from the mel filters' geometry), so
rendered tones keep their pitch (the metrics read the mel directly).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torchaudio
from einops import rearrange

from mmdisco.config import AudioEncoderConfig
from mmdisco.encoders import sines

_AMIN = 1e-10


class LogMelEncoder:
    """float32 audio ``[N, L]`` ↔ log-mel latent ``[N, 1, T, M]`` in [-1, 1]."""

    kind = "logmel"

    def __init__(self, cfg: AudioEncoderConfig, *, sample_rate: int, num_samples: int,
                 ref_db: float | None = None):
        self.cfg = cfg
        self.sample_rate = sample_rate
        self.num_samples = num_samples
        self.hop_length = num_samples // cfg.frames
        if self.hop_length < 1:
            raise ValueError(f"encoders.audio.frames ({cfg.frames}) exceeds the samples per clip "
                             f"({num_samples}); lower it")
        if cfg.n_fft // 2 + 1 < cfg.n_mels:
            raise ValueError(f"encoders.audio.n_mels ({cfg.n_mels}) needs n_fft ≥ {2 * cfg.n_mels}")
        self.ref_db = ref_db
        self._mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=cfg.n_fft, hop_length=self.hop_length,
            n_mels=cfg.n_mels, power=2.0, center=True)

    # ---- normalisation
    def fit(self, clips: torch.Tensor) -> None:
        """Set ``ref_db`` to the loudest mel value over the given real clips."""
        self.ref_db = float(self._db(clips).max())

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "ref_db": self.ref_db, "sample_rate": self.sample_rate,
                "num_samples": self.num_samples, "n_mels": self.cfg.n_mels,
                "n_fft": self.cfg.n_fft, "frames": self.cfg.frames, "top_db": self.cfg.top_db}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "LogMelEncoder":
        cfg = AudioEncoderConfig(n_mels=state["n_mels"], n_fft=state["n_fft"],
                                 frames=state["frames"], top_db=state["top_db"])
        return cls(cfg, sample_rate=state["sample_rate"], num_samples=state["num_samples"],
                   ref_db=state["ref_db"])

    # ---- transforms
    def _db(self, clips: torch.Tensor) -> torch.Tensor:
        if clips.ndim != 2:
            raise ValueError(f"audio clips must be float [N, L], got {tuple(clips.shape)}")
        mel = self._mel(clips.float())[..., : self.cfg.frames]  # [N, M, T]
        return 10.0 * torch.log10(mel.clamp_min(_AMIN))

    def _analyse(self, waves):
        """Mel power ``[N, T, M]`` of float waves, as ``encode`` sees them (numpy)."""
        mel = self._mel(torch.from_numpy(np.asarray(waves, dtype=np.float32)))
        return rearrange(mel[..., : self.cfg.frames], "n m t -> n t m").double().numpy()

    def encode(self, clips: torch.Tensor) -> torch.Tensor:
        if self.ref_db is None:
            raise RuntimeError("LogMelEncoder.encode needs fit() (or a stored ref_db) first")
        db = self._db(clips).clamp(self.ref_db - self.cfg.top_db, self.ref_db)
        x = (db - self.ref_db) / self.cfg.top_db * 2.0 + 1.0
        return rearrange(x, "n m t -> n 1 t m")

    def to_db(self, latents: torch.Tensor) -> torch.Tensor:
        """Latent ``[N, 1, T, M]`` → dB mel ``[N, T, M]`` (the inverse of the linear map)."""
        x = latents.float().clamp(-1, 1)[:, 0]
        return (x - 1.0) / 2.0 * self.cfg.top_db + self.ref_db

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latent → waveform ``[N, L]``: a sinusoid at every spectral peak (``sines``).

        Power at the floor (where ``encode`` clipped) is silence. The level is the encoded one,
        scaled down only where a clip would exceed ±0.99.
        """
        power = 10.0 ** (self.to_db(latents).double() / 10.0)  # [N, T, M]
        floor = 10.0 ** ((self.ref_db - self.cfg.top_db) / 10.0)
        above = (power - floor).clamp_min(0.0).numpy()
        wave = torch.from_numpy(sines.render(
            above, centres=sines.filter_centres(self.cfg.n_mels, 0.0, self.sample_rate / 2),
            hop=self.hop_length, n_fft=self.cfg.n_fft, sample_rate=self.sample_rate,
            num_samples=self.num_samples, analyse=self._analyse))
        peak = wave.abs().amax(dim=-1, keepdim=True)
        return (wave * (0.99 / peak.clamp_min(0.99))).float()

    def mel_frequencies(self) -> torch.Tensor:
        """Centre frequency (Hz) of each mel bin, for reading pitch off a spectrogram."""
        fb = self._mel.mel_scale.fb  # [n_freqs, n_mels]
        freqs = torch.linspace(0, self.sample_rate / 2, fb.shape[0])
        return (fb * freqs[:, None]).sum(0) / fb.sum(0).clamp_min(1e-12)

    @property
    def frame_rate(self) -> float:
        """Mel frames per second."""
        return self.sample_rate / self.hop_length
