"""The tiny world of the guide-training tests (``test_guidance_train``, ``test_critic``,
``dist_worker``): frozen tiny bases, random pairs, a small discriminator, an interruption."""
from __future__ import annotations

import torch

from mmdisco.bases import TinyBase, TinyBaseConfig
from mmdisco.guidance.discriminator import Discriminator

AUDIO, VIDEO = (1, 8, 8), (4, 3, 8, 8)


def bases() -> tuple[TinyBase, TinyBase]:
    """Untrained frozen tiny bases (seeded): a 1-D audio UNet and a 2-D video UNet."""
    torch.manual_seed(0)
    a = TinyBase(TinyBaseConfig(arch="unet1d", channels=(8, 16)), AUDIO)
    v = TinyBase(TinyBaseConfig(channels=(16, 32), patch=2, norm_groups=8, attn_head_dim=8), VIDEO)
    return a.eval().requires_grad_(False), v.eval().requires_grad_(False)


def data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random audio and video latents, uniform in [-1, 1)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand((n, *AUDIO), generator=g) * 2 - 1,
            torch.rand((n, *VIDEO), generator=g) * 2 - 1)


def make_d(seed: int = 1) -> Discriminator:
    torch.manual_seed(seed)
    return Discriminator(audio_shape=AUDIO, video_shape=VIDEO, width=8, time_dim=16, head_hidden=16)


class Interrupt(Exception):
    """Raised by an ``interrupt_at`` logger, as a kill would stop the run."""


def interrupt_at(step_to_stop: int):
    """A ``log(step, stats)`` that raises ``Interrupt`` at ``step_to_stop``; the logger runs
    before that step's checkpoint is written, so the run resumes from the one before."""
    def log(step: int, stats: dict) -> None:
        if step == step_to_stop:
            raise Interrupt
    return log
