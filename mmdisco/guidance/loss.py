"""The discriminator's training loss ``L = L_D + λ · L_DSM`` (``docs/method.md``, "Training objective").

Notation: per modality ``x_t = sqrt(ᾱ_t) x_0 + σ_t ε`` with each base model's own ``ᾱ``;
``L_D`` is binary cross-entropy on logits (real pairs → 1, fake pairs → 0); ``L_DSM`` asks the
residual ``−σ_t ∇ logit D`` to complete each frozen base model's ε on REAL pairs:

    L_DSM = mean (ε_A(a_t, t) − σ_t^a ∇_a logit D − ε^a)² + mean (same for v)

(mean over elements, like the usual ε-MSE). It needs a double backward through ``D`` only;
base predictions are computed under ``torch.no_grad()`` and never receive gradients.

Data parallelism (``part``): every process draws the random numbers of the WHOLE batch from
the same generator state, then computes the loss on its own rows ``part`` of the real AND the
fake pairs. Both BCE terms and the DSM term are means, so with equal parts the mean over
processes of their losses (and gradients: what DDP averages) is the loss of the whole batch.

Text-conditional (``prompts``, a ``PromptRows`` of this batch): the discriminator sees each
pair's prompt (``D(a, v, t, cond=, drop=)``, ``mmdisco.guidance.conditional``), and each row is
trained without it with probability ``prompts.dropout`` (drawn after the noise, so that the
unconditional draws are those of an unconditional run), which teaches the null branch that the
guide's CFG needs. The DSM term then completes each base's prompted ε.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmdisco.bases.protocol import BaseModel, check_pair, sigma, sqrt_alpha_bar
from mmdisco.guidance.conditional import BoundCondition
from mmdisco.guidance.discriminator import input_gradients


class PromptRows:
    """The prompts of one batch: the discriminator's condition of the real and the fake pairs
    (``real``, ``fake``: ``[n, E]``), the bases' own embeddings of the real pairs' prompts
    (``base_a``, ``base_v``; for the DSM term, may be None) and the condition dropout."""

    def __init__(self, real: torch.Tensor, fake: torch.Tensor, dropout: float = 0.0,
                 base_a: torch.Tensor | None = None, base_v: torch.Tensor | None = None):
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"condition dropout must be in [0, 1), got {dropout}")
        self.real, self.fake, self.dropout = real, fake, float(dropout)
        self.base_a, self.base_v = base_a, base_v


def forward_noise(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                  alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """``x_t = sqrt(ᾱ_t) x_0 + σ_t ε`` with the given schedule."""
    return sqrt_alpha_bar(alphas_cumprod, t, x0) * x0 + sigma(alphas_cumprod, t, x0) * noise


class DiscriminatorLoss:
    """BCE on real vs fake noisy pairs, plus ``denoise_weight`` × the denoising score term."""

    def __init__(self, denoise_weight: float = 0.0, *, t_range: tuple[int, int] | None = None):
        if not denoise_weight >= 0.0:
            raise ValueError(f"denoise_weight (λ) must be >= 0, got {denoise_weight}")
        if t_range is not None and not (0 <= t_range[0] < t_range[1]):
            raise ValueError(f"t_range must be (low, high) with 0 <= low < high, got {t_range}")
        self.denoise_weight = float(denoise_weight)
        self.t_range = t_range

    def _timesteps(self, n: int, num_train_timesteps: int, generator: torch.Generator) -> torch.Tensor:
        """One timestep per pair, uniform over ``[low, high)`` (default: all training steps)."""
        low, high = self.t_range or (0, num_train_timesteps)
        if high > num_train_timesteps:
            raise ValueError(f"t_range high ({high}) exceeds the bases' num_train_timesteps "
                             f"({num_train_timesteps})")
        return torch.randint(low, high, (n,), generator=generator, device=generator.device)

    def __call__(self, D: nn.Module, base_a: BaseModel, base_v: BaseModel,
                 real_a0: torch.Tensor, real_v0: torch.Tensor,
                 fake_a0: torch.Tensor, fake_v0: torch.Tensor,
                 generator: torch.Generator, part: slice | None = None,
                 prompts: PromptRows | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """``(loss, stats)``; random draws: t real, t fake, ε real a, real v, fake a, fake v
        (then, with ``prompts``, the dropout of the real rows and of the fake rows).

        With ``part`` the draws are made for the whole batch (the generator advances exactly as
        without it) and the loss is computed on rows ``part`` of the real and the fake pairs.
        """
        check_pair(base_a, base_v)
        _check_batch(real_a0, real_v0, fake_a0, fake_v0, part)
        device = real_a0.device
        alphas_a, alphas_v = base_a.alphas_cumprod(), base_v.alphas_cumprod()
        n_real, n_fake = real_a0.shape[0], fake_a0.shape[0]
        steps = base_a.num_train_timesteps
        t_real = self._timesteps(n_real, steps, generator).to(device)
        t_fake = self._timesteps(n_fake, steps, generator).to(device)
        noise = [torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(device)
                 for x in (real_a0, real_v0, fake_a0, fake_v0)]
        D_real, D_fake, base_ca, base_cv = _conditioned(D, prompts, n_real, n_fake, generator,
                                                        part, device)
        # this process's rows of the real and of the fake pairs
        real_a0, real_v0, fake_a0, fake_v0, t_real, t_fake, *noise = _take(
            part, real_a0, real_v0, fake_a0, fake_v0, t_real, t_fake, *noise)
        real_a = forward_noise(real_a0, t_real, noise[0], alphas_a)
        real_v = forward_noise(real_v0, t_real, noise[1], alphas_v)
        fake_a = forward_noise(fake_a0, t_fake, noise[2], alphas_a)
        fake_v = forward_noise(fake_v0, t_fake, noise[3], alphas_v)

        if self.denoise_weight > 0:
            logit_real, grad_a, grad_v = input_gradients(D_real, real_a, real_v, t_real,
                                                         create_graph=True)
        else:
            logit_real = D_real(real_a, real_v, t_real)
        logit_fake = D_fake(fake_a, fake_v, t_fake)
        bce = (F.binary_cross_entropy_with_logits(logit_real, torch.ones_like(logit_real))
               + F.binary_cross_entropy_with_logits(logit_fake, torch.zeros_like(logit_fake)))
        if self.denoise_weight == 0:   # plain BCE
            return bce, _stats(bce, bce, 0.0, logit_real, logit_fake)
        dsm = (denoising_error(base_a, real_a, t_real, base_ca, grad_a, noise[0], alphas_a)
               + denoising_error(base_v, real_v, t_real, base_cv, grad_v, noise[1], alphas_v))
        loss = bce + self.denoise_weight * dsm
        return loss, _stats(loss, bce, float(dsm.detach()), logit_real, logit_fake)


def denoising_error(base: BaseModel, x_t: torch.Tensor, t: torch.Tensor,
                    cond: torch.Tensor | None, grad: torch.Tensor, noise: torch.Tensor,
                    alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """One modality's ``L_DSM`` term: ``mean (ε_m(x_t, t) − σ_t ∇ logit D − ε)²``, the frozen
    base's prediction (with its own prompt embeddings ``cond``) taken without gradient."""
    with torch.no_grad():
        eps = base.eps(x_t, t, cond)
    return F.mse_loss(eps - sigma(alphas_cumprod, t, grad) * grad, noise)


def _check_batch(real_a0: torch.Tensor, real_v0: torch.Tensor, fake_a0: torch.Tensor,
                 fake_v0: torch.Tensor, part: slice | None) -> None:
    """Refuse unpaired batches, and a ``part`` that takes unequal (or no) real and fake rows."""
    n_real, n_fake = real_a0.shape[0], fake_a0.shape[0]
    if n_real != real_v0.shape[0] or n_fake != fake_v0.shape[0]:
        raise ValueError(f"unpaired batch: real {n_real} audio vs {real_v0.shape[0]} "
                         f"video, fake {n_fake} audio vs {fake_v0.shape[0]} video")
    if part is not None and (len(range(n_real)[part]) != len(range(n_fake)[part])
                             or not len(range(n_real)[part])):
        raise ValueError(f"part {part} must take as many real as fake pairs, at least one")


def _take(part: slice | None, *xs: torch.Tensor | None) -> list[torch.Tensor | None]:
    """Rows ``part`` of each tensor (``None`` stays ``None``); every row without ``part``."""
    return [x if part is None or x is None else x[part] for x in xs]


def _conditioned(D: nn.Module, prompts: PromptRows | None, n_real: int, n_fake: int,
                 generator: torch.Generator, part: slice | None, device: torch.device):
    """``(D_real, D_fake, base_ca, base_cv)``: ``D`` bound to each real and each fake row's
    prompt with its dropout (drawn for the whole batch, then this share taken), and the bases'
    own embeddings of the real rows' prompts; ``D`` itself and no embeddings without prompts."""
    if prompts is None:
        return D, D, None, None
    drop_r = torch.rand(n_real, generator=generator, device=generator.device) < prompts.dropout
    drop_f = torch.rand(n_fake, generator=generator, device=generator.device) < prompts.dropout
    drop_r, drop_f, rc, fc, base_ca, base_cv = _take(part, drop_r, drop_f, prompts.real,
                                                     prompts.fake, prompts.base_a, prompts.base_v)
    return (BoundCondition(D, rc.to(device), drop_r.to(device)),
            BoundCondition(D, fc.to(device), drop_f.to(device)), base_ca, base_cv)


def _stats(loss: torch.Tensor, bce: torch.Tensor, dsm: float, logit_real: torch.Tensor,
           logit_fake: torch.Tensor) -> dict[str, float]:
    return {
        "loss": float(loss.detach()),
        "bce": float(bce.detach()),
        "dsm": dsm,
        "acc_real": float((logit_real.detach() > 0).float().mean()),
        "acc_fake": float((logit_fake.detach() < 0).float().mean()),
    }
