"""Training loop of the discriminator: real pairs against negatives, base models frozen.

Negatives (``train.negatives``): ``generated`` — pairs from the fake bank, each modality made
independently by its base model (the paper's choice: teaches alignment and corrects the bases);
``shuffled`` — real audio with another real clip's video (teaches alignment only); ``both`` —
half of each. Every random draw comes from one generator seeded by the caller, and the
generator state is checkpointed, so a resumed run ends with the same weights as an
uninterrupted one.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from mmdisco import checkpoint
from mmdisco.bases.protocol import BaseModel, check_pair
from mmdisco.config import TrainConfig, to_dict
from mmdisco.guidance.loss import DiscriminatorLoss, forward_noise

EVAL_TIMESTEPS = (100, 300, 500, 700, 900)


def derangement(n: int, generator: torch.Generator) -> torch.Tensor:
    """A random permutation with no fixed point (a cyclic shift of a random order)."""
    if n < 2:
        raise ValueError("shuffled negatives need at least 2 pairs per batch")
    order = torch.randperm(n, generator=generator)
    out = torch.empty_like(order)
    out[order] = order.roll(1)
    return out


def negative_batch(cfg: TrainConfig, real_a: torch.Tensor, real_v: torch.Tensor,
                   fake_a: torch.Tensor, fake_v: torch.Tensor, n: int,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` negative pairs of the configured kind."""
    def generated(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(fake_a), (k,), generator=generator)
        return fake_a[idx], fake_v[idx]

    def shuffled(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        # distinct clips, so that no audio can meet its own video through a repeated index
        idx = torch.randperm(len(real_a), generator=generator)[:k]
        perm = derangement(k, generator)
        return real_a[idx], real_v[idx[perm]]

    if cfg.negatives == "generated":
        return generated(n)
    if cfg.negatives == "shuffled":
        return shuffled(n)
    (ga, gv), (sa, sv) = generated(n - n // 2), shuffled(n // 2)
    return torch.cat([ga, sa]), torch.cat([gv, sv])


@torch.no_grad()
def heldout_accuracy(D: nn.Module, base_a: BaseModel, base_v: BaseModel,
                     real_a: torch.Tensor, real_v: torch.Tensor,
                     fake_a: torch.Tensor, fake_v: torch.Tensor, seed: int) -> dict[str, float]:
    """Accuracy on held-out real, fake and shuffled pairs at fixed noise levels."""
    gen = torch.Generator().manual_seed(seed)
    alphas_a, alphas_v = base_a.alphas_cumprod(), base_v.alphas_cumprod()
    perm = derangement(len(real_a), gen)
    sets = {"real": (real_a, real_v, 1.0), "fake": (fake_a, fake_v, 0.0),
            "shuffled": (real_a, real_v[perm], 0.0)}
    out: dict[str, float] = {}
    for t_value in EVAL_TIMESTEPS:
        for name, (a0, v0, label) in sets.items():
            t = torch.full((len(a0),), t_value, dtype=torch.long)
            a_t = forward_noise(a0, t, torch.randn(a0.shape, generator=gen), alphas_a)
            v_t = forward_noise(v0, t, torch.randn(v0.shape, generator=gen), alphas_v)
            logit = D(a_t, v_t, t)
            out[f"acc_{name}_t{t_value}"] = float(((logit > 0).float() == label).float().mean())
    return out


def train_discriminator(D: nn.Module, base_a: BaseModel, base_v: BaseModel, *,
                        real_a: torch.Tensor, real_v: torch.Tensor,
                        fake_a: torch.Tensor, fake_v: torch.Tensor, cfg: TrainConfig,
                        checkpoint_dir: Path, seed: int,
                        log: Callable[[int, dict], None] | None = None) -> dict:
    """Train ``D`` in place with the loss of the method; return a summary with held-out accuracy."""
    check_pair(base_a, base_v)
    if len(real_a) != len(real_v) or len(fake_a) != len(fake_v):
        raise ValueError("real audio/video and fake audio/video must have matching counts")
    if len(real_a) <= cfg.heldout + cfg.batch_size // 2:
        raise ValueError(f"train.heldout ({cfg.heldout}) leaves too few real clips "
                         f"({len(real_a)}) to train on; lower train.heldout")
    started = time.perf_counter()
    # 1. split: hold out real clips and fakes for accuracy checks
    split = torch.randperm(len(real_a), generator=torch.Generator().manual_seed(seed))
    held, train_idx = split[: cfg.heldout], split[cfg.heldout:]
    n_fake_held = min(cfg.heldout, len(fake_a) // 4)
    held_fake = (fake_a[:n_fake_held], fake_v[:n_fake_held])
    fake_a, fake_v = fake_a[n_fake_held:], fake_v[n_fake_held:]
    tr_a, tr_v = real_a[train_idx], real_v[train_idx]
    # 2. optimiser, generator, resume
    loss_fn = DiscriminatorLoss(cfg.denoise_weight)
    opt = torch.optim.AdamW(D.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    fp = checkpoint.fingerprint(real_a, real_v, fake_a, fake_v, to_dict(cfg), seed,
                                getattr(D, "config", None))
    state = checkpoint.load(checkpoint_dir, fp)
    step = 0
    if state is not None:
        D.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        step = int(state["step"])
    resumed_from = step
    # 3. loop
    D.train()
    window: dict[str, list[float]] = {}
    last_eval: dict[str, float] = {}
    while step < cfg.steps:
        lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))  # cosine decay
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(len(tr_a), (cfg.batch_size,), generator=gen)
        neg_a, neg_v = negative_batch(cfg, tr_a, tr_v, fake_a, fake_v, cfg.batch_size, gen)
        loss, stats = loss_fn(D, base_a, base_v, tr_a[idx], tr_v[idx], neg_a, neg_v, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            stats["grad_norm"] = float(nn.utils.clip_grad_norm_(D.parameters(), cfg.grad_clip))
        opt.step()
        step += 1
        if not math.isfinite(stats["loss"]):
            raise FloatingPointError(f"discriminator loss became {stats['loss']} at step {step}; "
                                     f"lower train.lr (now {cfg.lr})")
        for k, v in stats.items():
            window.setdefault(k, []).append(v)
        if step % cfg.log_every == 0 or step == cfg.steps:
            means = {k: sum(v) / len(v) for k, v in window.items()}
            window = {}
            if step % cfg.eval_every == 0 or step == cfg.steps:
                D.eval()
                last_eval = heldout_accuracy(D, base_a, base_v, real_a[held], real_v[held],
                                             *held_fake, seed=seed + 1)
                D.train()
                means.update(last_eval)
            if log is not None:
                log(step, {"lr": lr, **means})
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            checkpoint.save(checkpoint_dir, step, {"model": D.state_dict(),
                                                   "optimizer": opt.state_dict(),
                                                   "generator": gen.get_state()}, fp)
    D.eval()
    if not last_eval:  # resumed at the end: recompute the held-out figures
        last_eval = heldout_accuracy(D, base_a, base_v, real_a[held], real_v[held], *held_fake,
                                     seed=seed + 1)
    return {"steps": cfg.steps, "resumed_from": resumed_from,
            "wall_s": time.perf_counter() - started,
            "num_parameters": sum(p.numel() for p in D.parameters()), **last_eval}
