"""Train a tiny base model on latents: AdamW, warmup + cosine decay, clipping, EMA, resumable.

Loss (Salimans & Ho 2022 v-prediction, Hang et al. 2023 min-SNR-γ weighting,
https://arxiv.org/abs/2303.09556): with ``snr_t = ᾱ_t / σ_t²``, target ``v = sqrt(ᾱ_t) ε − σ_t x_0``
(or ε), weight ``min(snr_t, γ) / (snr_t + 1)`` for v (``min(snr_t, γ) / snr_t`` for ε); γ = 0
turns the weighting off. Every random draw (batch indices, timesteps, noise, flips) comes from
one ``torch.Generator`` seeded from ``seed`` whose state is checkpointed, so a resumed run
ends with exactly the weights of an uninterrupted one.
"""
from __future__ import annotations

import copy
import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from mmdisco.bases.tiny import TinyBase, TinyBaseConfig, check_config, check_shape
from mmdisco.config import ConfigError, _opt, to_dict
from mmdisco.io import atomic_path, read_json

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.pt"
META_FILE = "meta.json"


@dataclass(frozen=True)
class TrainBaseConfig:
    """One base model's architecture and training schedule."""

    model: TinyBaseConfig = _opt(TinyBaseConfig())
    steps: int = _opt(1500, lo=1, doc="optimiser steps")
    batch_size: int = _opt(64, lo=1)
    lr: float = _opt(2e-3, lo=0.0, lo_open=True, doc="peak learning rate")
    warmup_steps: int = _opt(100, lo=0, doc="linear warmup from 0 to lr")
    min_lr_ratio: float = _opt(0.05, lo=0.0, hi=1.0, doc="cosine decay ends at lr × this")
    weight_decay: float = _opt(0.0, lo=0.0)
    adam_beta2: float = _opt(0.99, lo=0.0, hi=0.9999)
    grad_clip: float = _opt(1.0, lo=0.0, doc="max global gradient norm; 0 = off")
    ema_decay: float = _opt(0.995, lo=0.0, hi=1.0, doc="EMA decay cap; (1+n)/(10+n) early on")
    min_snr_gamma: float = _opt(5.0, lo=0.0, doc="min-SNR-γ loss weighting; 0 = off")
    hflip: bool = _opt(False, doc="mirror video latents left-right at random (video only)")
    checkpoint_every: int = _opt(500, lo=1, doc="steps between resumable checkpoints")
    log_every: int = _opt(50, lo=1, doc="steps between loss logs")

    def validate(self, key: str) -> None:
        if self.warmup_steps >= self.steps:
            raise ConfigError(f"{key}.warmup_steps ({self.warmup_steps}) must be < {key}.steps "
                              f"({self.steps})")


def learning_rate(cfg: TrainBaseConfig, step: int) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``lr × min_lr_ratio`` at ``steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def ema_decay(cfg: TrainBaseConfig, step: int) -> float:
    """EMA decay at ``step``: ``(1+n)/(10+n)`` capped at ``cfg.ema_decay``."""
    return min(cfg.ema_decay, (1.0 + step) / (10.0 + step))


def loss_weight(cfg: TrainBaseConfig, alpha_bar: torch.Tensor) -> torch.Tensor:
    """Per-sample min-SNR-γ weights for gathered ``ᾱ_t`` [B] (ones when γ = 0)."""
    if cfg.min_snr_gamma == 0:
        return torch.ones_like(alpha_bar)
    snr = alpha_bar / (1.0 - alpha_bar)
    clipped = snr.clamp(max=cfg.min_snr_gamma)
    return clipped / (snr + 1.0) if cfg.model.prediction_type == "v_prediction" else clipped / snr


def diffusion_loss(base: TinyBase, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                   cfg: TrainBaseConfig) -> torch.Tensor:
    """Weighted MSE between the network output and its target (v or ε) at timesteps ``t``."""
    ab = base.alphas_cumprod()[t]
    a = ab.sqrt().to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))
    s = (1.0 - ab).sqrt().to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))
    x_t = a * x0 + s * noise
    target = a * noise - s * x0 if cfg.model.prediction_type == "v_prediction" else noise
    per_sample = (base(x_t, t) - target).square().flatten(1).mean(1)
    return (loss_weight(cfg, ab).to(x0.dtype) * per_sample).mean()


# --------------------------------------------------------------------------- state
def _fingerprint(latents: torch.Tensor, cfg: TrainBaseConfig, seed: int) -> str:
    """What a checkpoint must have been made from to be resumed."""
    h = hashlib.sha256()
    h.update(repr((to_dict(cfg), seed, tuple(latents.shape), str(latents.dtype))).encode())
    h.update(latents.contiguous().numpy().tobytes())
    return h.hexdigest()


def _save_checkpoint(folder: Path, step: int, base: TinyBase, ema: torch.nn.Module,
                     opt: torch.optim.Optimizer, gen: torch.Generator, fingerprint: str) -> None:
    """Write model, EMA, optimiser, step and generator state as one atomic folder."""
    import json
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        torch.save({"step": step, "model": base.unet.state_dict(), "ema": ema.state_dict(),
                    "optimizer": opt.state_dict(), "generator": gen.get_state()}, tmp / STATE_FILE)
        (tmp / META_FILE).write_text(json.dumps({"step": step, "fingerprint": fingerprint}) + "\n")


def _load_checkpoint(folder: Path, base: TinyBase, ema: torch.nn.Module,
                     opt: torch.optim.Optimizer, gen: torch.Generator, fingerprint: str) -> int:
    """Restore a checkpoint made from the same data, config and seed; return its step."""
    meta = read_json(folder / META_FILE)
    if meta.get("fingerprint") != fingerprint:
        raise ValueError(f"the checkpoint in {folder} was made from other latents, config or "
                         f"seed; delete that folder to train from scratch")
    state = torch.load(folder / STATE_FILE, weights_only=True)
    base.unet.load_state_dict(state["model"])
    ema.load_state_dict(state["ema"])
    opt.load_state_dict(state["optimizer"])
    gen.set_state(state["generator"])
    return int(state["step"])


def _check_latents(latents: torch.Tensor, cfg: TrainBaseConfig) -> None:
    if latents.ndim not in (4, 5) or latents.shape[0] < 1:
        raise ValueError(f"latents must be audio [N, C, T, M] or video [N, F, C, H, W] with N ≥ 1, "
                         f"got {list(latents.shape)}")
    if not torch.isfinite(latents).all():
        raise ValueError("latents hold NaN or infinite values; re-run the encode stage")
    check_shape(cfg.model, tuple(latents.shape[1:]), "model")
    if cfg.hflip and latents.ndim != 5:
        raise ConfigError("hflip mirrors video frames; turn it off for audio latents")


# --------------------------------------------------------------------------- loop
def train_base(latents: torch.Tensor, cfg: TrainBaseConfig, out_dir: Path, *, seed: int,
               log: Callable[[int, dict], None] | None = None) -> dict:
    """Train a ``TinyBase`` on ``latents``; save its EMA weights to ``out_dir``; return a summary."""
    out_dir = Path(out_dir)
    check_config(cfg, "base")
    latents = latents.detach().float().cpu().contiguous()
    _check_latents(latents, cfg)
    started = time.perf_counter()
    # 1. model, EMA copy, optimiser, generator
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # seeded initialisation, global RNG left untouched
        torch.manual_seed(seed)
        base = TinyBase(cfg.model, tuple(latents.shape[1:]))
    ema = copy.deepcopy(base.unet).requires_grad_(False)
    params = [p for p in base.unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, cfg.adam_beta2),
                            weight_decay=cfg.weight_decay)
    # 2. resume
    ckpt = out_dir / CHECKPOINT_DIR
    fingerprint = _fingerprint(latents, cfg, seed)
    step = _load_checkpoint(ckpt, base, ema, opt, gen, fingerprint) if (ckpt / META_FILE).is_file() else 0
    resumed_from = step
    # 3. loop
    base.train()
    ema_params = list(ema.parameters())
    window: list[float] = []
    last = {}
    while step < cfg.steps:
        for group in opt.param_groups:
            group["lr"] = learning_rate(cfg, step)
        x0, t, noise = _draw_batch(latents, cfg, base.num_train_timesteps, gen)
        loss = diffusion_loss(base, x0, t, noise, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1.0 - ema_decay(cfg, step))
        step += 1
        window.append(loss.detach().item())
        if not math.isfinite(window[-1]):
            raise FloatingPointError(f"training loss became {window[-1]} at step {step}; lower lr "
                                     f"(now {cfg.lr}) or raise grad_clip")
        if step % cfg.log_every == 0 or step == cfg.steps:
            last = {"loss": sum(window) / len(window), "lr": opt.param_groups[0]["lr"],
                    "grad_norm": float(grad_norm)}
            window = []
            if log is not None:
                log(step, last)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            _save_checkpoint(ckpt, step, base, ema, opt, gen, fingerprint)
    # 4. final model = EMA weights
    final = TinyBase(cfg.model, base.latent_shape, unet=ema)
    final.save(out_dir)
    return {"steps": cfg.steps, "resumed_from": resumed_from, "final_loss": last.get("loss"),
            "wall_s": time.perf_counter() - started, "num_parameters": final.num_parameters(),
            "modality": final.modality}


def _draw_batch(latents: torch.Tensor, cfg: TrainBaseConfig, num_timesteps: int,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch of clean latents, timesteps and noise, all drawn from ``gen``."""
    idx = torch.randint(latents.shape[0], (cfg.batch_size,), generator=gen)
    x0 = latents[idx]
    if cfg.hflip:
        flip = torch.rand(cfg.batch_size, generator=gen) < 0.5
        x0 = torch.where(flip.reshape(-1, 1, 1, 1, 1), x0.flip(-1), x0)
    t = torch.randint(num_timesteps, (cfg.batch_size,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    return x0, t, noise
