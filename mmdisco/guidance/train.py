"""Training loop of the discriminator: real pairs against negatives, base models frozen.

Negatives (``discriminator.negatives``): ``generated`` — pairs from the fake bank, each
modality made independently by its base model (the paper's choice: teaches alignment and corrects the bases);
``shuffled`` — real audio with another real clip's video (teaches alignment only); ``both`` —
half of each. Every random draw comes from one generator seeded by the caller, and the
generator state is checkpointed, so a resumed run ends with the same weights as an
uninterrupted one.

Several processes (``accelerator``, an ``accelerate.Accelerator`` of more than one process):
only ``D`` and its optimiser are prepared (DDP wraps ``D``); the frozen bases stay outside.
Every process draws the SAME global batch (clip indices, negatives, timesteps, noise) from its
copy of the seeded generator and computes the loss on its own equal share of the real and of
the fake pairs (``DiscriminatorLoss(part=...)``); DDP averages the gradients, so each update is
the one-process update on the whole batch, up to float rounding (``discriminator.batch_size``
must be a multiple of the process count). The main process reads the checkpoint and broadcasts it (no
shared filesystem needed), logs, and writes checkpoints holding the unwrapped state dict and the
generator state — the same stream for any number of processes, so a run resumes with another
process count and ends with the same weights.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from mmdisco import checkpoint
from mmdisco.bases.protocol import BaseModel, check_pair
from mmdisco.config import DiscriminatorConfig, to_dict
from mmdisco.guidance.conditional import ConditionalDiscriminator
from mmdisco.guidance.discriminator import Discriminator
from mmdisco.guidance.loss import DiscriminatorLoss, PromptRows, forward_noise
from mmdisco.loop import (Checkpoints, Schedule, Trainer, batch_share, run_summary, seeded,
                          train_loop)

EVAL_TIMESTEPS = (100, 300, 500, 700, 900)


def derangement(n: int, generator: torch.Generator) -> torch.Tensor:
    """A random permutation with no fixed point (a cyclic shift of a random order)."""
    if n < 2:
        raise ValueError("shuffled negatives need at least 2 pairs per batch")
    order = torch.randperm(n, generator=generator)
    out = torch.empty_like(order)
    out[order] = order.roll(1)
    return out


def negative_batch(cfg: DiscriminatorConfig, real_a: torch.Tensor, real_v: torch.Tensor,
                   fake_a: torch.Tensor, fake_v: torch.Tensor, n: int,
                   generator: torch.Generator, real_prompt: torch.Tensor | None = None,
                   fake_prompt: torch.Tensor | None = None):
    """``n`` negative pairs of the configured kind: ``(audio, video, prompt)``, ``prompt`` the
    prompt index of each pair when the real clips' and the fakes' are given (a shuffled pair
    keeps its audio's), else None."""
    def generated(k: int):
        idx = torch.randint(len(fake_a), (k,), generator=generator)
        return fake_a[idx], fake_v[idx], None if fake_prompt is None else fake_prompt[idx]

    def shuffled(k: int):
        # distinct clips, so that no audio can meet its own video through a repeated index
        idx = torch.randperm(len(real_a), generator=generator)[:k]
        perm = derangement(k, generator)
        return real_a[idx], real_v[idx[perm]], None if real_prompt is None else real_prompt[idx]

    if cfg.negatives == "generated":
        parts = [generated(n)]
    elif cfg.negatives == "shuffled":
        parts = [shuffled(n)]
    else:
        parts = [generated(n - n // 2), shuffled(n // 2)]
    a, v = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    prompts = [p[2] for p in parts]
    return a, v, None if any(p is None for p in prompts) else torch.cat(prompts)


class Conditions:
    """Prompts of a text-conditional discriminator's training data (``condition: caption``).

    ``joint`` ``[P, E]``: the discriminator's condition of each prompt (``joint_condition`` of
    the bases' embeddings); ``base_a``, ``base_v``: each base's own embeddings of each prompt
    (needed by the DSM term only); ``real`` ``[N]`` / ``fake`` ``[M]``: the prompt index of each
    real clip and of each fake pair; ``dropout``: the probability that a row is trained without
    its prompt.
    """

    def __init__(self, joint: torch.Tensor, real: torch.Tensor, fake: torch.Tensor, *,
                 dropout: float = 0.1, base_a: torch.Tensor | None = None,
                 base_v: torch.Tensor | None = None):
        if joint.ndim != 2:
            raise ValueError(f"joint conditions must be [P, E], got {list(joint.shape)}")
        for name, idx in (("real", real), ("fake", fake)):
            if idx.ndim != 1 or (len(idx) and (idx.min() < 0 or idx.max() >= len(joint))):
                raise ValueError(f"{name} prompt indices must be [N] positions in the {len(joint)} "
                                 f"prompts")
        self.joint, self.real, self.fake = joint.float(), real.long(), fake.long()
        self.dropout, self.base_a, self.base_v = float(dropout), base_a, base_v

    def rows(self, real_prompt: torch.Tensor, fake_prompt: torch.Tensor):
        """The ``PromptRows`` of a batch, from its real and negative pairs' prompt indices."""
        pick = (lambda table: None if table is None else table[real_prompt])
        return PromptRows(self.joint[real_prompt], self.joint[fake_prompt], self.dropout,
                          pick(self.base_a), pick(self.base_v))


@torch.no_grad()
def heldout_accuracy(D: nn.Module, base_a: BaseModel, base_v: BaseModel,
                     real_a: torch.Tensor, real_v: torch.Tensor,
                     fake_a: torch.Tensor, fake_v: torch.Tensor, seed: int,
                     real_cond: torch.Tensor | None = None,
                     fake_cond: torch.Tensor | None = None) -> dict[str, float]:
    """Accuracy on held-out real, fake and shuffled pairs at fixed noise levels (a conditional
    ``D`` sees each pair's prompt: ``real_cond``, ``fake_cond``; a shuffled pair its audio's)."""
    gen = torch.Generator().manual_seed(seed)
    dev = next(D.parameters()).device
    alphas_a, alphas_v = base_a.alphas_cumprod(), base_v.alphas_cumprod()
    perm = derangement(len(real_a), gen)
    sets = {"real": (real_a, real_v, 1.0, real_cond), "fake": (fake_a, fake_v, 0.0, fake_cond),
            "shuffled": (real_a, real_v[perm], 0.0, real_cond)}
    out: dict[str, float] = {}
    for t_value in EVAL_TIMESTEPS:
        for name, (a0, v0, label, cond) in sets.items():
            t = torch.full((len(a0),), t_value, dtype=torch.long)
            a_t = forward_noise(a0, t, torch.randn(a0.shape, generator=gen), alphas_a)
            v_t = forward_noise(v0, t, torch.randn(v0.shape, generator=gen), alphas_v)
            extra = {} if cond is None else {"cond": cond.to(dev)}
            logit = D(a_t.to(dev), v_t.to(dev), t.to(dev), **extra).cpu()
            out[f"acc_{name}_t{t_value}"] = float(((logit > 0).float() == label).float().mean())
    return out


def new_discriminator(cfg: DiscriminatorConfig, audio_shape: tuple[int, ...],
                      video_shape: tuple[int, ...], seed: int,
                      cond_dim: int | None = None) -> Discriminator:
    """A ``Discriminator`` of ``cfg``'s size (with ``cond_dim``, a ``ConditionalDiscriminator``),
    initialised from ``seed``, the global RNG left untouched."""
    kw = dict(audio_shape=tuple(audio_shape), video_shape=tuple(video_shape), width=cfg.width,
              time_dim=cfg.time_dim, head_hidden=cfg.head_hidden)
    if cond_dim is None:
        return seeded(seed, lambda: Discriminator(**kw))
    return seeded(seed, lambda: ConditionalDiscriminator(cond_dim=cond_dim, **kw))


def _check_data(cfg: DiscriminatorConfig, real_a: torch.Tensor, real_v: torch.Tensor,
                fake_a: torch.Tensor, fake_v: torch.Tensor, conditions: Conditions | None) -> None:
    """Refuse unpaired data, prompt indices that are not one per pair, too few clips."""
    if len(real_a) != len(real_v) or len(fake_a) != len(fake_v):
        raise ValueError("real audio/video and fake audio/video must have matching counts")
    if conditions is not None and (len(conditions.real) != len(real_a)
                                   or len(conditions.fake) != len(fake_a)):
        raise ValueError(f"conditions hold {len(conditions.real)} real and {len(conditions.fake)} "
                         f"fake prompt indices for {len(real_a)} real clips and {len(fake_a)} "
                         f"fakes; give one per pair")
    if len(real_a) <= cfg.heldout + cfg.batch_size // 2:
        raise ValueError(f"discriminator.heldout ({cfg.heldout}) leaves too few real clips "
                         f"({len(real_a)}) to train on; lower discriminator.heldout")


@dataclass
class _Split:
    """The discriminator's training pairs (real clips, fakes, their prompt indices with
    ``conditions``) and its held-out pairs (the ``heldout_accuracy`` arguments)."""

    real_a: torch.Tensor
    real_v: torch.Tensor
    fake_a: torch.Tensor
    fake_v: torch.Tensor
    real_prompt: torch.Tensor | None
    fake_prompt: torch.Tensor | None
    held: dict


def _split(cfg: DiscriminatorConfig, seed: int, real_a: torch.Tensor, real_v: torch.Tensor,
           fake_a: torch.Tensor, fake_v: torch.Tensor, conditions: Conditions | None) -> _Split:
    """``discriminator.heldout`` real clips (a seeded draw) and as many of the first fakes (at
    most a quarter of the bank) held out for accuracy checks; the rest to train on."""
    order = torch.randperm(len(real_a), generator=torch.Generator().manual_seed(seed))
    held, train_idx = order[: cfg.heldout], order[cfg.heldout:]
    n_fake_held = min(cfg.heldout, len(fake_a) // 4)
    held_pairs = dict(real_a=real_a[held], real_v=real_v[held], fake_a=fake_a[:n_fake_held],
                      fake_v=fake_v[:n_fake_held])
    real_prompt = fake_prompt = None
    if conditions is not None:
        held_pairs.update(real_cond=conditions.joint[conditions.real[held]],
                          fake_cond=conditions.joint[conditions.fake[:n_fake_held]])
        real_prompt, fake_prompt = conditions.real[train_idx], conditions.fake[n_fake_held:]
    return _Split(real_a[train_idx], real_v[train_idx], fake_a[n_fake_held:],
                  fake_v[n_fake_held:], real_prompt, fake_prompt, held_pairs)


def _fingerprint(split: _Split, real_a: torch.Tensor, real_v: torch.Tensor,
                 cfg: DiscriminatorConfig, seed: int, D: nn.Module,
                 conditions: Conditions | None) -> str:
    """What a checkpoint must have been made from to be resumed (the training fakes only)."""
    return checkpoint.fingerprint(real_a, real_v, split.fake_a, split.fake_v, to_dict(cfg), seed,
                                  getattr(D, "config", None),
                                  *(() if conditions is None else
                                    (conditions.joint, conditions.real, conditions.fake,
                                     conditions.dropout)))


def train_discriminator(D: nn.Module, base_a: BaseModel, base_v: BaseModel, *,
                        real_a: torch.Tensor, real_v: torch.Tensor,
                        fake_a: torch.Tensor, fake_v: torch.Tensor, cfg: DiscriminatorConfig,
                        checkpoint_dir: Path, seed: int,
                        log: Callable[[int, dict], None] | None = None,
                        accelerator=None, stop_at: int | None = None,
                        conditions: Conditions | None = None,
                        device: str | torch.device | None = None) -> dict:
    """Train ``D`` in place with the loss of the method; return a summary with held-out accuracy.

    ``conditions``: train a text-conditional ``D`` (``ConditionalDiscriminator``) on each
    pair's prompt, with condition dropout (``Conditions``); everything else is the same loop.
    ``device``: where a single process trains (``D`` is moved there; default the CPU); with an
    ``accelerator`` its device is used. Random draws stay on the CPU generator either way.

    ``accelerator``: an ``accelerate.Accelerator`` to train data-parallel over its processes
    (see the module docstring); ``log`` is then called on the main process only. ``stop_at``:
    stop after that step with a checkpoint, as an interruption would (the summary then has
    ``stopped_at`` and no held-out figures); a later call resumes.
    """
    check_pair(base_a, base_v)
    _, _, part = batch_share(accelerator, cfg.batch_size)
    device = torch.device(device or "cpu") if accelerator is None else accelerator.device
    D.to(device)
    _check_data(cfg, real_a, real_v, fake_a, fake_v, conditions)
    started = time.perf_counter()
    # 1. split: hold out real clips and fakes for accuracy checks
    data = _split(cfg, seed, real_a, real_v, fake_a, fake_v, conditions)
    # 2. loss, optimiser, generator (every draw of the loop from it)
    loss_fn = DiscriminatorLoss(cfg.denoise_weight)
    opt = torch.optim.AdamW(D.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(seed)

    def step_fn(model: nn.Module):
        idx = torch.randint(len(data.real_a), (cfg.batch_size,), generator=gen)  # global batch,
        neg_a, neg_v, neg_p = negative_batch(cfg, data.real_a, data.real_v, data.fake_a,
                                             data.fake_v, cfg.batch_size, gen,
                                             real_prompt=data.real_prompt,
                                             fake_prompt=data.fake_prompt)
        rows = None if conditions is None else conditions.rows(data.real_prompt[idx], neg_p)
        batch = [x.to(device) for x in (data.real_a[idx], data.real_v[idx], neg_a, neg_v)]
        return loss_fn(model, base_a, base_v, *batch, gen, part=part,   # this share of it
                       prompts=rows)

    def evaluate() -> dict[str, float]:
        return heldout_accuracy(D, base_a, base_v, **data.held, seed=seed + 1)

    # 3. the loop (resume, data parallelism, logging, checkpoints: mmdisco.loop)
    result = train_loop(
        Trainer(name="discriminator", model=D, opt=opt, lr_key="discriminator.lr", step_fn=step_fn,
                lr_at=lambda step: cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps)),
                evaluate=evaluate, reduce_stats=True),
        Schedule(cfg.steps, cfg.log_every, cfg.checkpoint_every, cfg.eval_every, cfg.grad_clip,
                 stop_at=stop_at),
        Checkpoints(checkpoint_dir, _fingerprint(data, real_a, real_v, cfg, seed, D, conditions),
                    gen),
        accelerator=accelerator, log=log)
    return run_summary(result, steps=cfg.steps, started=started, model=D, evaluate=evaluate)
