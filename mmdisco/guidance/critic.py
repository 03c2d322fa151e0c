"""A contrastive critic: the alignment (pointwise mutual information) part of the residual.

``docs/method.md`` ("Decomposing the residual") splits the discriminator's target

    log r_t = log q_t(a, v) / (q_t^A(a) q_t^V(v))  +  Σ_m log q_t^m / p_t^m

into the pointwise mutual information of real pairs (what alignment needs) and each base
model's own error. The discriminator estimates the whole sum from real vs generated pairs, and
in practice learns the easy part (timing) first. The critic estimates the first term alone:
trained on REAL pairs only with InfoNCE, the other clips of the batch as negatives, its score

    f(a_t, v_t, t) = ⟨e_a(a_t, t), e_v(v_t, t)⟩ / τ      (unit-norm embeddings)

matches the PMI up to a constant at the optimum of the symmetric loss. Its embeddings are
pooled over time before they meet, so it is blind to timing and carries the semantic part
(colour ↔ pitch); timing is left to the discriminator. Used in the sampler exactly like ``D``:
residual ``−σ_t ∇ f``, usually on the modality that decides later (audio).

This is an extension beyond the paper, off by default in the maths tests and measured against
the plain discriminator (README, "Results").

Several processes (``train_critic(accelerator=...)``): InfoNCE over a share of the batch is
NOT InfoNCE over the batch — the negatives of each pair are the other clips of the batch, so a
share would see ``1/N`` of them and train another objective. So every process draws the same
global batch, embeds its own equal share (DDP wraps the towers), and the embeddings of all
shares are all-gathered WITH their gradient (``torch.distributed.nn.functional.all_gather``)
before the loss: each process computes the whole batch's score matrix and loss. Its backward
sums each share's gradient over the processes (N times the gradient of the one loss), DDP
averages over the processes: the update is the one-process update, up to float rounding.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.nn.functional import all_gather

from mmdisco import checkpoint
from mmdisco.config import CriticConfig, to_dict
from mmdisco.guidance.discriminator import AudioFeatures, TimeEmbedding, VideoFeatures, _check_inputs
from mmdisco.guidance.loss import forward_noise
from mmdisco.loop import (Checkpoints, Schedule, Trainer, batch_share, run_summary, seeded,
                          train_loop)

EVAL_TIMESTEPS = (300, 500, 700, 850)


class Critic(nn.Module):
    """Timing-blind two-tower critic, ``[N, C, T, M] × [N, F, C, H, W] × [N] → [N]``."""

    def __init__(self, *, audio_shape: tuple[int, int, int], video_shape: tuple[int, int, int, int],
                 width: int = 32, time_dim: int = 64, dim: int = 64, temperature: float = 0.1,
                 audio_bands: int = 4, video_grid: int = 4):
        super().__init__()
        if len(audio_shape) != 3 or len(video_shape) != 4:
            raise ValueError(f"audio_shape must be (C, T, M) and video_shape (F, C, H, W); got "
                             f"{tuple(audio_shape)} and {tuple(video_shape)}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.audio_shape = tuple(int(s) for s in audio_shape)
        self.video_shape = tuple(int(s) for s in video_shape)
        self.temperature = float(temperature)
        self.config = dict(audio_shape=self.audio_shape, video_shape=self.video_shape, width=width,
                           time_dim=time_dim, dim=dim, temperature=self.temperature,
                           audio_bands=audio_bands, video_grid=video_grid)
        self.time = TimeEmbedding(dim=time_dim)
        self.audio = AudioFeatures(channels=self.audio_shape[0], width=width, time_dim=time_dim,
                                   bands=audio_bands)
        self.video = VideoFeatures(channels=self.video_shape[1], width=width, time_dim=time_dim,
                                   grid=video_grid)
        self.audio_head = nn.Sequential(nn.Linear(width, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.video_head = nn.Sequential(nn.Linear(width, dim), nn.SiLU(), nn.Linear(dim, dim))

    def embed(self, a_t: torch.Tensor, v_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-norm embeddings ``(e_a [N, dim], e_v [N, dim])``, each pooled over time."""
        _check_inputs(a_t, v_t, t, self.audio_shape, self.video_shape)
        temb = self.time(t)
        e_a = self.audio_head(self.audio(a_t, temb).mean(dim=-1))
        e_v = self.video_head(self.video(v_t, temb).mean(dim=-1))
        return F.normalize(e_a, dim=-1), F.normalize(e_v, dim=-1)

    def forward(self, a_t: torch.Tensor, v_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Score of each pair ``f(a_i, v_i) [N]`` (the same interface as the discriminator)."""
        e_a, e_v = self.embed(a_t, v_t, t)
        return (e_a * e_v).sum(-1) / self.temperature

    def scores(self, a_t: torch.Tensor, v_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """All-pairs scores ``S[i, j] = f(a_i, v_j)`` ``[N, N]`` (all at the same noise level)."""
        e_a, e_v = self.embed(a_t, v_t, t)
        return e_a @ e_v.T / self.temperature


def info_nce(S: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE on a score matrix whose diagonal holds the positive pairs."""
    target = torch.arange(len(S), device=S.device)
    return 0.5 * (F.cross_entropy(S, target) + F.cross_entropy(S.T, target))


def _noisy_batch(a0: torch.Tensor, v0: torch.Tensor, t_value: int, alphas_a: torch.Tensor,
                 alphas_v: torch.Tensor, gen: torch.Generator):
    """Both modalities of a batch noised to the same timestep ``t_value``."""
    t = torch.full((len(a0),), int(t_value), dtype=torch.long)
    a_t = forward_noise(a0, t, torch.randn(a0.shape, generator=gen), alphas_a)
    v_t = forward_noise(v0, t, torch.randn(v0.shape, generator=gen), alphas_v)
    return a_t, v_t, t


@torch.no_grad()
def retrieval_accuracy(critic: Critic, real_a: torch.Tensor, real_v: torch.Tensor,
                       alphas_a: torch.Tensor, alphas_v: torch.Tensor, *, seed: int,
                       labels: torch.Tensor | None = None) -> dict[str, float]:
    """Held-out figures per noise level: top-1 audio→video retrieval among the held-out clips
    (chance ``1/N``) and, with ``labels``, how often the best match has the same label."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, float] = {}
    for t_value in EVAL_TIMESTEPS:
        a_t, v_t, t = _noisy_batch(real_a, real_v, t_value, alphas_a, alphas_v, gen)
        dev = next(critic.parameters()).device
        best = critic.scores(a_t.to(dev), v_t.to(dev), t.to(dev)).argmax(dim=1).cpu()
        out[f"top1_t{t_value}"] = float((best == torch.arange(len(best))).float().mean())
        if labels is not None:
            out[f"label_match_t{t_value}"] = float((labels[best] == labels).float().mean())
    return out


def sample_timestep(cfg: CriticConfig, generator: torch.Generator) -> int:
    """One timestep for a whole batch, uniform over ``[critic.t_min, critic.t_max]``."""
    return int(torch.randint(cfg.t_min, cfg.t_max + 1, (1,), generator=generator))


class _Towers(nn.Module):
    """The critic's embeddings as a module's ``forward``, for DDP to wrap."""

    def __init__(self, critic: Critic):
        super().__init__()
        self.critic = critic

    def forward(self, a_t: torch.Tensor, v_t: torch.Tensor, t: torch.Tensor):
        return self.critic.embed(a_t, v_t, t)


def _gathered_scores(towers: nn.Module, critic: Critic, a_t: torch.Tensor, v_t: torch.Tensor,
                     t: torch.Tensor, part: slice) -> torch.Tensor:
    """The whole batch's score matrix from this process's share and the others' embeddings."""
    e_a, e_v = towers(a_t[part], v_t[part], t[part])
    e_a, e_v = torch.cat(all_gather(e_a)), torch.cat(all_gather(e_v))
    return e_a @ e_v.T / critic.temperature


def learning_rate(cfg: CriticConfig, step: int) -> float:
    """Linear warmup over ``critic.warmup_steps``, times a cosine decay to 0 at ``steps``."""
    warm = min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
    return cfg.lr * warm * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))


def _check_data(cfg: CriticConfig, real_a: torch.Tensor, real_v: torch.Tensor,
                alphas_a: torch.Tensor) -> None:
    """Refuse unpaired clips, timesteps past the schedule, too few clips for the batch."""
    if len(real_a) != len(real_v):
        raise ValueError(f"real audio ({len(real_a)}) and video ({len(real_v)}) counts differ")
    if cfg.t_max >= len(alphas_a):
        raise ValueError(f"critic.t_max ({cfg.t_max}) must be below the bases' "
                         f"num_train_timesteps ({len(alphas_a)})")
    if len(real_a) < cfg.heldout + cfg.batch_size:
        raise ValueError(f"critic.heldout ({cfg.heldout}) + critic.batch_size ({cfg.batch_size}) "
                         f"exceed the {len(real_a)} real clips; lower one of them")


def train_critic(critic: Critic, *, real_a: torch.Tensor, real_v: torch.Tensor,
                 alphas_a: torch.Tensor, alphas_v: torch.Tensor, cfg: CriticConfig,
                 checkpoint_dir: Path, seed: int,
                 log: Callable[[int, dict], None] | None = None,
                 accelerator=None, stop_at: int | None = None,
                 device: str | torch.device | None = None) -> dict:
    """Train ``critic`` in place with InfoNCE on real pairs; resumable from ``checkpoint_dir``.

    Each step draws ``batch_size`` distinct training clips and one timestep; both modalities
    are noised to it (so every entry of the score matrix compares like with like).
    ``accelerator``, ``stop_at`` and ``device`` as in
    ``mmdisco.guidance.train.train_discriminator`` (several processes: see the module docstring).
    """
    world, _, part = batch_share(accelerator, cfg.batch_size)
    device = torch.device(device or "cpu") if accelerator is None else accelerator.device
    critic.to(device)
    _check_data(cfg, real_a, real_v, alphas_a)
    started = time.perf_counter()
    # 1. split (the first draw of the generator): held-out clips, the rest to train on
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(real_a), generator=gen)
    held, train_idx = order[:cfg.heldout], order[cfg.heldout:]
    tr_a, tr_v = real_a[train_idx], real_v[train_idx]
    opt = torch.optim.AdamW(critic.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    fp = checkpoint.fingerprint("critic", real_a, real_v, alphas_a, alphas_v, to_dict(cfg), seed,
                                critic.config)

    # 2. a step: a batch of distinct clips at one timestep, InfoNCE on its score matrix
    def step_fn(trained: nn.Module):
        idx = torch.randperm(len(tr_a), generator=gen)[:cfg.batch_size]
        a_t, v_t, t = _noisy_batch(tr_a[idx], tr_v[idx], sample_timestep(cfg, gen),
                                   alphas_a, alphas_v, gen)   # the global batch
        if world > 1:   # trained: the DDP-wrapped towers
            S = _gathered_scores(trained, critic, *(x.to(device) for x in (a_t, v_t, t)), part)
        else:
            S = critic.scores(a_t.to(device), v_t.to(device), t.to(device))
        loss = info_nce(S)
        top1 = float((S.detach().argmax(1).cpu() == torch.arange(len(S))).float().mean())
        return loss, {"loss": float(loss.detach()), "top1": top1}

    def evaluate() -> dict[str, float]:
        return retrieval_accuracy(critic, real_a[held], real_v[held], alphas_a, alphas_v,
                                  seed=seed + 1)

    # 3. the loop (resume, data parallelism, logging, checkpoints: mmdisco.loop)
    result = train_loop(
        Trainer(name="critic", model=critic, opt=opt, lr_key="critic.lr", step_fn=step_fn,
                lr_at=lambda step: learning_rate(cfg, step), evaluate=evaluate,
                prepare=lambda model, o: accelerator.prepare(_Towers(model), o)),
        Schedule(cfg.steps, cfg.log_every, cfg.checkpoint_every, cfg.eval_every, cfg.grad_clip,
                 stop_at=stop_at),
        Checkpoints(checkpoint_dir, fp, gen), accelerator=accelerator, log=log)
    return run_summary(result, steps=cfg.steps, started=started, model=critic, evaluate=evaluate,
                       heldout=len(held))


def new_critic(cfg: CriticConfig, audio_shape: tuple[int, ...], video_shape: tuple[int, ...],
               seed: int) -> Critic:
    """A ``Critic`` of ``cfg``'s size, initialised from ``seed`` (global RNG left untouched)."""
    return seeded(seed, lambda: Critic(audio_shape=tuple(audio_shape),
                                       video_shape=tuple(video_shape), width=cfg.width,
                                       time_dim=cfg.time_dim, dim=cfg.dim,
                                       temperature=cfg.temperature))
