"""The analytic Gaussian world of ``docs/method.md``: every quantity of the method in closed form.

``(a, v) ∈ R^{da} × R^{dv}`` is jointly Gaussian, ``N(0, Σ)`` with ``Σ = [[S_a, C], [Cᵀ, S_v]]``.
Each modality is noised with its own schedule, ``x_t^m = sqrt(ᾱ_t^m) x_0^m + σ_t^m ε``, so

    q_t(a, v) = N(0, K_t),  K_t = D_t Σ D_t + diag(σ_t^a² I, σ_t^v² I),  D_t = diag(sqrt(ᾱ_t^a) I, sqrt(ᾱ_t^v) I)
    q_t^m(x)  = N(0, K_t^m), K_t^m = ᾱ_t^m S_m + σ_t^m² I

The "base models" are the exact marginal ε-predictors ``ε_m(x_t) = σ_t^m (K_t^m)^{-1} x_t``
(``= −σ ∇ log q_t^m``), and ``log r_t = log q_t(a, v) − log q_t^A(a) − log q_t^V(v)``.
"""
from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DDPMScheduler
import torch.nn.functional as F
from torch import nn

from mmdisco.guidance.discriminator import TimeEmbedding


def _per_timestep(t: torch.Tensor, fn):
    """Evaluate ``fn`` once when the batch shares one timestep (sampling), else per sample."""
    t = t.long().cpu()
    if bool((t == t[0]).all()):
        return tuple(out.expand(len(t), *out.shape[1:]) for out in fn(t[:1]))
    return fn(t)


def _noisy_marginal_cov(S: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """``K_t = ᾱ_t S + (1 − ᾱ_t) I`` for each ``ᾱ_t`` in ``alpha_bar [U]`` → ``[U, d, d]``."""
    eye = torch.eye(S.shape[0], dtype=S.dtype, device=S.device)
    ab = alpha_bar.to(S.dtype)[:, None, None]
    return ab * S + (1 - ab) * eye


class GaussianBase:
    """Exact marginal ε-predictor of ``N(0, S)`` under a diffusers noise schedule (a BaseModel)."""

    def __init__(self, *, modality: str, covariance: torch.Tensor, num_train_timesteps: int = 1000,
                 beta_schedule: str = "linear", beta_start: float = 1e-4, beta_end: float = 0.02):
        if modality not in ("audio", "video"):
            raise ValueError(f"modality must be 'audio' or 'video', got {modality!r}")
        cov = torch.as_tensor(covariance, dtype=torch.float64)
        if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
            raise ValueError(f"covariance must be a square matrix, got shape {tuple(cov.shape)}")
        self.modality = modality
        self.covariance = cov
        self.latent_shape = (cov.shape[0],)
        self.num_train_timesteps = int(num_train_timesteps)
        self._scheduler_config = dict(num_train_timesteps=self.num_train_timesteps,
                                      beta_schedule=beta_schedule, beta_start=beta_start,
                                      beta_end=beta_end, clip_sample=False,
                                      timestep_spacing="trailing", prediction_type="epsilon")
        self._alphas_cumprod = DDPMScheduler(**self._scheduler_config).alphas_cumprod.to(torch.float64)

    def alphas_cumprod(self) -> torch.Tensor:
        """``ᾱ_t`` of this model's scheduler (float64, CPU)."""
        return self._alphas_cumprod.clone()

    def make_scheduler(self, kind: str):
        """A fresh diffusers DDIM or DDPM scheduler with this model's schedule."""
        if kind == "ddim":
            return DDIMScheduler(**self._scheduler_config)
        if kind == "ddpm":
            return DDPMScheduler(**self._scheduler_config)
        raise ValueError(f"unknown scheduler kind {kind!r}; use 'ddim' or 'ddpm'")

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """``ε = σ_t (ᾱ_t S + σ_t² I)^{-1} x_t`` (``cond`` is not used: the model is unconditional)."""
        def weights(unique_t):
            ab = self._alphas_cumprod[unique_t]
            return ((1 - ab).sqrt()[:, None, None] * torch.linalg.inv(_noisy_marginal_cov(self.covariance, ab)),)

        (W,) = _per_timestep(t, weights)
        return torch.einsum("nij,nj->ni", W.to(x_t.device), x_t.to(torch.float64)).to(x_t.dtype)


class GaussianWorld:
    """Jointly Gaussian ``(a, v)`` with its exact marginal bases and closed-form ``log r_t``."""

    def __init__(self, covariance: torch.Tensor, audio_dim: int, *, num_train_timesteps: int = 1000,
                 beta_schedule_a: str = "linear", beta_schedule_v: str = "linear"):
        cov = torch.as_tensor(covariance, dtype=torch.float64)
        if cov.ndim != 2 or cov.shape[0] != cov.shape[1] or not 0 < audio_dim < cov.shape[0]:
            raise ValueError(f"covariance must be square [da + dv, da + dv] with 0 < audio_dim "
                             f"< its side; got shape {tuple(cov.shape)} and audio_dim {audio_dim}")
        if not torch.allclose(cov, cov.T) or torch.linalg.eigvalsh(cov).min() <= 0:
            raise ValueError("covariance must be symmetric positive definite")
        self.covariance = cov
        self.audio_dim = int(audio_dim)
        self.video_dim = cov.shape[0] - self.audio_dim
        da = self.audio_dim
        self.base_a = GaussianBase(modality="audio", covariance=cov[:da, :da],
                                   num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule_a)
        self.base_v = GaussianBase(modality="video", covariance=cov[da:, da:],
                                   num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule_v)

    @classmethod
    def correlated(cls, audio_dim: int, video_dim: int, *, rho: float, generator: torch.Generator,
                   **kwargs) -> "GaussianWorld":
        """A random world ``Σ = B [[I, ρR], [ρRᵀ, I]] B`` with ``R`` of unit singular values (``|ρ| < 1``)."""
        if not abs(rho) < 1:
            raise ValueError(f"rho must satisfy |rho| < 1 for a positive definite covariance, got {rho}")

        def spd_root(d: int) -> torch.Tensor:
            A = torch.randn(d, d, generator=generator, dtype=torch.float64)
            S = A @ A.T / d + 0.5 * torch.eye(d, dtype=torch.float64)
            vals, vecs = torch.linalg.eigh(S / S.diagonal().mean())
            return vecs @ torch.diag(vals.sqrt()) @ vecs.T

        Ra = torch.linalg.qr(torch.randn(audio_dim, audio_dim, generator=generator, dtype=torch.float64)).Q
        Rv = torch.linalg.qr(torch.randn(video_dim, video_dim, generator=generator, dtype=torch.float64)).Q
        k = min(audio_dim, video_dim)
        R = Ra[:, :k] @ Rv[:, :k].T                                     # singular values: k ones
        core = torch.eye(audio_dim + video_dim, dtype=torch.float64)
        core[:audio_dim, audio_dim:] = rho * R
        core[audio_dim:, :audio_dim] = rho * R.T
        B = torch.block_diag(spd_root(audio_dim), spd_root(video_dim))
        cov = B @ core @ B
        return cls((cov + cov.T) / 2, audio_dim, **kwargs)

    @property
    def cross_covariance(self) -> torch.Tensor:
        """``C = Cov(a_0, v_0)``, ``[da, dv]``."""
        return self.covariance[:self.audio_dim, self.audio_dim:]

    def bases(self) -> tuple[GaussianBase, GaussianBase]:
        """The exact marginal ε-predictors ``(audio, video)``."""
        return self.base_a, self.base_v

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` real pairs ``(a_0, v_0)`` from the joint (float64)."""
        L = torch.linalg.cholesky(self.covariance)
        x = torch.randn(n, L.shape[0], generator=generator, dtype=torch.float64) @ L.T
        return x[:, :self.audio_dim], x[:, self.audio_dim:]

    def sample_independent(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` fake pairs: each modality drawn from its exact marginal, independently."""
        a, _ = self.sample(n, generator)
        _, v = self.sample(n, generator)
        return a, v

    def noisy_covariance(self, t: torch.Tensor) -> torch.Tensor:
        """``K_t`` of the noisy joint for each timestep in ``t [U]`` → ``[U, d, d]``."""
        t = t.long().cpu()
        ab = torch.cat([self.base_a.alphas_cumprod()[t][:, None].expand(-1, self.audio_dim),
                        self.base_v.alphas_cumprod()[t][:, None].expand(-1, self.video_dim)], dim=1)
        scale = ab.sqrt()
        return scale[:, :, None] * self.covariance * scale[:, None, :] + torch.diag_embed(1 - ab)

    def _log_r_terms(self, unique_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``log r_t = −½ xᵀ P_t x + c_t``: ``P_t = K_t^{-1} − blockdiag((K_t^A)^{-1}, (K_t^V)^{-1})``."""
        da = self.audio_dim
        K = self.noisy_covariance(unique_t)
        Ka, Kv = K[:, :da, :da], K[:, da:, da:]
        P = torch.linalg.inv(K)
        P[:, :da, :da] -= torch.linalg.inv(Ka)
        P[:, da:, da:] -= torch.linalg.inv(Kv)
        c = -0.5 * (torch.logdet(K) - torch.logdet(Ka) - torch.logdet(Kv))
        return P, c

    def log_r(self, a_t: torch.Tensor, v_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``log q_t(a, v) − log q_t^A(a) − log q_t^V(v)`` per pair (differentiable in the inputs)."""
        P, c = (x.to(a_t.device) for x in _per_timestep(t, self._log_r_terms))
        x = torch.cat([a_t, v_t], dim=-1).to(torch.float64)
        return (-0.5 * torch.einsum("ni,nij,nj->n", x, P, x) + c).to(a_t.dtype)

    def grad_log_r(self, a_t: torch.Tensor, v_t: torch.Tensor,
                   t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Closed-form ``(∇_a log r_t, ∇_v log r_t) = −P_t x`` split by modality."""
        P, _ = (x.to(a_t.device) for x in _per_timestep(t, self._log_r_terms))
        g = -torch.einsum("nij,nj->ni", P, torch.cat([a_t, v_t], dim=-1).to(torch.float64))
        return g[:, :self.audio_dim].to(a_t.dtype), g[:, self.audio_dim:].to(v_t.dtype)

    def residual_module(self) -> "GaussianLogRatio":
        """The closed-form "discriminator": an ``nn.Module`` whose forward is ``log r_t``."""
        return GaussianLogRatio(self)


class GaussianLogRatio(nn.Module):
    """``forward(a_t, v_t, t) = log r_t``: the optimal discriminator's logit, usable as ``D``."""

    def __init__(self, world: GaussianWorld):
        super().__init__()
        self.world = world

    def forward(self, a_t: torch.Tensor, v_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.world.log_r(a_t, v_t, t)


class VectorDiscriminator(nn.Module):
    """MLP joint discriminator on flat vectors (the Gaussian tests): ``[N, da] × [N, dv] → [N]``."""

    def __init__(self, *, audio_dim: int, video_dim: int, hidden: int = 128, time_dim: int = 64,
                 depth: int = 2):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.audio_dim, self.video_dim = int(audio_dim), int(video_dim)
        self.config = dict(audio_dim=self.audio_dim, video_dim=self.video_dim, hidden=hidden,
                           time_dim=time_dim, depth=depth)
        self.time = TimeEmbedding(dim=time_dim)
        dims = [self.audio_dim + self.video_dim] + [hidden] * depth
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims[:-1], dims[1:]))
        self.films = nn.ModuleList(nn.Linear(time_dim, 2 * hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, 1)

    def forward(self, a_t: torch.Tensor, v_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``logit D [N]`` from flattened inputs."""
        a, v = a_t.flatten(1), v_t.flatten(1)
        if a.shape[1] != self.audio_dim or v.shape[1] != self.video_dim:
            raise ValueError(f"inputs flatten to {a.shape[1]} (audio) and {v.shape[1]} (video) "
                             f"features; this discriminator was built for {self.audio_dim} and "
                             f"{self.video_dim}")
        if a.shape[0] != v.shape[0] or t.shape != (a.shape[0],):
            raise ValueError(f"batch sizes disagree: audio {a.shape[0]}, video {v.shape[0]}, "
                             f"t {tuple(t.shape)}")
        temb = self.time(t)
        h = torch.cat([a, v], dim=-1)
        for layer, film in zip(self.layers, self.films):
            scale, shift = film(temb).chunk(2, dim=-1)
            h = F.silu(layer(h) * (1 + scale) + shift)
        return self.out(h).squeeze(-1)
