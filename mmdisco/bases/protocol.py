"""The one interface every single-modal base model offers to the rest of the pipeline.

Notation (see README, "The method"): a base model for modality m predicts the noise
``ε_m(x_t, t[, c])`` of the forward process ``x_t = sqrt(ᾱ_t) x_0 + σ_t ε`` with
``σ_t = sqrt(1 − ᾱ_t)`` taken from its own scheduler's ``alphas_cumprod``. Whatever the
network predicts inside (ε, v or x_0), ``eps`` returns ε.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class BaseModel(Protocol):
    """A frozen single-modal diffusion model seen through ε-prediction."""

    modality: str
    """"audio" or "video"."""

    latent_shape: tuple[int, ...]
    """Shape of one latent, without the batch axis (audio ``(C, T, M)``, video ``(F, C, H, W)``)."""

    num_train_timesteps: int

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """ε prediction for a batch ``x_t`` at integer timesteps ``t`` (shape ``[N]``)."""
        ...

    def alphas_cumprod(self) -> torch.Tensor:
        """``ᾱ_t`` for t = 0 … num_train_timesteps − 1 (float64 CPU tensor)."""
        ...

    def make_scheduler(self, kind: str):
        """A fresh diffusers scheduler ("ddim" or "ddpm") with this model's noise schedule."""
        ...


def sigma(alphas_cumprod: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``σ_t = sqrt(1 − ᾱ_t)`` gathered per sample and shaped to broadcast against ``like``."""
    s = (1.0 - alphas_cumprod.to(like.device)[t.long()]).sqrt().to(like.dtype)
    return s.reshape(-1, *([1] * (like.ndim - 1)))


def sqrt_alpha_bar(alphas_cumprod: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``sqrt(ᾱ_t)`` gathered per sample and shaped to broadcast against ``like``."""
    s = alphas_cumprod.to(like.device)[t.long()].sqrt().to(like.dtype)
    return s.reshape(-1, *([1] * (like.ndim - 1)))


def check_pair(audio: BaseModel, video: BaseModel) -> None:
    """Refuse a pair of bases that cannot share one timestep index."""
    if audio.num_train_timesteps != video.num_train_timesteps:
        raise ValueError(
            f"the audio base has {audio.num_train_timesteps} training timesteps and the video "
            f"base {video.num_train_timesteps}; joint sampling indexes both with one t, so both "
            f"schedulers must use the same num_train_timesteps")
