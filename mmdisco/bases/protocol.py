"""The one interface every single-modal base model offers to the rest of the pipeline.

Notation (see README, "The method"): a base model for modality m predicts the noise
``ε_m(x_t, t[, c])`` of the forward process ``x_t = sqrt(ᾱ_t) x_0 + σ_t ε`` with
``σ_t = sqrt(1 − ᾱ_t)`` taken from its own scheduler's ``alphas_cumprod``. Whatever the
network predicts inside (ε, v or x_0), ``eps`` returns ε.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

CONFIG_FILE = "base.json"      # what a saved base folder holds besides its weights
SCHEDULERS = {"ddim": "DDIMScheduler", "ddpm": "DDPMScheduler"}   # sampler kind -> diffusers class


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


def scheduler_class(kind: str):
    """The diffusers scheduler class of a sampler kind ("ddim" or "ddpm")."""
    if kind not in SCHEDULERS:
        raise ValueError(f"unknown scheduler kind {kind!r}; choose one of {', '.join(SCHEDULERS)}")
    import diffusers   # here, not at import: the protocol itself needs no diffusers

    return getattr(diffusers, SCHEDULERS[kind])


def check_input(base: BaseModel, x_t: torch.Tensor, t: torch.Tensor) -> None:
    """Refuse latents of another shape than the base's, or timesteps that are not ``[N]``."""
    if tuple(x_t.shape[1:]) != tuple(base.latent_shape):
        raise ValueError(f"{base.modality} base expects latents of shape [N, "
                         f"{', '.join(map(str, base.latent_shape))}], got {list(x_t.shape)}")
    if t.ndim != 1 or t.shape[0] != x_t.shape[0]:
        raise ValueError(f"t must have shape [N] = [{x_t.shape[0]}], got {list(t.shape)}")


def read_meta(path: str | Path) -> dict:
    """The ``base.json`` of a saved base model folder."""
    f = Path(path) / CONFIG_FILE
    if not f.is_file():
        raise FileNotFoundError(f"{f} is missing: '{path}' is not a saved base model folder; "
                                f"train the base first (or prepare the pretrained one)")
    return json.loads(f.read_text())


def check_pair(audio: BaseModel, video: BaseModel) -> None:
    """Refuse a pair of bases that cannot share one timestep index."""
    if audio.num_train_timesteps != video.num_train_timesteps:
        raise ValueError(
            f"the audio base has {audio.num_train_timesteps} training timesteps and the video "
            f"base {video.num_train_timesteps}; joint sampling indexes both with one t, so both "
            f"schedulers must use the same num_train_timesteps")
