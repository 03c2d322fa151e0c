"""Frozen encoders between clips and the latents the base models diffuse.

Every encoder offers ``fit`` (compute its normalisation from real clips), ``encode``,
``decode`` and ``state`` (a JSON-able dict stored beside the latents so that decoding later
uses exactly the normalisation of encoding). A new encoder is one class and one entry in
``AUDIO_ENCODERS`` or ``VIDEO_ENCODERS``.

Layouts: video clip uint8 ``[N, F, H, W, 3]`` ↔ video latent float ``[N, F, C, H, W]``;
audio clip float32 ``[N, L]`` ↔ audio latent float ``[N, C, T, M]``.
"""
from __future__ import annotations

from typing import Any, Protocol

import torch

from mmdisco.config import AudioEncoderConfig, VideoEncoderConfig
from mmdisco.encoders.mel import LogMelEncoder
from mmdisco.encoders.pixels import PixelEncoder
from mmdisco.encoders.auffusion import AuffusionEncoder
from mmdisco.encoders.pretrained import AudioLDMEncoder, SDVAEEncoder


class Encoder(Protocol):
    kind: str

    def fit(self, clips: torch.Tensor) -> None: ...
    def encode(self, clips: torch.Tensor) -> torch.Tensor: ...
    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...
    def state(self) -> dict[str, Any]: ...


AUDIO_ENCODERS = {"logmel": LogMelEncoder, "audioldm": AudioLDMEncoder,
                  "auffusion": AuffusionEncoder}   # audioldm: pretrained mode
VIDEO_ENCODERS = {"pixels": PixelEncoder, "sd_vae": SDVAEEncoder}         # sd_vae: pretrained mode


def make_audio_encoder(cfg: AudioEncoderConfig, *, sample_rate: int, num_samples: int) -> Encoder:
    if cfg.kind not in AUDIO_ENCODERS:
        raise ValueError(f"encoders.audio.kind '{cfg.kind}' is unknown; choose one of "
                         f"{', '.join(AUDIO_ENCODERS)}")
    return AUDIO_ENCODERS[cfg.kind](cfg, sample_rate=sample_rate, num_samples=num_samples)


def make_video_encoder(cfg: VideoEncoderConfig) -> Encoder:
    if cfg.kind not in VIDEO_ENCODERS:
        raise ValueError(f"encoders.video.kind '{cfg.kind}' is unknown; choose one of "
                         f"{', '.join(VIDEO_ENCODERS)}")
    return VIDEO_ENCODERS[cfg.kind](cfg)


def encoder_from_state(state: dict[str, Any], *, device: str = "auto",
                       progress: bool = True) -> Encoder:
    """Rebuild a fitted encoder from the ``state()`` stored beside the latents. A pretrained
    kind runs on ``device`` (the state records none) and shows a progress bar with
    ``progress``; the embedded kinds run on the CPU, silently."""
    kind = state.get("kind")
    table = {**AUDIO_ENCODERS, **VIDEO_ENCODERS}
    if kind not in table:
        raise ValueError(f"stored encoder kind {kind!r} is unknown; encode the clips again")
    if table[kind] in (AudioLDMEncoder, AuffusionEncoder, SDVAEEncoder):
        return table[kind].from_state(state, device=device, progress=progress)
    return table[kind].from_state(state)


__all__ = ["Encoder", "LogMelEncoder", "PixelEncoder", "AudioLDMEncoder", "AuffusionEncoder",
           "SDVAEEncoder", "make_audio_encoder",
           "make_video_encoder", "encoder_from_state"]
