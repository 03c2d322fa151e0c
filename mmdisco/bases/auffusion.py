"""Auffusion (Xue et al. 2024) behind the ``BaseModel`` protocol: a Stable-Diffusion-style
text-to-audio latent diffusion model over mel "images" (``mmdisco.encoders.auffusion``).

Loaded from a folder (or hub id) in Auffusion's own hub layout, as its pipeline reads it:
``unet/`` (``UNet2DConditionModel``), ``scheduler/`` (its config; the pipeline uses PNDM, the
MMDisCo release DDPM over the same betas), and ``condition_config.json``: a list of condition
entries, each naming a text encoder folder (``text_encoder_name``, e.g. ``text_encoder_0``,
which also holds its tokenizer) and a condition adapter folder (``condition_adapter_name``,
``config.json`` + ``condition_adapter.pt``: Linear(condition_dim → cross_attention_dim), then
LayerNorm). A Stable-Diffusion-style folder (``text_encoder/``, ``tokenizer/``, no adapter) is
accepted too when there is no ``condition_config.json``.

Layout: the project's audio latent ``[N, C, T, M]`` at the boundary, Auffusion's own
``[N, 4, M, T]`` (mel rows before time, as in its images) inside; converted here only.

Prompt: Auffusion's recipe, one prompt at a time: tokens without padding, the text encoder's
last hidden state, zero-padded (or cut) to ``condition_max_length`` (77) tokens, then the
adapter (so padded positions become the adapter's output for zeros); entries concatenated
along the tokens: CLIP text states ``[P, 77, 768]`` for the released models.

Classifier-free guidance as the other pretrained bases (``ε = ε_u + w (ε_c − ε_u)``), with
Auffusion's null condition: ``ε_u`` is the prediction for an all-zero embedding (its pipeline's
default negative prompt, and what the MMDisCo release uses), not the empty prompt's encoding;
``set_uncond`` replaces it.

``context_frames`` (latent frames; Auffusion's native 10.24 s is 128): Auffusion is trained on
10.24 s images, and the MMDisCo release feeds its UNet shorter latents padded along time with
the latent of silence noised to the same ``t``, cutting the prediction back. With it set, so
does this adapter; the silence latent is the VAE's posterior mean (the release draws a sample)
and its noise one fixed draw (seed 0; the release draws anew per call), so ε stays a
deterministic function. None (default) runs the UNet on the latent as it is.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import nn

from mmdisco.bases.pretrained import PretrainedBase, load_scheduler_config
from mmdisco.bases.protocol import sigma, sqrt_alpha_bar
from mmdisco.devices import resolve_device, resolve_dtype
from mmdisco.encoders.auffusion import (AuffusionMel, read_vocoder_config, resolve_folder,
                                        silence_latent)

CONDITION_CONFIG = "condition_config.json"
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "config.json", "condition_adapter.pt"
MAX_LENGTH = 77          # Auffusion's pipeline pads every prompt's states to 77 tokens
PAD_SEED = 0             # the fixed noise of the context padding


class ConditionAdapter(nn.Module):
    """Auffusion's condition adapter: ``LayerNorm(Linear(x))``, parameters ``proj.*``, ``norm.*``."""

    def __init__(self, condition_dim: int, cross_attention_dim: int):
        super().__init__()
        self.proj = nn.Linear(condition_dim, cross_attention_dim)
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, x):
        return self.norm(self.proj(x))

    @classmethod
    def from_folder(cls, folder: Path) -> "ConditionAdapter":
        config_file, weights = folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS
        for f in (config_file, weights):
            if not f.is_file():
                raise FileNotFoundError(f"{f} is missing: an Auffusion condition adapter folder "
                                        f"holds {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}")
        config = json.loads(config_file.read_text())
        adapter = cls(int(config["condition_dim"]), int(config["cross_attention_dim"]))
        state = torch.load(weights, map_location="cpu", weights_only=True)
        try:
            adapter.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(f"{weights} does not fit the adapter of {config_file}: {err}") from err
        return adapter


class AuffusionText(nn.Module):
    """The condition entries (text encoder, tokenizer, adapter, length) → ``[P, ΣL, D]``."""

    def __init__(self, encoders: list, tokenizers: list, adapters: list, lengths: list[int]):
        super().__init__()
        self.encoders = nn.ModuleList(encoders)
        self.adapters = nn.ModuleList(a if a is not None else nn.Identity() for a in adapters)
        self.tokenizers = list(tokenizers)
        self.lengths = [int(n) for n in lengths]

    @property
    def length(self) -> int:
        return sum(self.lengths)

    @property
    def dim(self) -> int:
        last = self.adapters[-1]
        if isinstance(last, ConditionAdapter):
            return int(last.proj.out_features)
        return int(self.encoders[-1].config.hidden_size)

    def null(self) -> torch.Tensor:
        """Auffusion's unconditional embedding ``[1, L, D]``: zeros (CPU, float32)."""
        return torch.zeros(1, self.length, self.dim)

    def _one(self, prompt: str, device) -> torch.Tensor:
        parts = []
        for enc, tok, adapter, length in zip(self.encoders, self.tokenizers, self.adapters,
                                             self.lengths):
            ids = tok(prompt, truncation=True, max_length=tok.model_max_length,
                      return_tensors="pt").input_ids.to(device)
            states = enc(ids).last_hidden_state[:, :length]
            states = nn.functional.pad(states, (0, 0, 0, length - states.shape[1]))
            parts.append(adapter(states))
        return torch.cat(parts, dim=1)

    def forward(self, prompts: list[str]) -> torch.Tensor:
        device = next(self.encoders.parameters()).device
        return torch.cat([self._one(p, device) for p in prompts])


def _text_encoder_class(folder: Path):
    import transformers
    config = json.loads((folder / "config.json").read_text())
    name = (config.get("architectures") or ["CLIPTextModel"])[0]
    if not hasattr(transformers, name):
        raise ValueError(f"{folder}/config.json names the text encoder class {name!r}, which "
                         f"this transformers does not have")
    return getattr(transformers, name)


def _entry(root: Path, e: dict) -> dict:
    """One entry of ``condition_config.json``: its folders (the tokenizer sits with the encoder)."""
    adapter = e.get("condition_adapter_name")
    return {"encoder": root / e["text_encoder_name"], "tokenizer": root / e["text_encoder_name"],
            "adapter": root / adapter if adapter else None,
            "length": int(e.get("condition_max_length", MAX_LENGTH))}


def _condition_entries(root: Path) -> list[dict]:
    """``condition_config.json``'s entries, or one Stable-Diffusion-style entry."""
    f = root / CONDITION_CONFIG
    if f.is_file():
        entries = json.loads(f.read_text())
        if not isinstance(entries, list) or not entries:
            raise ValueError(f"{f}: expected a non-empty list of condition entries")
        try:
            return [_entry(root, e) for e in entries]
        except KeyError as err:
            raise ValueError(f"{f}: an entry lacks {err}; each names its text_encoder_name "
                             f"(and condition_adapter_name)") from err
    if (root / "text_encoder").is_dir():
        return [{"encoder": root / "text_encoder", "tokenizer": root / "tokenizer",
                 "adapter": None, "length": MAX_LENGTH}]
    raise FileNotFoundError(f"{root}: neither {CONDITION_CONFIG} (Auffusion's hub layout) nor "
                            f"text_encoder/ is there; load with text_encoder=False and pass "
                            f"prompt embeddings, or point model at an Auffusion folder")


def load_auffusion_text(root: str | Path, *, local_files_only: bool = False) -> AuffusionText:
    """Auffusion's frozen text conditioning (all entries), on the CPU in float32."""
    from transformers import AutoTokenizer
    encoders, tokenizers, adapters, lengths = [], [], [], []
    for e in _condition_entries(Path(root)):
        if not (e["encoder"] / "config.json").is_file():
            raise FileNotFoundError(f"{e['encoder']}/config.json is missing: the text encoder "
                                    f"that {CONDITION_CONFIG} names is not in the folder")
        enc = _text_encoder_class(e["encoder"]).from_pretrained(str(e["encoder"]),
                                                                local_files_only=local_files_only)
        encoders.append(enc.eval().requires_grad_(False))
        tokenizers.append(AutoTokenizer.from_pretrained(str(e["tokenizer"]),
                                                      local_files_only=local_files_only))
        adapters.append(None if e["adapter"] is None else ConditionAdapter.from_folder(e["adapter"]))
        lengths.append(e["length"])
    return AuffusionText(encoders, tokenizers, adapters, lengths).eval().requires_grad_(False)


def _download_patterns(model: str, local_files_only: bool, want_vae: bool) -> list[str] | None:
    """The files of a hub id the base needs (none for a local folder)."""
    if Path(model).is_dir():
        return None
    from huggingface_hub import hf_hub_download
    patterns = ["unet/*", "scheduler/*", CONDITION_CONFIG, "text_encoder/*", "tokenizer/*"]
    try:
        entries = json.loads(Path(hf_hub_download(model, CONDITION_CONFIG,
                                                  local_files_only=local_files_only)).read_text())
        names = [e.get(k) for e in entries for k in ("text_encoder_name", "condition_adapter_name")]
        patterns += [f"{n}/*" for n in names if n]
    except (OSError, ValueError, TypeError, AttributeError):
        pass   # no (readable) condition config: the SD-style fallback; loading says the rest
    return patterns + (["vae/*", "vocoder/*"] if want_vae else [])


# --------------------------------------------------------------------------- the base
class AuffusionBase(PretrainedBase):
    """Auffusion's UNet over ``[N, C, T, M]`` (inside: ``[N, C, M, T]``), CLIP text states."""

    kind = "auffusion"
    modality = "audio"

    def __init__(self, unet, scheduler_config: dict, latent_shape, *,
                 text: AuffusionText | None = None, cond_length: int | None = None,
                 context_frames: int | None = None,
                 pad_latent: torch.Tensor | None = None, **kwargs):
        length = text.length if text is not None else int(cond_length or MAX_LENGTH)
        kwargs.setdefault("uncond", torch.zeros(1, length, int(unet.config.cross_attention_dim)))
        self.context_frames = None if context_frames is None else int(context_frames)
        super().__init__(unet, scheduler_config, latent_shape, text_encoder=text,
                         tokenizer=None if text is None else text.tokenizers, **kwargs)
        self._pad = self._pad_noise = None
        if self.context_frames is not None:
            self._set_padding(pad_latent)

    def _check_latent_shape(self) -> None:
        if len(self.latent_shape) != 3 or self.latent_shape[0] != self.unet.config.in_channels:
            raise ValueError(f"auffusion latents are (C, T, M) with C = "
                             f"{self.unet.config.in_channels}; got {self.latent_shape}")
        if self.context_frames is not None and self.context_frames < self.latent_shape[1]:
            raise ValueError(f"context_frames ({self.context_frames}) is shorter than the latent's "
                             f"{self.latent_shape[1]} time frames")

    def _set_padding(self, pad_latent: torch.Tensor | None) -> None:
        """The silence latent after the clip's frames, and its fixed noise, unet layout."""
        c, frames, mels = self.latent_shape
        want = (c, self.context_frames, mels)
        if pad_latent is None or tuple(pad_latent.shape) != want:
            got = None if pad_latent is None else list(pad_latent.shape)
            raise ValueError(f"context_frames={self.context_frames} needs the silence latent "
                             f"{list(want)} (AuffusionEncoder.silence_latent); got {got}")
        tail = rearrange(pad_latent[:, frames:].float().cpu(), "c t m -> c m t")
        gen = torch.Generator().manual_seed(PAD_SEED)
        self._pad, self._pad_noise = tail, torch.randn(tail.shape, generator=gen)

    def _to_unet(self, x):
        return rearrange(x, "n c t m -> n c m t")

    def _from_unet(self, x):
        return rearrange(x, "n c m t -> n c t m")

    def _unet(self, x, t, cond):
        frames = x.shape[-1]
        if self._pad is not None and self._pad.shape[-1]:
            a, s = sqrt_alpha_bar(self._alpha_bar, t, x), sigma(self._alpha_bar, t, x)
            pad = self._pad.to(x.device, x.dtype)
            noise = self._pad_noise.to(x.device, x.dtype)
            x = torch.cat([x, a * pad + s * noise], dim=-1)
        return self.unet(x, t, encoder_hidden_states=cond).sample[..., :frames]

    def _cond_shape(self) -> tuple[int, ...]:
        return tuple(self.uncond.shape[1:])

    def null_embedding(self) -> torch.Tensor:
        """Auffusion's unconditional embedding ``[1, L, D]``: zeros."""
        return torch.zeros(1, *self._cond_shape(), device=self.device_, dtype=self.dtype_)

    def encode_prompt(self, prompts: list[str] | str) -> torch.Tensor:
        """Auffusion's prompt embeddings ``[P, L, D]`` (see the module docstring)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if self.text_encoder is None:
            raise RuntimeError("auffusion base was loaded without its text encoder; load it with "
                               "text_encoder=True or pass embeddings")
        moved = self.offload == "model" and self.device_.type != "cpu"
        if moved:
            self.text_encoder.to(self.device_, self.dtype_)
        with torch.no_grad():
            emb = self.text_encoder(list(prompts))
        if moved:
            self.text_encoder.to("cpu", torch.float32)
        return emb.to(self.device_, self.dtype_)

    def describe(self) -> dict:
        return {**super().describe(), "context_frames": self.context_frames,
                "cond_length": int(self._cond_shape()[0])}

    @classmethod
    def _extra_load_options(cls, meta: dict) -> dict:
        return {"context_frames": meta.get("context_frames"), "cond_length": meta.get("cond_length")}

    @classmethod
    def from_pretrained(cls, model: str | Path, *, latent_shape: tuple[int, int, int],
                        guidance_scale: float = 1.0, text_encoder: bool = True,
                        context_frames: int | None = None, cond_length: int | None = None,
                        device: str = "auto", dtype: str = "auto", timestep_spacing: str = "trailing",
                        beta_schedule: str | None = None, offload: str = "none",
                        cfg_batch: bool = True, local_files_only: bool = False,
                        **_: Any) -> "AuffusionBase":
        """Load ``unet/``, ``scheduler/`` and the condition entries (see the module docstring);
        with ``context_frames`` also ``vae/`` and ``vocoder/config.json`` (for the silence latent)."""
        from diffusers import UNet2DConditionModel
        model = str(model)
        patterns = _download_patterns(model, local_files_only, context_frames is not None)
        root = resolve_folder(model, patterns, local_files_only=local_files_only)
        dev = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
        text = load_auffusion_text(root, local_files_only=True) if text_encoder else None
        unet = UNet2DConditionModel.from_pretrained(str(root), subfolder="unet",
                                                    torch_dtype=torch_dtype, local_files_only=True)
        pad = None
        if context_frames is not None:
            pad = _silence(root, int(context_frames), torch_dtype, dev)
        return cls(unet, load_scheduler_config(root, local_files_only=True), latent_shape,
                   text=text, cond_length=cond_length, context_frames=context_frames,
                   pad_latent=pad, guidance_scale=guidance_scale,
                   timestep_spacing=timestep_spacing, beta_schedule=beta_schedule, device=device,
                   dtype=dtype, offload=offload, cfg_batch=cfg_batch,
                   source={"model": model, "text_encoder": text_encoder,
                           "local_files_only": local_files_only})


def _silence(root: Path, latent_frames: int, dtype: torch.dtype,
             device: torch.device) -> torch.Tensor:
    """The silence latent of ``root``'s VAE and front end (then the VAE is let go)."""
    from mmdisco.encoders.pretrained import _load_vae
    vae = _load_vae(str(root), "vae", dtype, True).to(device).eval()
    mel = AuffusionMel.from_vocoder(read_vocoder_config(root))
    return silence_latent(vae, mel, latent_frames, device=device, dtype=dtype)


def load_text_encoder(model: str | Path, *, device: str = "auto", dtype: str = "auto",
                      local_files_only: bool = False):
    """``embed(prompts) -> Tensor [P, L, D]``: Auffusion's text conditioning without its UNet
    (what ``mmdisco.encoders.text.PretrainedText`` needs); ``embed.null()`` is its zero null."""
    patterns = _download_patterns(str(model), local_files_only, False)
    if patterns is not None:
        patterns = [p for p in patterns if not p.startswith(("unet", "scheduler"))]
    root = resolve_folder(str(model), patterns, local_files_only=local_files_only)
    dev = resolve_device(device)
    text = load_auffusion_text(root, local_files_only=True).to(dev, resolve_dtype(dtype, dev))

    def embed(prompts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return text(list(prompts))
    embed.null = text.null
    return embed
