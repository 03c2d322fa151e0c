"""The joint discriminator ``D(a_t, v_t, t)`` over noisy latents, and its input gradients.

Notation (see ``docs/method.md``): ``logit D = log r_t`` at the optimum, with
``r_t = q_t(a, v) / (p_t^A(a) p_t^V(v))``; the sampler adds the residual
``r^m = −σ_t^m ∇_{x_t^m} logit D`` to each base model's ε prediction.

Fusion is deliberately non-separable: a head linear in concatenated per-modality features
gives ``logit = f(a) + g(v)``, whose audio gradient ignores the video and cannot align
anything. Each modality is encoded by ``AudioFeatures`` / ``VideoFeatures`` (strided ConvFiLM
layers and a learned pooling that keeps pitch, colour and position). The logit is the sum of two non-separable parts:
- ``temporal``: audio and video features resampled to ``F`` common steps, concatenated per
  step, scored by an MLP and averaged over steps (timing coupling);
- ``semantic``: time-pooled audio and video embeddings (pooled before any temporal mixing,
  so it is blind to timing) combined by an MLP over ``[a, v, a ⊙ v]`` (colour ↔ pitch).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mmdisco.bases.protocol import sigma


# --------------------------------------------------------------------------- building blocks
def timestep_embedding(t: torch.Tensor, dim: int, *, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[N, dim]`` of (integer or real) timesteps ``t [N]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float64) / half)
    args = t.to(torch.float64)[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimeEmbedding(nn.Module):
    """Sinusoidal timestep features followed by a two-layer MLP."""

    def __init__(self, *, dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        dtype = self.mlp[0].weight.dtype
        return self.mlp(timestep_embedding(t, self.dim).to(dtype))


def _groups(channels: int) -> int:
    """Largest of 8, 4, 2, 1 that divides ``channels`` (GroupNorm groups)."""
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


class FiLMNorm(nn.Module):
    """GroupNorm whose scale and shift are modulated by the time embedding (FiLM)."""

    def __init__(self, *, channels: int, time_dim: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.to_scale_shift = nn.Linear(time_dim, 2 * channels)
        nn.init.zeros_(self.to_scale_shift.weight)
        nn.init.zeros_(self.to_scale_shift.bias)

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.to_scale_shift(temb).chunk(2, dim=-1)
        extra = (1,) * (h.ndim - 2)
        h = self.norm(h)
        return h * (1 + scale.reshape(*scale.shape, *extra)) + shift.reshape(*shift.shape, *extra)


class ConvFiLM(nn.Module):
    """Convolution → time-modulated GroupNorm → SiLU (2D or 1D)."""

    def __init__(self, *, dims: int, c_in: int, c_out: int, time_dim: int, stride: int = 1):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv1d
        self.conv = conv(c_in, c_out, kernel_size=3, stride=stride, padding=1)
        self.film = FiLMNorm(channels=c_out, time_dim=time_dim)

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return F.silu(self.film(self.conv(h), temb))


class Encoder2d(nn.Module):
    """Three 2D ConvFiLM layers; the first two halve the resolution (cheap on CPU)."""

    def __init__(self, *, c_in: int, width: int, time_dim: int):
        super().__init__()
        self.layers = nn.ModuleList([
            ConvFiLM(dims=2, c_in=c_in, c_out=width, time_dim=time_dim, stride=2),
            ConvFiLM(dims=2, c_in=width, c_out=width, time_dim=time_dim, stride=2),
            ConvFiLM(dims=2, c_in=width, c_out=width, time_dim=time_dim),
        ])

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            h = layer(h, temb)
        return h


class FiLMHead(nn.Module):
    """MLP ``in → hidden (time-modulated) → 1``: a nonlinear score over fused features."""

    def __init__(self, *, d_in: int, hidden: int, time_dim: int):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.to_scale_shift = nn.Linear(time_dim, 2 * hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.to_scale_shift(temb).chunk(2, dim=-1)
        if x.ndim == 3:  # [N, F, d]: the same modulation at every step
            scale, shift = scale[:, None], shift[:, None]
        h = F.silu(self.inp(x) * (1 + scale) + shift)
        return self.out(h).squeeze(-1)


def resample_time(h: torch.Tensor, length: int) -> torch.Tensor:
    """Resample ``[N, C, L]`` to ``[N, C, length]`` (average pooling down, linear up)."""
    if h.shape[-1] == length:
        return h
    if h.shape[-1] > length:
        return F.adaptive_avg_pool1d(h, length)
    return F.interpolate(h, size=length, mode="linear", align_corners=False)


def _check_inputs(a_t: torch.Tensor, v_t: torch.Tensor, t: torch.Tensor,
                  audio_shape: tuple[int, ...], video_shape: tuple[int, ...]) -> None:
    """Refuse inputs whose shapes do not match the discriminator's latent shapes."""
    if tuple(a_t.shape[1:]) != tuple(audio_shape):
        raise ValueError(f"audio input has shape {tuple(a_t.shape)}; this discriminator was built "
                         f"for [N, *{tuple(audio_shape)}]")
    if tuple(v_t.shape[1:]) != tuple(video_shape):
        raise ValueError(f"video input has shape {tuple(v_t.shape)}; this discriminator was built "
                         f"for [N, *{tuple(video_shape)}]")
    if a_t.shape[0] != v_t.shape[0] or t.shape != (a_t.shape[0],):
        raise ValueError(f"batch sizes disagree: audio {a_t.shape[0]}, video {v_t.shape[0]}, "
                         f"t {tuple(t.shape)} (t must be a 1-D tensor with one timestep per pair)")


# --------------------------------------------------------------------------- per-modality features
class AudioFeatures(nn.Module):
    """Noisy audio latent ``[N, C, T, M]`` → features per time step ``[N, w, T']``.

    Strided ConvFiLM layers, then a learned pooling over a coarse grid of mel bands (flattened
    and projected), so that pitch survives (a plain mean over mel bins would discard it).
    """

    def __init__(self, *, channels: int, width: int, time_dim: int, bands: int):
        super().__init__()
        self.bands = int(bands)
        self.enc = Encoder2d(c_in=channels, width=width, time_dim=time_dim)
        self.proj = nn.Linear(width * self.bands, width)

    def forward(self, a_t: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.enc(a_t, temb)                                          # [N, w, T', M']
        h = F.adaptive_avg_pool2d(h, (h.shape[-2], self.bands))
        return rearrange(self.proj(rearrange(h, "n c t m -> n t (c m)")), "n t w -> n w t")


class VideoFeatures(nn.Module):
    """Noisy video latent ``[N, F, C, H, W]`` → features per frame ``[N, w, F]``.

    The same ConvFiLM layers on every frame, then a learned pooling over a coarse grid of image
    cells, so that colour and ball position survive.
    """

    def __init__(self, *, channels: int, width: int, time_dim: int, grid: int):
        super().__init__()
        self.grid = int(grid)
        self.enc = Encoder2d(c_in=channels, width=width, time_dim=time_dim)
        self.proj = nn.Linear(width * self.grid ** 2, width)

    def forward(self, v_t: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        n, frames = v_t.shape[:2]
        per_frame = self.enc(rearrange(v_t, "n f c h w -> (n f) c h w"),
                             temb.repeat_interleave(frames, dim=0))
        cells = F.adaptive_avg_pool2d(per_frame, self.grid)
        h = self.proj(rearrange(cells, "nf c h w -> nf (c h w)"))
        return rearrange(h, "(n f) w -> n w f", n=n)


# --------------------------------------------------------------------------- discriminators
class Discriminator(nn.Module):
    """Convolutional joint discriminator on noisy latents, ``[N, C, T, M] × [N, F, C, H, W] → [N]``."""

    def __init__(self, *, audio_shape: tuple[int, int, int], video_shape: tuple[int, int, int, int],
                 width: int = 32, time_dim: int = 64, head_hidden: int = 64,
                 num_frames_fused: int | None = None, audio_bands: int = 4, video_grid: int = 4):
        super().__init__()
        if len(audio_shape) != 3 or len(video_shape) != 4:
            raise ValueError(f"audio_shape must be (C, T, M) and video_shape (F, C, H, W); got "
                             f"{tuple(audio_shape)} and {tuple(video_shape)}")
        self.audio_shape = tuple(int(s) for s in audio_shape)
        self.video_shape = tuple(int(s) for s in video_shape)
        self.num_frames_fused = int(num_frames_fused or self.video_shape[0])
        if self.num_frames_fused < 1:
            raise ValueError(f"num_frames_fused must be >= 1, got {num_frames_fused}")
        self.config = dict(audio_shape=self.audio_shape, video_shape=self.video_shape, width=width,
                           time_dim=time_dim, head_hidden=head_hidden,
                           num_frames_fused=self.num_frames_fused, audio_bands=audio_bands,
                           video_grid=video_grid)
        self.audio_bands, self.video_grid = int(audio_bands), int(video_grid)
        self.time = TimeEmbedding(dim=time_dim)
        self.audio = AudioFeatures(channels=self.audio_shape[0], width=width, time_dim=time_dim,
                                   bands=self.audio_bands)
        self.video = VideoFeatures(channels=self.video_shape[1], width=width, time_dim=time_dim,
                                   grid=self.video_grid)
        self.audio_temporal = ConvFiLM(dims=1, c_in=width, c_out=width, time_dim=time_dim)
        self.video_temporal = ConvFiLM(dims=1, c_in=width, c_out=width, time_dim=time_dim)
        self.temporal_head = FiLMHead(d_in=2 * width, hidden=head_hidden, time_dim=time_dim)
        self.semantic_head = FiLMHead(d_in=3 * width, hidden=head_hidden, time_dim=time_dim)

    def encode_audio(self, a_t: torch.Tensor, temb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Audio features per fused step ``[N, F, w]`` and its timing-blind embedding ``[N, w]``."""
        h = self.audio(a_t, temb)
        pooled = h.mean(dim=-1)
        steps = self.audio_temporal(resample_time(h, self.num_frames_fused), temb)
        return rearrange(steps, "n w f -> n f w"), pooled

    def encode_video(self, v_t: torch.Tensor, temb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Video features per fused step ``[N, F, w]`` and its timing-blind embedding ``[N, w]``."""
        h = self.video(v_t, temb)
        pooled = h.mean(dim=-1)
        steps = self.video_temporal(resample_time(h, self.num_frames_fused), temb)
        return rearrange(steps, "n w f -> n f w"), pooled

    def forward(self, a_t: torch.Tensor, v_t: torch.Tensor, t: torch.Tensor, *,
                return_parts: bool = False):
        """``logit D [N]``; with ``return_parts`` also ``{"temporal": [N], "semantic": [N]}``."""
        _check_inputs(a_t, v_t, t, self.audio_shape, self.video_shape)
        return self.fuse(a_t, v_t, self.time(t), return_parts=return_parts)

    def fuse(self, a_t: torch.Tensor, v_t: torch.Tensor, temb: torch.Tensor, *,
             return_parts: bool = False):
        """The logit from both encoders under the time embedding ``temb`` (a conditional
        discriminator's carries its condition too): temporal part + semantic part."""
        a_steps, a_pooled = self.encode_audio(a_t, temb)
        v_steps, v_pooled = self.encode_video(v_t, temb)
        temporal = self.temporal_head(torch.cat([a_steps, v_steps], dim=-1), temb).mean(dim=-1)
        semantic = self.semantic_head(torch.cat([a_pooled, v_pooled, a_pooled * v_pooled], dim=-1), temb)
        logit = temporal + semantic
        if return_parts:
            return logit, {"temporal": temporal, "semantic": semantic}
        return logit


# --------------------------------------------------------------------------- gradients
def input_gradients(D: nn.Module, a_t: torch.Tensor, v_t: torch.Tensor, t: torch.Tensor, *,
                    create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logit, ∇_a Σ logit, ∇_v Σ logit)``; per sample, since pairs do not interact in ``D``.

    With ``create_graph`` the gradients keep their graph (double backward into ``D``'s
    parameters) and so does ``logit``; without it everything returned is detached.
    """
    with torch.enable_grad():
        a = a_t.detach().requires_grad_(True)
        v = v_t.detach().requires_grad_(True)
        logit = D(a, v, t)
        grad_a, grad_v = torch.autograd.grad(logit.sum(), (a, v), create_graph=create_graph)
    if not create_graph:
        logit = logit.detach()
    return logit, grad_a, grad_v


def residuals(D: nn.Module, a_t: torch.Tensor, v_t: torch.Tensor, t: torch.Tensor,
              alphas_a: torch.Tensor, alphas_v: torch.Tensor, *,
              create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual noise ``r^m = −σ_t^m ∇_{x^m} logit D``, each modality with its own ``ᾱ``."""
    _, grad_a, grad_v = input_gradients(D, a_t, v_t, t, create_graph=create_graph)
    return -sigma(alphas_a, t, grad_a) * grad_a, -sigma(alphas_v, t, grad_v) * grad_v
