"""The released discriminator as a guide for our sampler, and loading the released checkpoints.

Why ``forward`` returns ``φ(h)`` and not ``h``: ``residuals(module, …) = −σ_t ∇ module(…)`` is
then exactly the release's residual (see the package docstring); ``logit`` gives ``h``.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from mmdisco.guidance.release.blocks import FeatureExtractor, Fusion, TimeEncoder
from mmdisco.guidance.release.settings import (CHECKPOINTS_URL, SETTINGS, ReleasedArch, resolve_arch,
                                               release_potential)


# --------------------------------------------------------------------------- the discriminator
def _pool_text(c: torch.Tensor, n: int, dims: int, name: str) -> torch.Tensor:
    """``[N|1, D]`` as is, token states ``[N|1, L, D]`` averaged over tokens; rows broadcast to ``n``."""
    if c.ndim == 3:
        c = c.mean(dim=1)
    if c.ndim != 2 or c.shape[-1] != dims:
        raise ValueError(f"{name} must be [N, {dims}] or token states [N, L, {dims}]; got "
                         f"{list(c.shape)}")
    if c.shape[0] not in (1, n):
        raise ValueError(f"{name} has {c.shape[0]} rows for a batch of {n}: give one row or one per pair")
    return c.expand(n, -1)


class ReleasedDiscriminator(nn.Module):
    """A released MMDisCo discriminator. ``forward(a, v, t[, cond_audio, cond_video])`` returns the
    release's guidance potential ``φ(h)`` (see the package docstring); ``logit`` returns ``h``.

    Text-conditional settings need the prompt: pass it per call, or ``bind`` it (the sampler's
    ``D(a, v, t)``). State-dict keys equal the release's ``MultimodalDiscriminator``.
    """

    def __init__(self, arch: ReleasedArch, setting: str | None = None):
        super().__init__()
        if arch.audio_conv not in ("2d", "1d"):
            raise ValueError(f"audio_conv must be '2d' or '1d', got {arch.audio_conv!r}")
        self.arch, self.setting = arch, setting
        self.time_embed = TimeEncoder(arch.time_dims)
        if arch.text_dims is not None:
            self.video_text_embed = nn.Linear(arch.text_dims[1], arch.time_dims)
            self.audio_text_embed = nn.Linear(arch.text_dims[0], arch.time_dims)
        self.feature_extractor = FeatureExtractor(arch)
        self.fusion_model = Fusion(arch, self.feature_extractor.out_channels)
        self.last_linear = nn.Linear(self.fusion_model.out_channels, 1)

    def _check(self, audio: torch.Tensor, video: torch.Tensor, t: torch.Tensor) -> None:
        arch, n = self.arch, audio.shape[0]
        a_ndim, a_name = (4, "[N, C, T, M]") if arch.audio_conv == "2d" else (3, "[N, 1, L] waveform")
        if audio.ndim != a_ndim or audio.shape[1] != arch.audio_channels:
            raise ValueError(f"audio has shape {list(audio.shape)}; this discriminator takes {a_name} "
                             f"with C={arch.audio_channels} (native latents: use release.to_ours)")
        if video.ndim != 5 or video.shape[2] != arch.video_channels:
            raise ValueError(f"video has shape {list(video.shape)}; this discriminator takes "
                             f"[N, F, {arch.video_channels}, H, W] (AnimateDiff/VideoCrafter2 "
                             f"latents [N, C, F, H, W]: use release.to_ours)")
        if video.shape[0] != n or t.shape != (n,):
            raise ValueError(f"batch sizes disagree: audio {n}, video {video.shape[0]}, t "
                             f"{list(t.shape)} (t: one integer timestep per pair)")

    def _embeddings(self, t, n, cond_audio, cond_video, dtype):
        """``(temb, emb_v, emb_a)``: the time embedding, plus each modality's projected text."""
        temb = self.time_embed(t).to(dtype)
        if self.arch.text_dims is None:
            if cond_audio is not None or cond_video is not None:
                raise ValueError(f"setting {self.setting or 'this one'} is unconditional: pass no text")
            return temb, temb, temb
        if cond_audio is None or cond_video is None:
            raise ValueError(f"setting {self.setting or 'this one'} is text-conditional: pass "
                             f"cond_audio and cond_video (or use .bind(...) for sampling)")
        da, dv = self.arch.text_dims
        ca = _pool_text(cond_audio.to(temb.device), n, da, "cond_audio").to(dtype)
        cv = _pool_text(cond_video.to(temb.device), n, dv, "cond_video").to(dtype)
        return temb, temb + self.video_text_embed(cv), temb + self.audio_text_embed(ca)

    def logit(self, audio: torch.Tensor, video: torch.Tensor, t: torch.Tensor,
              cond_audio: torch.Tensor | None = None,
              cond_video: torch.Tensor | None = None) -> torch.Tensor:
        """The pre-sigmoid logit ``h [N]`` (differentiable in ``audio`` and ``video``)."""
        self._check(audio, video, t)
        temb, emb_v, emb_a = self._embeddings(t, audio.shape[0], cond_audio, cond_video, video.dtype)
        v_feats, a_feats = self.feature_extractor(video, audio, emb_v, emb_a)
        return self.last_linear(self.fusion_model(v_feats, a_feats, temb)).squeeze(1)

    def forward(self, audio: torch.Tensor, video: torch.Tensor, t: torch.Tensor,
                cond_audio: torch.Tensor | None = None,
                cond_video: torch.Tensor | None = None) -> torch.Tensor:
        """``φ(h) [N]``, so that ``residuals(self, …) = −σ_t ∇φ`` is the release's residual."""
        return release_potential(self.logit(audio, video, t, cond_audio, cond_video))

    def bind(self, cond_audio: torch.Tensor, cond_video: torch.Tensor, *,
             uncond_audio: torch.Tensor | None = None, uncond_video: torch.Tensor | None = None,
             weights: tuple[float, float] | None = None) -> "ReleasedGuide":
        """The sampler's ``D(a, v, t)`` with the prompt bound; with ``uncond_*`` (the bases' empty-
        prompt embeddings) the residuals get CFG, weights defaulting to the release's."""
        if self.arch.text_dims is None:
            raise ValueError(f"setting {self.setting or 'this one'} is unconditional: use the "
                             f"discriminator itself as the sampler's guide")
        if weights is None:
            known = SETTINGS[self.setting].cfg_weights if self.setting in SETTINGS else None
            weights = (known or (1.0, 1.0)) if uncond_audio is not None else (1.0, 1.0)
        return ReleasedGuide(self, cond_audio, cond_video, uncond_audio, uncond_video, weights)


def _grad_scaled(x: torch.Tensor, s: float) -> torch.Tensor:
    """``x`` by value, its gradient multiplied by ``s``."""
    return x if s == 1.0 else x.detach() + s * (x - x.detach())


class ReleasedGuide(nn.Module):
    """A ``ReleasedDiscriminator`` with its text bound, as a plain ``forward(a, v, t)``.

    With unconditional embeddings it reproduces the release's CFG of residuals per modality,
    ``r^m = r_u^m + w_m (r_c^m − r_u^m)``: the returned scalar has input gradients
    ``w_m ∇φ_c + (1 − w_m) ∇φ_u`` (and value ``φ_u + w̄ (φ_c − φ_u)``), from one 2N-row pass.
    """

    def __init__(self, D: ReleasedDiscriminator, cond_audio, cond_video, uncond_audio=None,
                 uncond_video=None, weights: tuple[float, float] = (1.0, 1.0)):
        super().__init__()
        if (uncond_audio is None) != (uncond_video is None):
            raise ValueError("give both uncond_audio and uncond_video, or neither")
        if not all(math.isfinite(w) for w in weights):
            raise ValueError(f"CFG weights must be finite, got {weights}")
        self.w_a, self.w_v = float(weights[0]), float(weights[1])
        if uncond_audio is None and (self.w_a, self.w_v) != (1.0, 1.0):
            raise ValueError(f"CFG weights {weights} need the unconditional embeddings "
                             f"(uncond_audio, uncond_video: the bases' empty-prompt embeddings)")
        self.D = D
        self.cond, self.uncond = (cond_audio, cond_video), (uncond_audio, uncond_video)

    def forward(self, a_t: torch.Tensor, v_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n = a_t.shape[0]
        (ca, cv), (ua, uv) = self.cond, self.uncond
        if self.w_a == self.w_v == 1.0:
            return self.D(a_t, v_t, t, ca, cv)
        if self.w_a == self.w_v == 0.0:
            return self.D(a_t, v_t, t, ua, uv)
        da, dv = self.D.arch.text_dims
        a = torch.cat([_grad_scaled(a_t, self.w_a), _grad_scaled(a_t, 1.0 - self.w_a)])
        v = torch.cat([_grad_scaled(v_t, self.w_v), _grad_scaled(v_t, 1.0 - self.w_v)])
        text_a = torch.cat([_pool_text(ca, n, da, "cond_audio"), _pool_text(ua, n, da, "uncond_audio")])
        text_v = torch.cat([_pool_text(cv, n, dv, "cond_video"), _pool_text(uv, n, dv, "uncond_video")])
        phi_c, phi_u = self.D(a, v, torch.cat([t, t]), text_a, text_v).chunk(2)
        carrier = phi_c + phi_u
        value = phi_u + 0.5 * (self.w_a + self.w_v) * (phi_c - phi_u)
        return value.detach() + (carrier - carrier.detach())


# --------------------------------------------------------------------------- build and load
def build_released(setting: str | ReleasedArch) -> ReleasedDiscriminator:
    """A freshly initialised discriminator of a released setting (or of any ``ReleasedArch``)."""
    return ReleasedDiscriminator(resolve_arch(setting), setting if isinstance(setting, str) else None)


def _state_dict_from(obj, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a loaded checkpoint; a ``residual_predictor.`` prefix (the release's
    ``MMDisCo.state_dict()``) is stripped."""
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} is not a state dict (a dict of tensors); the released files "
                         f"{CHECKPOINTS_URL} are")
    prefix = "residual_predictor."
    if obj and all(k.startswith(prefix) for k in obj):
        obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def _matching_settings(state: dict[str, torch.Tensor]) -> list[str]:
    """Settings whose key names and shapes equal ``state``'s (built on the meta device: free)."""
    want = {k: tuple(v.shape) for k, v in state.items()}
    found = []
    for name in SETTINGS:
        with torch.device("meta"):
            got = {k: tuple(v.shape) for k, v in build_released(name).state_dict().items()}
        if got == want:
            found.append(name)
    return found


def load_state_strict(model: ReleasedDiscriminator, state: dict[str, torch.Tensor],
                      source: str = "the state dict") -> ReleasedDiscriminator:
    """``model.load_state_dict(state, strict=True)`` with an error that says what to do."""
    ours = model.state_dict()
    missing = sorted(set(ours) - set(state))
    unexpected = sorted(set(state) - set(ours))
    wrong = sorted(k for k in set(ours) & set(state) if tuple(ours[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        fits = _matching_settings(state)
        hint = (f"it matches setting(s) {', '.join(fits)}" if fits
                else "it matches none of the released settings")
        raise ValueError(f"{source} does not fit setting {model.setting or 'given'}: "
                         f"{len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected "
                         f"{unexpected[:3]}, {len(wrong)} with other shapes {wrong[:3]}; {hint}")
    model.load_state_dict(state, strict=True)
    return model


def load_released(path: str | Path, setting: str, *,
                  device: str | torch.device = "cpu") -> ReleasedDiscriminator:
    """A released checkpoint (``<setting>.pt`` from ``CHECKPOINTS_URL``) as a frozen guide."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: download {setting}.pt from "
                                f"{CHECKPOINTS_URL} and give its path")
    model = build_released(setting)
    state = _state_dict_from(torch.load(path, map_location="cpu", weights_only=True), path)
    load_state_strict(model, state, str(path))
    return model.eval().requires_grad_(False).to(device)
