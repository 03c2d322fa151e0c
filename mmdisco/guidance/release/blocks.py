"""Layers of the released discriminators, named so that state-dict keys equal the release's.

Why these names: ``load_state_dict(strict=True)`` matches attribute paths, so every attribute and
index here (``video_in_layers.2.video_conv_spatial``, ``fm.attn_layers.layers.3.1.net.0.0``…) is
the release's; the code is our own. Layouts: audio ``[N, C, T, M]`` or ``[N, C, L]``, video
``[N, F, C, H, W]``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mmdisco.guidance.release.settings import FUSIONS, HEAD_DIM, HEADS, ReleasedArch


# --------------------------------------------------------------------------- building blocks
def _timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features ``[sin | cos]`` with frequencies ``exp(−ln(1e4) k / (dim/2 − 1))``."""
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(-math.log(10000.0) * k / (half - 1))
    args = t[:, None].float() * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class _TimeMLP(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.linear_1, self.linear_2 = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class TimeEncoder(nn.Module):
    """Integer timestep → sinusoidal features → Linear–SiLU–Linear."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.projection = _TimeMLP(dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.projection(_timestep_features(t, self.dim).to(self.projection.linear_1.weight.dtype))


class _Norm32(nn.Module):
    """GroupNorm(32) in float32. Video ``[N, F, C, H, W]`` is normalised as ``[N, C, F, H, W]``
    (statistics over all frames) unless ``F == C``, where the release leaves it as is."""

    def __init__(self, channels: int, affine: bool = True):
        super().__init__()
        self.channels = channels
        self.GroupNorm = nn.GroupNorm(32, channels, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        swap = x.ndim == 5 and x.shape[1] != self.channels
        y = self.GroupNorm((x.transpose(1, 2) if swap else x).float()).to(x.dtype)
        return y.transpose(1, 2) if swap else y


class _VideoConv(nn.Module):
    """"2d+1d": a k×k convolution on every frame, then a k-tap convolution over frames."""

    def __init__(self, c_in: int, c_out: int, k: int):
        super().__init__()
        self.video_conv_spatial = nn.Conv2d(c_in, c_out, k, padding="same")
        self.video_conv_temporal = nn.Conv1d(c_out, c_out, k, padding="same")

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        n, f = v.shape[:2]
        h = self.video_conv_spatial(v.flatten(0, 1))
        c, hh, ww = h.shape[1:]
        h = h.reshape(n, f, c, hh, ww).permute(0, 3, 4, 2, 1).reshape(n * hh * ww, c, f)
        h = self.video_conv_temporal(h)
        return h.reshape(n, hh, ww, c, f).permute(0, 4, 3, 1, 2)


class _PointwiseVideoConv(nn.Module):
    """A 1×1×1 convolution (channel mixing) on ``[N, F, C, H, W]``."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.video_conv = nn.Conv3d(c_in, c_out, 1)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.video_conv(v.transpose(1, 2)).transpose(1, 2)


class _AudioConv(nn.Module):
    """Conv2d on ``[N, C, T, M]`` or Conv1d on ``[N, C, L]``, "same" padding."""

    def __init__(self, c_in: int, c_out: int, k: int, kind: str, dilation: int = 1):
        super().__init__()
        conv = nn.Conv2d if kind == "2d" else nn.Conv1d
        self.audio_conv = conv(c_in, c_out, k, padding="same", dilation=dilation)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.audio_conv(a)


class _ModulatedNorm(nn.Module):
    """Affine-free GroupNorm, then ``· (1 + scale) + shift`` from SiLU–Linear of the embedding."""

    def __init__(self, emb_dims: int, channels: int, channel_dim: int):
        super().__init__()
        self.channel_dim = channel_dim
        self.norm = _Norm32(channels, affine=False)
        self.projection = nn.Sequential(nn.SiLU(), nn.Linear(emb_dims, 2 * channels))

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.projection(emb).chunk(2, dim=1)
        shape = [h.shape[0]] + [1] * (h.ndim - 1)
        shape[self.channel_dim] = -1
        return self.norm(h) * (1 + scale.reshape(shape)) + shift.reshape(shape)


class _Stem(nn.Module):
    """First 3×3 convolutions of each modality (no normalisation)."""

    def __init__(self, arch: ReleasedArch, ch: int):
        super().__init__()
        self.video_conv = _VideoConv(arch.video_channels, ch, 3)
        self.audio_conv = _AudioConv(arch.audio_channels, ch, 3, arch.audio_conv)

    def forward(self, v, a, emb_v, emb_a):
        return self.video_conv(v), self.audio_conv(a)


def _down_video(v: torch.Tensor) -> torch.Tensor:
    return F.avg_pool3d(v.transpose(1, 2), (1, 2, 2), (1, 2, 2)).transpose(1, 2)   # H, W / 2


def _down_audio(a: torch.Tensor) -> torch.Tensor:
    if a.ndim == 4:
        return F.avg_pool2d(a, (1, 2), (1, 2))     # mel bins / 2, time kept
    return F.avg_pool1d(a, 4, 4)                    # waveform samples / 4


class _DualResBlock(nn.Module):
    """One residual block per modality side by side (no exchange between them); the video branch
    is modulated by ``emb_v`` (time + video text), the audio branch by ``emb_a``."""

    def __init__(self, c_in: int, c_out: int, arch: ReleasedArch, dilation: int, down: bool):
        super().__init__()
        kind, emb = arch.audio_conv, arch.time_dims
        self.down = down
        self.video_in_layers = nn.Sequential(_Norm32(c_in), nn.SiLU(), _VideoConv(c_in, c_out, 3))
        self.audio_in_layers = nn.Sequential(_Norm32(c_in), nn.SiLU(),
                                             _AudioConv(c_in, c_out, 3, kind, dilation))
        self.video_out_layers = nn.ModuleList([_ModulatedNorm(emb, c_out, 2), nn.SiLU(),
                                               nn.Dropout(0.0), _PointwiseVideoConv(c_out, c_out)])
        self.audio_out_layers = nn.ModuleList([_ModulatedNorm(emb, c_out, 1), nn.SiLU(),
                                               nn.Dropout(0.0), _AudioConv(c_out, c_out, 1, kind)])
        same = c_in == c_out
        self.video_skip_connection = nn.Identity() if same else _PointwiseVideoConv(c_in, c_out)
        self.audio_skip_connection = nn.Identity() if same else _AudioConv(c_in, c_out, 1, kind)

    @staticmethod
    def _out(layers: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        norm, act, drop, conv = layers
        return conv(drop(act(norm(h, emb))))

    def forward(self, v, a, emb_v, emb_a):
        hv, ha = self.video_in_layers(v), self.audio_in_layers(a)
        if self.down:
            hv, v, ha, a = _down_video(hv), _down_video(v), _down_audio(ha), _down_audio(a)
        v = self.video_skip_connection(v) + self._out(self.video_out_layers, hv, emb_v)
        a = self.audio_skip_connection(a) + self._out(self.audio_out_layers, ha, emb_a)
        return v, a


class FeatureExtractor(nn.Module):
    """Stem, then per level ``num_res_blocks`` blocks and (except last) a downsampling block;
    returns per-frame video features ``[N, F, C]`` and per-step audio features ``[N, T, C]``."""

    def __init__(self, arch: ReleasedArch):
        super().__init__()
        ch = arch.model_channels * arch.channel_mult[0]
        blocks, k = [_Stem(arch, ch)], 1          # k: the release's running dilation counter
        for level, mult in enumerate(arch.channel_mult):
            for _ in range(arch.num_res_blocks):
                out = arch.model_channels * mult
                blocks.append(_DualResBlock(ch, out, arch, 2 ** (k % arch.max_dila), down=False))
                ch, k = out, k + 1
            if level < len(arch.channel_mult) - 1:
                blocks.append(_DualResBlock(ch, ch, arch, 2 ** (k % arch.max_dila), down=True))
                k += 1
        self.input_blocks = nn.ModuleList(nn.ModuleList([b]) for b in blocks)
        self.out_channels = ch

    def forward(self, v, a, emb_v, emb_a):
        for stage in self.input_blocks:
            v, a = stage[0](v, a, emb_v, emb_a)
        a = a.mean(dim=3) if a.ndim == 4 else a
        return v.mean(dim=(3, 4)), a.transpose(1, 2)


# --------------------------------------------------------------------------- fusion
class _Attention(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        inner = HEADS * HEAD_DIM
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, s, _ = x.shape
        q, k, v = (f(x).reshape(n, s, HEADS, HEAD_DIM).transpose(1, 2)
                   for f in (self.to_q, self.to_k, self.to_v))
        w = torch.softmax(q @ k.transpose(-1, -2) * HEAD_DIM ** -0.5, dim=-1)
        return self.to_out((w @ v).transpose(1, 2).reshape(n, s, HEADS * HEAD_DIM))


class _FeedForward(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU()), nn.Dropout(0.0),
                                 nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _Layers(nn.Module):
    """Pre-norm encoder: ``depth`` × (attention, feed-forward), each ``x + block(LayerNorm(x))``."""

    def __init__(self, dim: int, depth: int):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([nn.LayerNorm(dim), _Attention(dim) if i % 2 == 0 else _FeedForward(dim)])
            for i in range(2 * depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for norm, block in self.layers:
            x = block(norm(x)) + x
        return x


class _PositionTable(nn.Module):
    def __init__(self, length: int, dim: int):
        super().__init__()
        self.emb = nn.Embedding(length, dim)


class _TokenTransformer(nn.Module):
    """[class token,] tokens + learned positions → encoder → LayerNorm → Linear."""

    def __init__(self, arch: ReleasedArch):
        super().__init__()
        dim, self.max_seq_len = arch.fusion_channels, arch.max_seq_len
        self.use_class_token = arch.use_class_token
        if self.use_class_token:
            self.cls_emb = nn.Parameter(torch.randn(1, 1, dim) * dim ** -0.5)
        self.pos_emb = _PositionTable(arch.max_seq_len, dim)
        self.attn_layers = _Layers(dim, arch.num_attn_layers + int(self.use_class_token))
        self.norm = nn.LayerNorm(dim)
        self.out_layer = nn.Linear(dim, arch.fusion_out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_class_token:
            x = torch.cat([self.cls_emb.to(x.dtype).expand(x.shape[0], -1, -1), x], dim=1)
        if x.shape[1] > self.max_seq_len:
            raise ValueError(f"the fusion transformer sees {x.shape[1]} tokens (class, time, video "
                             f"frames, audio steps) but has {self.max_seq_len} positions: give "
                             f"fewer frames or a shorter audio latent")
        x = x + self.pos_emb.emb.weight[: x.shape[1]].to(x.dtype)
        return self.out_layer(self.norm(self.attn_layers(x)))


class Fusion(nn.Module):
    """``aggregate_time_and_cat_ch``: [mean_F video ; mean_T audio]. ``cat_time_and_apply_transformer``:
    tokens [time, video frames, audio steps] through a transformer, read at the class token."""

    def __init__(self, arch: ReleasedArch, c_in: int):
        super().__init__()
        if arch.fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {arch.fusion!r}; the release's settings use {FUSIONS}")
        self.kind = arch.fusion
        if self.kind == FUSIONS[0]:
            self.out_channels = 2 * c_in
            return
        self.fm_video_in = nn.Linear(c_in, arch.fusion_channels)
        self.fm_audio_in = nn.Linear(c_in, arch.fusion_channels)
        self.fm_time_in = nn.Linear(arch.time_dims, arch.fusion_channels)
        self.fm = _TokenTransformer(arch)
        self.out_channels = arch.fusion_out_channels

    def forward(self, v: torch.Tensor, a: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        if self.kind == FUSIONS[0]:
            return torch.cat([v.mean(dim=1), a.mean(dim=1)], dim=1)
        tokens = torch.cat([self.fm_time_in(temb)[:, None], self.fm_video_in(v), self.fm_audio_in(a)], 1)
        out = self.fm(tokens)
        return out[:, 0] if self.fm.use_class_token else out.mean(dim=1)
