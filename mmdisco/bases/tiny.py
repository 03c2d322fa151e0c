"""Tiny single-modal diffusion bases for the embedded default, built from diffusers UNets.

Notation (README, "The method"): ``x_t = sqrt(ᾱ_t) x_0 + σ_t ε`` with ``σ_t = sqrt(1 − ᾱ_t)``.
The network may predict ε, the velocity ``v = sqrt(ᾱ_t) ε − σ_t x_0`` (Salimans & Ho 2022,
https://arxiv.org/abs/2202.00512), ``x_0`` itself, or an EDM-preconditioned target (see
``TinyBase._edm``); ``eps`` always returns ε, converted exactly, e.g. ``ε = sqrt(ᾱ_t) v + σ_t x_t``
or ``ε = (x_t − sqrt(ᾱ_t) x̂_0) / σ_t``.

Layouts: audio latent ``[N, C, T, M]``, video latent ``[N, F, C, H, W]``. The ``unet2d`` arch
folds ``patch × patch`` pixels into channels and, for video, either stacks the frames as
channels or tiles them into one image (weights shared across frames; ``unet_layout``);
``unet1d`` (audio only) runs over time with ``C × M`` channels.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch
from diffusers import UNet1DModel, UNet2DModel
from einops import rearrange
from safetensors.torch import load_file

from mmdisco.bases.protocol import (CONFIG_FILE, check_input, scheduler_class, sigma,
                                    sqrt_alpha_bar)
from mmdisco.config import ConfigError, TinyBaseConfig, build, check_config, to_dict
from mmdisco.io import atomic_path, write_json

KIND = "tiny"
UNET_DIR = "unet"


def modality_of(latent_shape: tuple[int, ...]) -> str:
    """Audio latents are ``(C, T, M)``, video latents ``(F, C, H, W)``."""
    if len(latent_shape) == 3:
        return "audio"
    if len(latent_shape) == 4:
        return "video"
    raise ValueError(f"latent shape {tuple(latent_shape)} is neither audio (C, T, M) nor "
                     f"video (F, C, H, W)")


def check_shape(cfg: TinyBaseConfig, latent_shape: tuple[int, ...], key: str = "base") -> None:
    """Refuse a latent shape the architecture cannot divide down to its coarsest level."""
    modality = modality_of(latent_shape)
    levels = len(cfg.channels)
    if cfg.arch == "unet1d":
        if modality != "audio":
            raise ConfigError(f"{key}.arch 'unet1d' is for audio latents (C, T, M); got "
                              f"{modality} latents {tuple(latent_shape)}: use 'unet2d'")
        sizes = {"T": latent_shape[1]}
        factor = 2 ** (levels - 1)
    else:
        sizes = dict(zip("HW", latent_shape[-2:])) if modality == "video" else \
            dict(zip("TM", latent_shape[-2:]))
        factor = cfg.patch * 2 ** (levels - 1)
    for name, n in sizes.items():
        if n % factor:
            raise ConfigError(f"latent axis {name} = {n} must be divisible by {factor} "
                              f"({key}.patch × 2^(len({key}.channels) − 1)); change "
                              f"{key}.channels or {key}.patch")


def unet_layout(cfg: TinyBaseConfig, latent_shape: tuple[int, ...]) -> tuple[str, dict[str, int]]:
    """einops pattern (latent → UNet input) and its axis sizes; reversed, it maps back."""
    p = cfg.patch
    if cfg.arch == "unet1d":
        return "n c t m -> n (c m) t", {"c": latent_shape[0]}
    if len(latent_shape) == 3:
        return "n c (t p1) (m p2) -> n (c p1 p2) t m", {"c": latent_shape[0], "p1": p, "p2": p}
    f, c, h, w = latent_shape
    if cfg.frame_layout == "tiles":
        return ("n (r k) c (h p1) (w p2) -> n (c p1 p2) (r h) (k w)",
                {"r": tile_rows(f), "c": c, "h": h // p, "w": w // p, "p1": p, "p2": p})
    return "n f c (h p1) (w p2) -> n (f c p1 p2) h w", {"f": f, "c": c, "p1": p, "p2": p}


def tile_rows(frames: int) -> int:
    """Rows of the near-square grid that tiles ``frames`` frames (the largest divisor ≤ √F)."""
    return max(d for d in range(1, math.isqrt(frames) + 1) if frames % d == 0)


def _condition(unet: torch.nn.Module, cond_dim: int) -> torch.nn.Module:
    """Give a ``class_embed_type="identity"`` UNet2DModel a learned projection of the prompt
    embedding ``[N, cond_dim]``, added to the timestep embedding (diffusers adds
    ``class_embedding(class_labels)`` to it)."""
    temb = unet.time_embedding.linear_2.out_features
    unet.class_embedding = torch.nn.Linear(cond_dim, temb)
    return unet


def build_unet(cfg: TinyBaseConfig, latent_shape: tuple[int, ...], cond_dim: int = 0) -> torch.nn.Module:
    """A freshly initialised diffusers UNet for latents of ``latent_shape``; with ``cond_dim``
    it also takes a prompt embedding of that size (``TinyBase.forward(..., cond)``)."""
    check_shape(cfg, latent_shape)
    if cond_dim and cfg.arch != "unet2d":
        raise ConfigError(f"a conditional tiny base (condition: caption) needs arch 'unet2d'; "
                          f"got {cfg.arch!r}")
    pattern, axes = unet_layout(cfg, latent_shape)
    ch, *size = rearrange(torch.zeros(1, *latent_shape), pattern, **axes).shape[1:]
    if cfg.arch == "unet1d":
        n = len(cfg.channels)
        return UNet1DModel(
            in_channels=ch, out_channels=ch, block_out_channels=tuple(cfg.channels),
            down_block_types=("DownResnetBlock1D",) * n, up_block_types=("UpResnetBlock1D",) * (n - 1),
            mid_block_type="MidResTemporalBlock1D", out_block_type="OutConv1DBlock",
            layers_per_block=cfg.layers_per_block, use_timestep_embedding=True,
            time_embedding_type="positional", flip_sin_to_cos=False, freq_shift=1.0,
            act_fn="mish", norm_num_groups=8, extra_in_channels=0, sample_size=size[0])
    down = tuple("AttnDownBlock2D" if i in cfg.attn_levels else "DownBlock2D"
                 for i in range(len(cfg.channels)))
    up = tuple("AttnUpBlock2D" if i in cfg.attn_levels else "UpBlock2D"
               for i in reversed(range(len(cfg.channels))))
    unet = UNet2DModel(
        sample_size=tuple(size), in_channels=ch, out_channels=ch,
        block_out_channels=tuple(cfg.channels), down_block_types=down, up_block_types=up,
        layers_per_block=cfg.layers_per_block, norm_num_groups=cfg.norm_groups,
        attention_head_dim=cfg.attn_head_dim, add_attention=cfg.mid_attention,
        class_embed_type="identity" if cond_dim else None)
    return _condition(unet, cond_dim) if cond_dim else unet


def make_scheduler(cfg: TinyBaseConfig, kind: str):
    """A fresh diffusers scheduler for this schedule, stepping on ε (what ``eps`` returns).

    It never clips: ``TinyBase.eps`` applies ``clip_sample`` to its own x̂_0, so that the ε the
    sampler (and any guidance added to it) hands over is used as is."""
    return scheduler_class(kind)(
        num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
        prediction_type="epsilon", clip_sample=False,  # TinyBase.eps clips x̂_0 itself
        timestep_spacing="trailing")


class TinyBase(torch.nn.Module):
    """A tiny diffusers UNet seen through the ``BaseModel`` protocol (ε out, any parameterisation inside).

    Conditional (``cond_dim > 0``, trained with ``condition: caption``): ``eps(x_t, t, cond)``
    takes prompt embeddings ``[N, cond_dim]`` and applies the base's own classifier-free
    guidance ``ε = ε_u + w (ε_c − ε_u)``, ``w = guidance_scale``, ``ε_u`` the prediction for
    ``uncond`` (the empty prompt's embedding it was trained with); ``cond=None`` gives ``ε_u``.
    """

    def __init__(self, cfg: TinyBaseConfig, latent_shape: tuple[int, ...],
                 unet: torch.nn.Module | None = None, *, cond_dim: int = 0,
                 uncond: torch.Tensor | None = None, guidance_scale: float = 1.0):
        super().__init__()
        self.cfg = check_config(cfg, "model")
        self.latent_shape = tuple(int(s) for s in latent_shape)
        self.modality = modality_of(self.latent_shape)
        self.num_train_timesteps = cfg.num_train_timesteps
        self.cond_dim = int(cond_dim)
        self.unet = unet if unet is not None else build_unet(cfg, self.latent_shape, self.cond_dim)
        self.guidance_scale = float(guidance_scale)
        self.uncond = None
        if self.cond_dim:
            self.set_uncond(torch.zeros(1, self.cond_dim) if uncond is None else uncond)
        self._layout = unet_layout(cfg, self.latent_shape)
        self._alpha_bar = make_scheduler(cfg, "ddpm").alphas_cumprod.to(torch.float64)
        self.data_mean = 0.0 if cfg.data_mean is None else cfg.data_mean
        self.sigma_data = 1.0 if cfg.sigma_data is None else cfg.sigma_data

    # ------------------------------------------------------------------ protocol
    def alphas_cumprod(self) -> torch.Tensor:
        """``ᾱ_t`` for t = 0 … T − 1 (float64 CPU), exactly the schedulers' values."""
        return self._alpha_bar.clone()

    def make_scheduler(self, kind: str):
        return make_scheduler(self.cfg, kind)

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """ε prediction, converted exactly from whatever the network predicts.

        With ``clip_sample`` the implied ``x̂_0 = (x_t − σ_t ε)/sqrt(ᾱ_t)`` is clipped to
        ``[-1, 1]`` HERE and ε recomputed from it, and the schedulers never clip. Clipping in
        the scheduler instead would silently absorb a guidance residual wherever ``x̂_0`` is
        saturated and leave only the ``sqrt(1 − ᾱ_prev) ε̂`` term, which moves the sample
        AGAINST the guidance gradient.
        """
        if not self.cond_dim:
            if cond is not None:
                raise ValueError("this tiny base is unconditional (trained with condition: none); "
                                 "pass cond=None")
            return self.constrain_eps(self.output_to_eps(self.forward(x_t, t), x_t, t), x_t, t)
        n, w = x_t.shape[0], self.guidance_scale
        uncond = self.uncond.to(x_t.device, x_t.dtype).expand(n, -1)
        if cond is None:
            out = self.forward(x_t, t, uncond)
        else:
            cond = self._check_cond(cond, n).to(x_t.device, x_t.dtype)
            if w == 1.0:
                out = self.forward(x_t, t, cond)
            else:   # one pass over [uncond; cond]
                out_u, out_c = self.forward(torch.cat([x_t, x_t]), torch.cat([t, t]),
                                            torch.cat([uncond, cond])).chunk(2)
                out = out_u + w * (out_c - out_u)
        return self.constrain_eps(self.output_to_eps(out, x_t, t), x_t, t)

    def set_uncond(self, uncond: torch.Tensor) -> None:
        """The empty prompt's embedding (one row), used for ``cond=None`` and for CFG."""
        self.uncond = self._check_cond(uncond.detach().float().reshape(1, -1), 1)

    def _check_cond(self, cond: torch.Tensor, n: int) -> torch.Tensor:
        if cond.ndim != 2 or cond.shape[0] != n or cond.shape[1] != self.cond_dim:
            raise ValueError(f"{self.modality} base expects prompt embeddings [{n}, "
                             f"{self.cond_dim}], got {list(cond.shape)}")
        return cond

    def constrain_eps(self, eps: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ε whose implied ``x̂_0`` lies in ``[-1, 1]`` (``clip_sample``; identity otherwise).

        The guided sampler applies it again to ``ε + s·r``, so guidance moves ``x̂_0`` only
        within the latents' range and the step stays consistent with the clipped ``x̂_0``.
        """
        if not self.cfg.clip_sample:
            return eps
        a, s = self._coefs(t, x_t)
        x0 = ((x_t - s * eps) / a).clamp(-1.0, 1.0)
        return (x_t - a * x0) / s

    # ------------------------------------------------------------------ parameterisation
    # a = sqrt(ᾱ_t), s = σ_t; "edm" (Karras et al. 2022, https://arxiv.org/abs/2206.00364, in VP
    # form) centres x_t on μ = data_mean and, with σ_d = sigma_data, predicts
    #   F = (x_0 − μ − c_skip x'_t) / c_out,  x'_t = x_t − a μ,
    #   c_skip = a σ_d² / (a² σ_d² + s²),  c_out = σ_d s / sqrt(a² σ_d² + s²),
    # from the input c_in x'_t with c_in = 1 / sqrt(a² σ_d² + s²). With μ = 0, σ_d = 1 it is −v.
    def _coefs(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return sqrt_alpha_bar(self._alpha_bar, t, like), sigma(self._alpha_bar, t, like)

    def _edm(self, t: torch.Tensor, like: torch.Tensor) -> dict[str, torch.Tensor]:
        a, s = self._coefs(t, like)
        sd = self.sigma_data
        norm = (a.square() * sd ** 2 + s.square()).sqrt()
        return {"a": a, "s": s, "c_in": 1.0 / norm, "c_skip": a * sd ** 2 / norm.square(),
                "c_out": sd * s / norm}

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network should output for clean ``x0`` noised with ``noise`` at ``t``."""
        kind = self.cfg.prediction_type
        if kind == "epsilon":
            return noise
        if kind == "sample":
            return x0
        a, s = self._coefs(t, x0)
        if kind == "v_prediction":
            return a * noise - s * x0
        c = self._edm(t, x0)
        x_t_c = a * (x0 - self.data_mean) + s * noise
        return (x0 - self.data_mean - c["c_skip"] * x_t_c) / c["c_out"]

    def output_to_eps(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Convert a network output to ε exactly (identity for ε-prediction)."""
        kind = self.cfg.prediction_type
        if kind == "epsilon":
            return out
        a, s = self._coefs(t, x_t)
        if kind == "sample":
            return (x_t - a * out) / s
        if kind == "v_prediction":
            return a * out + s * x_t
        c = self._edm(t, x_t)
        x_t_c = x_t - a * self.data_mean
        x0_c = c["c_skip"] * x_t_c + c["c_out"] * out
        return (x_t_c - a * x0_c) / s

    def x0_weight(self, t: torch.Tensor) -> torch.Tensor:
        """Weight that the plain MSE on this network's target puts on x_0 errors, per sample [N]."""
        ab = self._alpha_bar[t.long().cpu()].to(t.device)
        snr = ab / (1.0 - ab)
        kind = self.cfg.prediction_type
        if kind == "epsilon":
            return snr
        if kind == "v_prediction":
            return snr + 1.0
        if kind == "sample":
            return torch.ones_like(snr)
        return snr + 1.0 / self.sigma_data ** 2

    # ------------------------------------------------------------------ network
    def forward(self, x_t: torch.Tensor, t: torch.Tensor,
                cond: torch.Tensor | None = None) -> torch.Tensor:
        """The raw network output (per ``cfg.prediction_type``) in the latent layout; a
        conditional base needs ``cond`` (prompt embeddings, ``[N, cond_dim]``)."""
        check_input(self, x_t, t)
        if self.cond_dim and cond is None:
            raise ValueError("a conditional base's forward needs cond (the empty prompt's "
                             "embedding for unconditional rows)")
        if self.cfg.prediction_type == "edm":
            c = self._edm(t, x_t)
            x_t = c["c_in"] * (x_t - c["a"] * self.data_mean)
        pattern, axes = self._layout
        lhs, rhs = pattern.split(" -> ")
        extra = {} if not self.cond_dim else {"class_labels": cond.to(x_t.device, x_t.dtype)}
        out = self.unet(rearrange(x_t, pattern, **axes), t.to(x_t.device).long(), **extra).sample
        return rearrange(out, f"{rhs} -> {lhs}", **axes)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.unet.parameters())

    # ------------------------------------------------------------------ storage
    def describe(self) -> dict:
        """The json config saved beside the weights (``kind`` keys the factory)."""
        return {"kind": KIND, "modality": self.modality, "latent_shape": list(self.latent_shape),
                "prediction_type": self.cfg.prediction_type, "model": to_dict(self.cfg),
                # diffusers' private keys (e.g. _use_default_values, built from a set) vary in
                # order between processes: keep them out, so equal runs write equal bytes
                "scheduler": {k: v for k, v in self.make_scheduler("ddim").config.items()
                              if not k.startswith("_")},
                "num_parameters": self.num_parameters(),
                **({"cond_dim": self.cond_dim, "uncond": self.uncond[0].tolist()}
                   if self.cond_dim else {})}

    def save(self, path: str | Path) -> None:
        """Write ``unet/`` (save_pretrained) then ``base.json`` (with a weights hash), each atomically."""
        path = Path(path)
        with atomic_path(path / UNET_DIR) as tmp:
            self.unet.save_pretrained(tmp, safe_serialization=True)
        write_json(path / CONFIG_FILE, {**self.describe(), "weights_sha256": _weights_hash(path)})

    @classmethod
    def load(cls, path: str | Path, meta: dict) -> "TinyBase":
        """Rebuild from a folder written by ``save``; the weights must match the recorded hash."""
        path = Path(path)
        cfg = build(TinyBaseConfig, meta["model"], f"{path / CONFIG_FILE}:model")
        if _weights_hash(path) != meta.get("weights_sha256"):
            raise ValueError(f"{path / UNET_DIR} does not match {path / CONFIG_FILE} (an "
                             f"interrupted write?); retrain the base")
        cond_dim = int(meta.get("cond_dim", 0))
        unet_cls = UNet1DModel if cfg.arch == "unet1d" else UNet2DModel
        if cond_dim:   # the prompt projection is ours: build, then load every weight strictly
            unet = _condition(UNet2DModel.from_config(UNet2DModel.load_config(path / UNET_DIR)),
                              cond_dim)
            state = {}
            for f in sorted((path / UNET_DIR).glob("*.safetensors")):
                state.update(load_file(f))
            unet.load_state_dict(state, strict=True)
        else:
            unet = unet_cls.from_pretrained(path / UNET_DIR)
        uncond = torch.tensor(meta["uncond"]).reshape(1, -1) if cond_dim else None
        base = cls(cfg, tuple(meta["latent_shape"]), unet=unet, cond_dim=cond_dim, uncond=uncond)
        return base.eval().requires_grad_(False)


def _weights_hash(path: Path) -> str:
    files = sorted((path / UNET_DIR).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no weights under {path / UNET_DIR}; retrain the base")
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()
