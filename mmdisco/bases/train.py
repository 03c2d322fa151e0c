"""Train a tiny base model on latents: AdamW, warmup + cosine decay, clipping, EMA, resumable.

Loss: MSE between the network output and its target (``TinyBase.target``: EDM-preconditioned
x_0, v, ε or x_0), at timesteps drawn uniformly, optionally capped by min-SNR-γ (Hang et al.
2023, https://arxiv.org/abs/2303.09556; ``loss_weight``). Every random draw (batch indices,
timesteps, noise, flips) comes from one ``torch.Generator`` seeded from ``seed`` whose state is
checkpointed, so a resumed run ends with exactly the weights of an uninterrupted one.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from pathlib import Path
from typing import Callable

import torch

from mmdisco import checkpoint
from mmdisco.bases.pretrained import prepare_pretrained_base
from mmdisco.bases.protocol import sigma, sqrt_alpha_bar
from mmdisco.bases.tiny import TinyBase, check_shape
from mmdisco.config import ConfigError, TinyBaseConfig, TrainBaseConfig, check_config, to_dict
from mmdisco.loop import Checkpoints, Schedule, Trainer, seeded, train_loop

CHECKPOINT_DIR = "checkpoint"


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


def loss_weight(cfg: TrainBaseConfig, base: TinyBase, t: torch.Tensor) -> torch.Tensor:
    """Per-sample min-SNR-γ weights on the MSE of the network's own target (ones when γ = 0).

    That MSE weighs x_0 errors by ``W`` (snr for ε, snr + 1 for v, 1 for x_0, snr + 1/σ_d² for
    edm); min-SNR caps it at γ: weight ``min(W, γ) / W`` (Hang et al.'s rule for ε and v).
    """
    w = base.x0_weight(t)
    if cfg.min_snr_gamma == 0:
        return torch.ones_like(w)
    return w.clamp(max=cfg.min_snr_gamma) / w


def diffusion_loss(base: TinyBase, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                   cfg: TrainBaseConfig, cond: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted MSE between the network output and its target at timesteps ``t``."""
    a = sqrt_alpha_bar(base.alphas_cumprod(), t, x0)
    s = sigma(base.alphas_cumprod(), t, x0)
    x_t = a * x0 + s * noise
    per_sample = (base(x_t, t, cond) - base.target(x0, noise, t)).square().flatten(1).mean(1)
    return (loss_weight(cfg, base, t).to(x0.dtype) * per_sample).mean()


def resolve_data_stats(cfg: TinyBaseConfig, latents: torch.Tensor) -> TinyBaseConfig:
    """Fill ``data_mean`` / ``sigma_data`` left null with the latents' mean and std around it."""
    mean = float(latents.mean()) if cfg.data_mean is None else cfg.data_mean
    std = float((latents - mean).std()) if cfg.sigma_data is None else cfg.sigma_data
    return dataclasses.replace(cfg, data_mean=round(mean, 6), sigma_data=round(max(std, 1e-3), 6))


# --------------------------------------------------------------------------- state
def _fingerprint(latents: torch.Tensor, cfg: TrainBaseConfig, seed: int,
                 cond: torch.Tensor | None = None, uncond: torch.Tensor | None = None) -> str:
    """What a checkpoint must have been made from to be resumed."""
    if cond is None:
        return checkpoint.fingerprint("base", latents, to_dict(cfg), seed)
    return checkpoint.fingerprint("base", latents, to_dict(cfg), seed, cond, uncond)


def _check_latents(latents: torch.Tensor, cfg: TrainBaseConfig) -> None:
    if latents.ndim not in (4, 5) or latents.shape[0] < 1:
        raise ValueError(f"latents must be audio [N, C, T, M] or video [N, F, C, H, W] with N ≥ 1, "
                         f"got {list(latents.shape)}")
    if not torch.isfinite(latents).all():
        raise ValueError("latents hold NaN or infinite values; encode the clips again")
    check_shape(cfg.model, tuple(latents.shape[1:]), "model")
    if cfg.hflip and latents.ndim != 5:
        raise ConfigError("hflip mirrors video frames; turn it off for audio latents")


def _prompt_embeddings(cond: torch.Tensor | None, uncond: torch.Tensor | None, n: int):
    """``(cond [N, E], uncond [1, E])`` as float rows on the CPU, ``uncond`` zeros when not
    given; both as given when ``cond`` is None (an unconditional base)."""
    if cond is None:
        return cond, uncond
    cond = cond.detach().float().cpu().reshape(len(cond), -1)
    if len(cond) != n:
        raise ValueError(f"{len(cond)} prompt embeddings for {n} latents; give one "
                         f"per latent (re-run the encode stage)")
    uncond = torch.zeros(1, cond.shape[1]) if uncond is None else \
        uncond.detach().float().cpu().reshape(1, -1)
    return cond, uncond


def _save_ema(base: TinyBase, ema: torch.nn.Module, out_dir: Path) -> TinyBase:
    """The final model, ``base`` with the EMA weights, saved to ``out_dir`` (on the CPU)."""
    final = TinyBase(base.cfg, base.latent_shape, unet=ema.cpu(), cond_dim=base.cond_dim,
                     uncond=base.uncond.cpu() if base.uncond is not None else None)
    final.save(out_dir)
    return final


# --------------------------------------------------------------------------- loop
def train_base(latents: torch.Tensor, cfg: TrainBaseConfig, out_dir: Path, *, seed: int,
               log: Callable[[int, dict], None] | None = None, cond: torch.Tensor | None = None,
               uncond: torch.Tensor | None = None, device: str | torch.device = "cpu") -> dict:
    """Train a ``TinyBase`` on ``latents``; save its EMA weights to ``out_dir``; return a summary.

    ``cond`` (``[N, E]``, one prompt embedding per latent) and ``uncond`` (``[1, E]``, the empty
    prompt's) train a conditional base: each row is given ``uncond`` instead of its prompt with
    probability ``cfg.cond_dropout``, so that one network learns ``ε_c`` and ``ε_u`` (CFG).
    ``device``: where the network trains; every random draw stays on the CPU generator, so a
    run's draws are the same on any device.

    A pretrained kind (``base.<m>.kind: audioldm | animatediff``) is not trained: its weights
    are checked against the latents and referenced from ``out_dir/base.json``.
    """
    out_dir = Path(out_dir)
    if getattr(cfg, "kind", "tiny") != "tiny":
        return prepare_pretrained_base(latents, cfg, out_dir)
    check_config(cfg, "base")
    latents = latents.detach().float().cpu().contiguous()
    _check_latents(latents, cfg)
    cond, uncond = _prompt_embeddings(cond, uncond, len(latents))
    started = time.perf_counter()
    # 1. model (seeded), EMA copy, optimiser, generator (every draw from it, on the CPU)
    gen = torch.Generator().manual_seed(seed)
    base = seeded(seed, lambda: TinyBase(resolve_data_stats(cfg.model, latents),
                                         tuple(latents.shape[1:]), uncond=uncond,
                                         cond_dim=0 if cond is None else cond.shape[1]))
    device = torch.device(device)
    base.to(device)
    ema = copy.deepcopy(base.unet).requires_grad_(False)
    params = [p for p in base.unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, cfg.adam_beta2),
                            weight_decay=cfg.weight_decay)
    ema_params = list(ema.parameters())

    # 2. the loop (resume by fingerprint, clipping, logging, checkpoints: mmdisco.loop)
    def step_fn(_unet):
        batch = _draw_batch(latents, cfg, base.num_train_timesteps, gen, cond, uncond)
        x0, t, noise, c = (None if x is None else x.to(device) for x in batch)
        loss = diffusion_loss(base, x0, t, noise, cfg, c)
        return loss, {"loss": loss.detach().item()}

    def update_ema(step: int) -> None:
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1.0 - ema_decay(cfg, step))

    result = train_loop(
        Trainer(name="base training", model=base.unet, opt=opt, lr_key="base.<m>.lr",
                lr_at=lambda s: learning_rate(cfg, s), step_fn=step_fn, after_update=update_ema),
        Schedule(cfg.steps, cfg.log_every, cfg.checkpoint_every, grad_clip=cfg.grad_clip),
        Checkpoints(out_dir / CHECKPOINT_DIR, _fingerprint(latents, cfg, seed, cond, uncond), gen,
                    extra={"ema": (ema.state_dict, ema.load_state_dict)}), log=log)
    # 3. final model = EMA weights
    final = _save_ema(base, ema, out_dir)
    return {"steps": cfg.steps, "resumed_from": result.resumed_from,
            "final_loss": result.last.get("loss"), "wall_s": time.perf_counter() - started,
            "num_parameters": final.num_parameters(), "modality": final.modality}


def _draw_batch(latents: torch.Tensor, cfg: TrainBaseConfig, num_timesteps: int,
                gen: torch.Generator, cond: torch.Tensor | None = None,
                uncond: torch.Tensor | None = None):
    """Batch of clean latents, timesteps, noise and (conditional) prompt embeddings with
    dropout, all drawn from ``gen`` (the unconditional draws come first, as without ``cond``)."""
    idx = torch.randint(latents.shape[0], (cfg.batch_size,), generator=gen)
    x0 = latents[idx]
    if cfg.hflip:
        flip = torch.rand(cfg.batch_size, generator=gen) < 0.5
        x0 = torch.where(flip.reshape(-1, 1, 1, 1, 1), x0.flip(-1), x0)
    t = torch.randint(num_timesteps, (cfg.batch_size,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    if cond is None:
        return x0, t, noise, None
    drop = torch.rand(cfg.batch_size, generator=gen) < cfg.cond_dropout
    return x0, t, noise, torch.where(drop[:, None], uncond, cond[idx])
