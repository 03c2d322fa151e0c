"""Text-conditional discrimination and its classifier-free guidance (``docs/method.md``, "Sampling").

With text-conditional bases (AudioLDM, AnimateDiff) the residual that turns independent into
joint sampling is conditional too: ``log r_t(a, v | c)``. Three pieces:

- ``ConditionalDiscriminator``: the project's ``Discriminator`` with the condition ``c``
  (prompt embeddings, pooled to one vector per pair) projected by an MLP and ADDED to the
  timestep embedding, which modulates every layer (FiLM). ``cond=None`` (or a row dropped by
  ``drop``) uses a learned null embedding: the unconditional ``D``. The projection's last layer
  starts at zero and the null embedding at zero, so an untrained ``ConditionalDiscriminator`` is
  exactly the ``Discriminator`` it extends, whatever the condition. ``Discriminator`` itself is
  unchanged.
- ``CFGGuide``: the sampler's ``D`` (``forward(a, v, t)``), combining conditional and
  unconditional residuals with each base's own CFG weight, as ``docs/method.md`` asks:
      r^m = r_u^m + w_m (r_c^m − r_u^m),   r = −σ_t^m ∇_{x^m} logit
  i.e. the input gradient of ``logit_u + w_m (logit_c − logit_u)`` with respect to modality
  ``m``. With ``w_a ≠ w_v`` one scalar cannot have both gradients, so the guide feeds each input
  through a gradient scaler (value unchanged, gradient × s) and returns a scalar whose VALUE is
  ``logit_u + w̄ (logit_c − logit_u)`` (``w̄`` the mean weight) and whose input GRADIENTS are
  exactly the two combinations above. One forward over the 2N rows ``[cond; null]``.
- ``BoundCondition``: ``D`` with a fixed condition, seen as a plain ``D(a, v, t)``.

Training is ``mmdisco.guidance.train.train_discriminator`` with ``conditions=`` (the same loop
as the unconditional discriminator: data parallelism, resume, held-out accuracy, the DSM term),
the condition of each pair given with dropout so that the null branch is learned too.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from mmdisco.bases.protocol import BaseModel
from mmdisco.guidance.discriminator import Discriminator, _check_inputs


def pool_condition(cond: torch.Tensor) -> torch.Tensor:
    """One vector per pair: ``[N, E]`` as is, token states ``[N, L, E]`` averaged over tokens."""
    if cond.ndim == 2:
        return cond
    if cond.ndim == 3:
        return cond.mean(dim=1)
    raise ValueError(f"a condition must be [N, E] or [N, L, E]; got {list(cond.shape)}")


def joint_condition(cond_a: torch.Tensor | None, cond_v: torch.Tensor | None) -> torch.Tensor:
    """The discriminator's condition from the two bases' prompt embeddings: pooled, concatenated."""
    parts = [pool_condition(c).float() for c in (cond_a, cond_v) if c is not None]
    if not parts:
        raise ValueError("give at least one of cond_a, cond_v")
    return torch.cat(parts, dim=-1)


def _rows(cond: torch.Tensor, n: int) -> torch.Tensor:
    if cond.shape[0] == n:
        return cond
    if cond.shape[0] == 1:
        return cond.expand(n, *cond.shape[1:])
    raise ValueError(f"the condition has {cond.shape[0]} rows for a batch of {n}: give one row "
                     f"(shared) or one per pair (sample each prompt group with its own call, or "
                     f"batch_size=None)")


def _grad_scaled(x: torch.Tensor, s: float) -> torch.Tensor:
    """``x`` itself (bit for bit) whose gradient is multiplied by ``s``."""
    if s == 1.0:
        return x
    d = x.detach()
    return d + s * (x - d)


class ConditionalDiscriminator(Discriminator):
    """``Discriminator`` whose timestep embedding also carries a projected condition."""

    def __init__(self, *, cond_dim: int, **kwargs):
        super().__init__(**kwargs)
        if cond_dim < 1:
            raise ValueError(f"cond_dim must be >= 1, got {cond_dim}")
        time_dim = self.config["time_dim"]
        self.cond_dim = int(cond_dim)
        self.config = {**self.config, "cond_dim": self.cond_dim}
        self.cond_proj = nn.Sequential(nn.Linear(self.cond_dim, time_dim), nn.SiLU(),
                                       nn.Linear(time_dim, time_dim))
        nn.init.zeros_(self.cond_proj[-1].weight)   # starts as the unconditional Discriminator
        nn.init.zeros_(self.cond_proj[-1].bias)
        self.null_cond = nn.Parameter(torch.zeros(self.cond_dim))

    def cond_embedding(self, cond: torch.Tensor | None, n: int,
                       drop: torch.Tensor | None = None) -> torch.Tensor:
        """``[N, time_dim]``: the projected condition (the null embedding where absent/dropped)."""
        dtype = self.cond_proj[0].weight.dtype
        null = self.null_cond.to(dtype).expand(n, -1)
        if cond is None:
            c = null
        else:
            c = _rows(pool_condition(cond).to(null.device, dtype), n)
            if c.shape[-1] != self.cond_dim:
                raise ValueError(f"the condition has {c.shape[-1]} features; this discriminator "
                                 f"was built with cond_dim={self.cond_dim}")
            if drop is not None:
                c = torch.where(drop.to(c.device)[:, None], null, c)
        return self.cond_proj(c)

    def forward(self, a_t: torch.Tensor, v_t: torch.Tensor, t: torch.Tensor,
                cond: torch.Tensor | None = None, *, drop: torch.Tensor | None = None,
                return_parts: bool = False):
        """``logit D(a_t, v_t, t | cond) [N]`` (the parent's fusion, conditioned ``temb``)."""
        _check_inputs(a_t, v_t, t, self.audio_shape, self.video_shape)
        temb = self.time(t) + self.cond_embedding(cond, a_t.shape[0], drop)
        return self.fuse(a_t, v_t, temb, return_parts=return_parts)


class BoundCondition(nn.Module):
    """``D(a, v, t, cond=cond, drop=drop)`` as a plain ``forward(a, v, t)`` module (one row or
    one per pair; ``drop``: rows given the null embedding instead, as in training)."""

    def __init__(self, D: nn.Module, cond: torch.Tensor | None, drop: torch.Tensor | None = None):
        super().__init__()
        self.D, self.cond, self.drop = D, cond, drop
        self.config = {**getattr(D, "config", {}), "bound_condition": cond is not None}

    def forward(self, a_t: torch.Tensor, v_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cond = None if self.cond is None else _rows(self.cond, a_t.shape[0])
        extra = {} if self.drop is None else {"drop": self.drop}
        return self.D(a_t, v_t, t, cond=cond, **extra)


class CFGGuide(nn.Module):
    """The sampler's ``D``: conditional and unconditional residuals combined with CFG weights.

    ``weights = (w_a, w_v)``, normally the bases' own ``guidance_scale`` (``from_bases``).
    """

    def __init__(self, D: ConditionalDiscriminator, cond: torch.Tensor,
                 weights: tuple[float, float] = (1.0, 1.0)):
        super().__init__()
        if not all(math.isfinite(w) for w in weights):
            raise ValueError(f"CFG weights must be finite, got {weights}")
        self.D, self.cond = D, cond
        self.w_a, self.w_v = float(weights[0]), float(weights[1])

    @classmethod
    def from_bases(cls, D: ConditionalDiscriminator, cond: torch.Tensor, base_a: BaseModel,
                   base_v: BaseModel) -> "CFGGuide":
        return cls(D, cond, (getattr(base_a, "guidance_scale", 1.0),
                             getattr(base_v, "guidance_scale", 1.0)))

    def forward(self, a_t: torch.Tensor, v_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n = a_t.shape[0]
        cond = _rows(self.cond, n)
        if self.w_a == self.w_v == 1.0:
            return self.D(a_t, v_t, t, cond=cond)
        if self.w_a == self.w_v == 0.0:
            return self.D(a_t, v_t, t, cond=None)
        a = torch.cat([_grad_scaled(a_t, self.w_a), _grad_scaled(a_t, 1.0 - self.w_a)])
        v = torch.cat([_grad_scaled(v_t, self.w_v), _grad_scaled(v_t, 1.0 - self.w_v)])
        drop = torch.cat([torch.zeros(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)])
        logit_c, logit_u = self.D(a, v, torch.cat([t, t]), cond=torch.cat([cond, cond]),
                                  drop=drop).chunk(2)
        carrier = logit_c + logit_u        # ∇_a = w_a ∇_a c + (1 − w_a) ∇_a u, likewise for v
        w_mean = 0.5 * (self.w_a + self.w_v)
        value = logit_u + w_mean * (logit_c - logit_u)
        return value.detach() + (carrier - carrier.detach())
