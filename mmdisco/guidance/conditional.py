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
- ``BoundCondition`` (``D`` with a fixed condition, e.g. for ``train_discriminator``) and
  ``train_conditional_discriminator``: the method's BCE (real pairs → 1, fake pairs → 0) with a
  condition per pair and condition dropout (rows trained as unconditional with probability
  ``cond_dropout``, so that the null branch the guide needs is learned as well). It
  checkpoints and resumes like ``train_discriminator``; it is single-process and has no DSM
  term (``train.denoise_weight`` must be 0).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mmdisco import checkpoint
from mmdisco.bases.protocol import BaseModel, check_pair
from mmdisco.config import TrainConfig, to_dict
from mmdisco.guidance.discriminator import Discriminator, _check_inputs
from mmdisco.guidance.loss import forward_noise
from mmdisco.guidance.train import derangement


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
        a_steps, a_pooled = self.encode_audio(a_t, temb)
        v_steps, v_pooled = self.encode_video(v_t, temb)
        temporal = self.temporal_head(torch.cat([a_steps, v_steps], dim=-1), temb).mean(dim=-1)
        semantic = self.semantic_head(torch.cat([a_pooled, v_pooled, a_pooled * v_pooled], dim=-1), temb)
        logit = temporal + semantic
        if return_parts:
            return logit, {"temporal": temporal, "semantic": semantic}
        return logit


class BoundCondition(nn.Module):
    """``D(a, v, t, cond=cond)`` as a plain ``forward(a, v, t)`` module (one row or one per pair)."""

    def __init__(self, D: nn.Module, cond: torch.Tensor | None):
        super().__init__()
        self.D, self.cond = D, cond
        self.config = {**getattr(D, "config", {}), "bound_condition": cond is not None}

    def forward(self, a_t: torch.Tensor, v_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cond = None if self.cond is None else _rows(self.cond, a_t.shape[0])
        return self.D(a_t, v_t, t, cond=cond)


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


# --------------------------------------------------------------------------- training
def conditional_loss(D: ConditionalDiscriminator, alphas_a: torch.Tensor, alphas_v: torch.Tensor,
                     steps: int, real: tuple[torch.Tensor, ...], fake: tuple[torch.Tensor, ...],
                     generator: torch.Generator, cond_dropout: float) -> tuple[torch.Tensor, dict]:
    """BCE of real ``(a0, v0, cond)`` → 1 and fake ``(a0, v0, cond)`` → 0 at noisy timesteps.

    Random draws, in order: t real, t fake, noise real a, real v, fake a, fake v, drop real,
    drop fake.
    """
    (ra, rv, rc), (fa, fv, fc) = real, fake
    t_r = torch.randint(0, steps, (len(ra),), generator=generator)
    t_f = torch.randint(0, steps, (len(fa),), generator=generator)
    noise = [torch.randn(x.shape, generator=generator, dtype=x.dtype) for x in (ra, rv, fa, fv)]
    drop_r = torch.rand(len(ra), generator=generator) < cond_dropout
    drop_f = torch.rand(len(fa), generator=generator) < cond_dropout
    logit_r = D(forward_noise(ra, t_r, noise[0], alphas_a), forward_noise(rv, t_r, noise[1], alphas_v),
                t_r, cond=rc, drop=drop_r)
    logit_f = D(forward_noise(fa, t_f, noise[2], alphas_a), forward_noise(fv, t_f, noise[3], alphas_v),
                t_f, cond=fc, drop=drop_f)
    loss = (F.binary_cross_entropy_with_logits(logit_r, torch.ones_like(logit_r))
            + F.binary_cross_entropy_with_logits(logit_f, torch.zeros_like(logit_f)))
    stats = {"loss": float(loss.detach()), "acc_real": float((logit_r.detach() > 0).float().mean()),
             "acc_fake": float((logit_f.detach() < 0).float().mean())}
    return loss, stats


def train_conditional_discriminator(D: ConditionalDiscriminator, base_a: BaseModel, base_v: BaseModel, *,
                                    real_a: torch.Tensor, real_v: torch.Tensor, real_cond: torch.Tensor,
                                    fake_a: torch.Tensor, fake_v: torch.Tensor, fake_cond: torch.Tensor,
                                    cfg: TrainConfig, checkpoint_dir: Path, seed: int,
                                    cond_dropout: float = 0.1,
                                    log: Callable[[int, dict], None] | None = None) -> dict:
    """Train ``D`` in place on conditioned pairs; negatives per ``cfg.negatives``.

    ``generated``: fake pairs with the prompt they were generated for (``fake_cond``);
    ``shuffled``: real audio with another clip's real video, conditioned on the audio's prompt;
    ``both``: half of each. Same cosine schedule, clipping and checkpointing as
    ``train_discriminator`` (no held-out split).
    """
    check_pair(base_a, base_v)
    if cfg.denoise_weight != 0:
        raise ValueError("train_conditional_discriminator has no denoising score term; set "
                         "train.denoise_weight to 0")
    if not 0.0 <= cond_dropout < 1.0:
        raise ValueError(f"cond_dropout must be in [0, 1), got {cond_dropout}")
    if not (len(real_a) == len(real_v) == len(real_cond)) or not (len(fake_a) == len(fake_v) == len(fake_cond)):
        raise ValueError("real (audio, video, cond) and fake (audio, video, cond) must have matching counts")
    started = time.perf_counter()
    alphas_a, alphas_v = base_a.alphas_cumprod(), base_v.alphas_cumprod()
    opt = torch.optim.AdamW(D.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    fp = checkpoint.fingerprint(real_a, real_v, real_cond, fake_a, fake_v, fake_cond, to_dict(cfg),
                                seed, cond_dropout, getattr(D, "config", None))
    state = checkpoint.load(checkpoint_dir, fp)
    step = 0
    if state is not None:
        D.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        step = int(state["step"])
    resumed_from, stats = step, {}
    D.train()
    n = cfg.batch_size
    while step < cfg.steps:
        lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(len(real_a), (n,), generator=gen)
        real = (real_a[idx], real_v[idx], real_cond[idx])
        n_gen = {"generated": n, "shuffled": 0, "both": n - n // 2}[cfg.negatives]
        parts = []
        if n_gen:
            j = torch.randint(len(fake_a), (n_gen,), generator=gen)
            parts.append((fake_a[j], fake_v[j], fake_cond[j]))
        if n - n_gen:
            k = torch.randperm(len(real_a), generator=gen)[: n - n_gen]
            perm = derangement(len(k), gen)
            parts.append((real_a[k], real_v[k[perm]], real_cond[k]))
        fake = tuple(torch.cat([p[i] for p in parts]) for i in range(3))
        loss, stats = conditional_loss(D, alphas_a, alphas_v, base_a.num_train_timesteps, real, fake,
                                       gen, cond_dropout)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            stats["grad_norm"] = float(nn.utils.clip_grad_norm_(D.parameters(), cfg.grad_clip))
        opt.step()
        step += 1
        if not math.isfinite(stats["loss"]):
            raise FloatingPointError(f"discriminator loss became {stats['loss']} at step {step}; "
                                     f"lower train.lr (now {cfg.lr})")
        if log is not None and (step % cfg.log_every == 0 or step == cfg.steps):
            log(step, {"lr": lr, **stats})
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            checkpoint.save(checkpoint_dir, step, {"model": D.state_dict(), "optimizer": opt.state_dict(),
                                                   "generator": gen.get_state()}, fp)
    D.eval()
    return {"steps": cfg.steps, "resumed_from": resumed_from, "wall_s": time.perf_counter() - started,
            "num_parameters": sum(p.numel() for p in D.parameters()), **stats}
