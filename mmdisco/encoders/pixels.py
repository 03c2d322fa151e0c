"""Video encoder of the embedded default: pixels scaled to [-1, 1], frames kept apart."""
from __future__ import annotations

from typing import Any

import torch
from einops import rearrange

from mmdisco.config import VideoEncoderConfig


class PixelEncoder:
    """uint8 ``[N, F, H, W, 3]`` ↔ float ``[N, F, 3, H, W]`` in [-1, 1] (fixed normalisation)."""

    kind = "pixels"

    def __init__(self, cfg: VideoEncoderConfig | None = None):
        self.cfg = cfg or VideoEncoderConfig()

    def fit(self, clips: torch.Tensor) -> None:
        """Nothing to learn: the scale is fixed by the uint8 range."""

    def encode(self, clips: torch.Tensor) -> torch.Tensor:
        if clips.dtype != torch.uint8 or clips.ndim != 5 or clips.shape[-1] != 3:
            raise ValueError(f"video clips must be uint8 [N, F, H, W, 3], got "
                             f"{clips.dtype} {tuple(clips.shape)}")
        return rearrange(clips.float() / 127.5 - 1.0, "n f h w c -> n f c h w")

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        pixels = ((latents.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
        return rearrange(pixels, "n f c h w -> n f h w c")

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "PixelEncoder":
        return cls()
