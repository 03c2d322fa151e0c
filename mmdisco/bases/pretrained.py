"""Pretrained single-modal bases behind the ``BaseModel`` protocol: AudioLDM and AnimateDiff.

Both are assembled from diffusers / transformers components loaded with ``from_pretrained``
(a Hugging Face model id or a local folder in diffusers' layout: ``unet/``, ``scheduler/``,
``text_encoder/``, ``tokenizer/``); nothing is copied from the pipelines, which only serve as
the reference the tests compare against.

- ``AudioLDMBase`` (audio): ``UNet2DConditionModel`` over AudioLDM's 8-channel mel latent
  ``[N, C, T, M]`` (time before mel bins, the project's audio layout and the UNet's own), the
  prompt entering as the L2-normalised CLAP text embedding ``[N, E]`` through the UNet's
  ``class_labels`` (``ClapTextModelWithProjection`` + its Roberta tokenizer).
- ``AnimateDiffBase`` (video): ``UNetMotionModel`` (a Stable Diffusion 1.5 UNet with a
  ``MotionAdapter``), prompt as CLIP's last hidden state ``[N, L, E]``. diffusers wants
  ``[B, C, F, H, W]``; the project's video latent is ``[N, F, C, H, W]``: converted here, at the
  boundary, and nowhere else.

Condition and classifier-free guidance: ``eps(x_t, t, cond)`` with ``cond`` the prompt
embeddings (``encode_prompt``) returns the base's own CFG ``ε = ε_u + w (ε_c − ε_u)`` with
``w = guidance_scale`` and ``ε_u`` the prediction for the empty prompt (``uncond``); ``w = 1``
uses ``ε_c`` alone. ``cond=None`` is unconditional generation: ``ε_u`` alone.

Noise schedules: each base keeps its own ``alphas_cumprod`` (its scheduler's betas, optionally
overridden by ``beta_schedule``). Joint sampling indexes both with one ``t``, so both must
have the same ``num_train_timesteps`` (``check_pair``) and give the same timestep sequence
(``timestep_spacing``, shared by both through ``make_scheduler``). Whatever the network predicts
(ε, v or x_0, from its scheduler config), ``eps`` returns ε and the schedulers step on ε.

Saved form: a folder with ``base.json`` (``kind`` ``audioldm`` / ``animatediff``, the weights'
source, the latent shape and the options) and no weights: ``mmdisco.bases.load_base`` reads it.

The model classes of diffusers and transformers are imported where they are loaded: each pulls
in its model zoo, seconds of import that a run using only the other base does not need.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from einops import rearrange

from mmdisco.bases.protocol import CONFIG_FILE, check_input, scheduler_class, sigma, sqrt_alpha_bar
from mmdisco.devices import dtype_name, resolve_device, resolve_dtype  # noqa: F401 (re-exported)
from mmdisco.io import write_json

OFFLOAD = ("none", "model", "sequential")
SPACINGS = ("trailing", "leading", "linspace")


def load_scheduler_config(source: str | Path, *, local_files_only: bool = False) -> dict:
    """The ``scheduler/`` config of a diffusers model folder or id, as a plain dict."""
    config = DDIMScheduler.load_config(str(source), subfolder="scheduler",
                                       local_files_only=local_files_only)
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


class PretrainedBase(torch.nn.Module):
    """Shared machinery: schedule, ε conversion, CFG, prompt encoding, storage."""

    kind: str = ""
    modality: str = ""

    def __init__(self, unet: torch.nn.Module, scheduler_config: dict, latent_shape: tuple[int, ...], *,
                 guidance_scale: float = 1.0, text_encoder: torch.nn.Module | None = None,
                 tokenizer: Any = None, uncond: torch.Tensor | None = None,
                 timestep_spacing: str = "trailing", beta_schedule: str | None = None,
                 device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32",
                 offload: str = "none", cfg_batch: bool = True, source: dict | None = None):
        super().__init__()
        if timestep_spacing not in SPACINGS:
            raise ValueError(f"timestep_spacing must be one of {SPACINGS}; got {timestep_spacing!r}")
        if offload not in OFFLOAD:
            raise ValueError(f"offload must be one of {OFFLOAD}; got {offload!r}")
        if not guidance_scale >= 0:
            raise ValueError(f"guidance_scale must be >= 0; got {guidance_scale}")
        self.latent_shape = tuple(int(s) for s in latent_shape)
        self.guidance_scale = float(guidance_scale)
        self.timestep_spacing = timestep_spacing
        self.beta_schedule = beta_schedule
        self.offload = offload
        self.cfg_batch = bool(cfg_batch)
        self.source = dict(source or {})
        self.device_ = resolve_device(device)
        self.dtype_ = resolve_dtype(dtype, self.device_)
        config = dict(scheduler_config)
        if beta_schedule is not None:
            config["beta_schedule"] = beta_schedule
        self.scheduler_config = config
        self.prediction_type = config.get("prediction_type", "epsilon")
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"{self.kind}: unsupported prediction_type {self.prediction_type!r}")
        self._alpha_bar = DDPMScheduler.from_config(config).alphas_cumprod.to(torch.float64)
        self.num_train_timesteps = int(len(self._alpha_bar))
        self.unet = unet.eval().requires_grad_(False)
        self.text_encoder = None if text_encoder is None else text_encoder.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self._check_latent_shape()
        self._place()
        self.uncond = None if uncond is None else uncond.detach()[:1].to(self.device_, self.dtype_)

    # ------------------------------------------------------------------ placement
    def _place(self) -> None:
        if self.offload == "sequential" and self.device_.type != "cpu":
            from accelerate import cpu_offload   # streams each submodule's weights on use
            self.unet.to(dtype=self.dtype_)
            cpu_offload(self.unet, execution_device=self.device_)
        else:
            self.unet.to(self.device_)
            if self.unet.dtype != self.dtype_:
                self.unet.to(dtype=self.dtype_)
        if self.text_encoder is not None:
            home = torch.device("cpu") if self.offload != "none" else self.device_
            self.text_encoder.to(home, self.dtype_ if home.type != "cpu" else torch.float32)

    def to_device(self, device: str | torch.device) -> "PretrainedBase":
        """Move to ``device``; the dtype stays the one chosen at load."""
        self.device_ = resolve_device(device)
        self._place()
        if self.uncond is not None:
            self.uncond = self.uncond.to(self.device_)
        return self

    def to(self, *args, **kwargs) -> "PretrainedBase":
        """``module.to(device)`` (as ``mmdisco.distributed.to_device`` calls it) keeps the
        base's own bookkeeping in step; a dtype is chosen at load time only."""
        device, dtype, *_ = torch._C._nn._parse_to(*args, **kwargs)
        if dtype is not None and dtype != self.dtype_:
            raise ValueError(f"{self.kind} base: choose the dtype when loading (dtype=), not with .to()")
        return self if device is None else self.to_device(device)

    # ------------------------------------------------------------------ protocol
    def alphas_cumprod(self) -> torch.Tensor:
        """``ᾱ_t`` for t = 0 … T − 1 (float64 CPU), the schedulers' own values."""
        return self._alpha_bar.clone()

    def make_scheduler(self, kind: str):
        """A fresh diffusers scheduler with this model's betas, stepping on ε, never clipping."""
        return scheduler_class(kind).from_config(self.scheduler_config, prediction_type="epsilon",
                                            clip_sample=False, thresholding=False,
                                            timestep_spacing=self.timestep_spacing)

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """ε with the base's own classifier-free guidance (see the module docstring)."""
        check_input(self, x_t, t)
        n = x_t.shape[0]
        x = self._to_unet(x_t.to(self.device_, self.dtype_))
        tt = t.to(self.device_).long()
        uncond = None
        if cond is None or self.guidance_scale != 1.0:
            uncond = self._uncond(n)
        if cond is None:
            out = self._unet(x, tt, uncond)
        else:
            cond = self._check_cond(cond, n)
            w = self.guidance_scale
            if w == 1.0:
                out = self._unet(x, tt, cond)
            else:
                if self.cfg_batch:
                    out_u, out_c = self._unet(torch.cat([x, x]), torch.cat([tt, tt]),
                                              torch.cat([uncond, cond])).chunk(2)
                else:
                    out_u, out_c = self._unet(x, tt, uncond), self._unet(x, tt, cond)
                out = out_u + w * (out_c - out_u)
        out = self._from_unet(out).to(x_t.device, x_t.dtype)
        return self._output_to_eps(out, x_t, t)

    def _output_to_eps(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.prediction_type == "epsilon":
            return out
        a, s = sqrt_alpha_bar(self._alpha_bar, t, x_t), sigma(self._alpha_bar, t, x_t)
        if self.prediction_type == "v_prediction":
            return a * out + s * x_t
        return (x_t - a * out) / s

    # ------------------------------------------------------------------ prompts
    def encode_prompt(self, prompts: list[str] | str) -> torch.Tensor:
        """Prompt embeddings for ``eps(..., cond=)``, one row per prompt, on the base's device."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if self.text_encoder is None or self.tokenizer is None:
            raise RuntimeError(f"{self.kind} base was loaded without its text encoder and "
                               f"tokenizer; load it with text_encoder=True or pass embeddings")
        enc = self.text_encoder
        moved = self.offload == "model" and self.device_.type != "cpu"
        if moved:
            enc.to(self.device_, self.dtype_)
        dev = next(enc.parameters()).device
        tokens = self.tokenizer(list(prompts), padding="max_length",
                                max_length=self.tokenizer.model_max_length, truncation=True,
                                return_tensors="pt")
        with torch.no_grad():
            emb = self._embed(enc, tokens, dev)
        if moved:
            enc.to("cpu", torch.float32)
        return emb.to(self.device_, self.dtype_)

    def null_embedding(self) -> torch.Tensor:
        """The unconditional (negative-prompt) embedding the base was trained with: the empty
        prompt's (Auffusion overrides it with zeros)."""
        return self.encode_prompt([""])

    def set_uncond(self, uncond: torch.Tensor) -> None:
        """Set the unconditional (negative-prompt) embedding: one row, broadcast to the batch."""
        self.uncond = uncond.detach()[:1].to(self.device_, self.dtype_)

    def _uncond(self, n: int) -> torch.Tensor:
        if self.uncond is None:
            if self.text_encoder is None:
                raise RuntimeError(f"{self.kind} base has no unconditional embedding: load it with "
                                   f"its text encoder, or call set_uncond(embedding of '')")
            self.set_uncond(self.null_embedding())
        return self.uncond.expand(n, *self.uncond.shape[1:])

    def _check_cond(self, cond: torch.Tensor, n: int) -> torch.Tensor:
        if cond.shape[0] != n:
            raise ValueError(f"cond has {cond.shape[0]} rows for a batch of {n}")
        want = self._cond_shape()
        if tuple(cond.shape[1:]) != want:
            raise ValueError(f"{self.kind} base expects prompt embeddings [N, "
                             f"{', '.join(map(str, want))}] (encode_prompt); got {list(cond.shape)}")
        return cond.to(self.device_, self.dtype_)

    # ------------------------------------------------------------------ per model
    def _check_latent_shape(self) -> None: ...
    def _to_unet(self, x: torch.Tensor) -> torch.Tensor: return x
    def _from_unet(self, x: torch.Tensor) -> torch.Tensor: return x
    def _unet(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor: ...
    TEXT_ENCODER = ""   # the transformers class of text_encoder/

    @staticmethod
    def _embed(encoder, tokens, device) -> torch.Tensor: ...
    def _cond_shape(self) -> tuple[int, ...]: ...

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.unet.parameters())

    # ------------------------------------------------------------------ storage
    def describe(self) -> dict:
        """The ``base.json`` that ``load_base`` turns back into this base."""
        return {"kind": self.kind, "modality": self.modality, "latent_shape": list(self.latent_shape),
                "source": self.source, "guidance_scale": self.guidance_scale,
                "timestep_spacing": self.timestep_spacing, "beta_schedule": self.beta_schedule,
                "dtype": dtype_name(self.dtype_), "offload": self.offload,
                "cfg_batch": self.cfg_batch, "prediction_type": self.prediction_type,
                "scheduler": self.scheduler_config, "num_parameters": self.num_parameters()}

    def save(self, path: str | Path) -> None:
        """Write ``base.json`` (the weights stay where ``source`` says)."""
        write_json(Path(path) / CONFIG_FILE, self.describe())

    @classmethod
    def load(cls, path: str | Path, meta: dict, *,
             device: str | torch.device = "auto") -> "PretrainedBase":
        """Rebuild from a ``base.json`` (``load_base``) on ``device``: the file records none."""
        opts = dict(meta.get("source", {}))
        return cls.from_pretrained(
            **opts, latent_shape=tuple(meta["latent_shape"]),
            guidance_scale=meta.get("guidance_scale", 1.0),
            timestep_spacing=meta.get("timestep_spacing", "trailing"),
            beta_schedule=meta.get("beta_schedule"),
            dtype=meta.get("dtype", "auto"),
            device=device,
            offload=meta.get("offload", "none"), cfg_batch=meta.get("cfg_batch", True),
            **cls._extra_load_options(meta))

    @classmethod
    def _extra_load_options(cls, meta: dict) -> dict:
        return {}

    @classmethod
    def from_pretrained(cls, *args, **kwargs) -> "PretrainedBase":
        raise NotImplementedError


def _load_text(source: str, encoder_cls, *, local_files_only: bool):
    """``(text_encoder, tokenizer)`` from the ``text_encoder/`` and ``tokenizer/`` subfolders."""
    from transformers import AutoTokenizer
    enc = encoder_cls.from_pretrained(source, subfolder="text_encoder", local_files_only=local_files_only)
    tok = AutoTokenizer.from_pretrained(source, subfolder="tokenizer", local_files_only=local_files_only)
    return enc, tok


# --------------------------------------------------------------------------- AudioLDM
class AudioLDMBase(PretrainedBase):
    """AudioLDM's UNet over ``[N, C, T, M]``, CLAP text embeddings as ``class_labels``."""

    kind = "audioldm"
    modality = "audio"

    def _check_latent_shape(self) -> None:
        if len(self.latent_shape) != 3 or self.latent_shape[0] != self.unet.config.in_channels:
            raise ValueError(f"audioldm latents are (C, T, M) with C = "
                             f"{self.unet.config.in_channels}; got {self.latent_shape}")

    def _cond_shape(self) -> tuple[int, ...]:
        return (int(self.unet.config.projection_class_embeddings_input_dim),)

    def _unet(self, x, t, cond):
        return self.unet(x, t, encoder_hidden_states=None, class_labels=cond).sample

    TEXT_ENCODER = "ClapTextModelWithProjection"

    @staticmethod
    def _embed(encoder, tokens, device):
        out = encoder(tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device))
        return torch.nn.functional.normalize(out.text_embeds, dim=-1)

    @classmethod
    def from_pretrained(cls, model: str | Path, *, latent_shape: tuple[int, int, int],
                        guidance_scale: float = 1.0, text_encoder: bool = True,
                        device: str = "auto", dtype: str = "auto", timestep_spacing: str = "trailing",
                        beta_schedule: str | None = None, offload: str = "none",
                        cfg_batch: bool = True, local_files_only: bool = False,
                        **_: Any) -> "AudioLDMBase":
        """Load ``unet/`` + ``scheduler/`` (+ ``text_encoder/``, ``tokenizer/``) of AudioLDM."""
        from diffusers import UNet2DConditionModel
        model = str(model)
        torch_dtype = resolve_dtype(dtype, resolve_device(device))
        unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet", torch_dtype=torch_dtype,
                                                    local_files_only=local_files_only)
        enc = tok = None
        if text_encoder:
            from transformers import ClapTextModelWithProjection
            enc, tok = _load_text(model, ClapTextModelWithProjection, local_files_only=local_files_only)
        return cls(unet, load_scheduler_config(model, local_files_only=local_files_only), latent_shape,
                   guidance_scale=guidance_scale, text_encoder=enc, tokenizer=tok,
                   timestep_spacing=timestep_spacing, beta_schedule=beta_schedule, device=device,
                   dtype=dtype, offload=offload, cfg_batch=cfg_batch,
                   source={"model": model, "text_encoder": text_encoder,
                           "local_files_only": local_files_only})


# --------------------------------------------------------------------------- AnimateDiff
class AnimateDiffBase(PretrainedBase):
    """AnimateDiff's ``UNetMotionModel``; latents ``[N, F, C, H, W]`` ↔ diffusers' ``[B, C, F, H, W]``."""

    kind = "animatediff"
    modality = "video"

    def _check_latent_shape(self) -> None:
        if len(self.latent_shape) != 4 or self.latent_shape[1] != self.unet.config.in_channels:
            raise ValueError(f"animatediff latents are (F, C, H, W) with C = "
                             f"{self.unet.config.in_channels}; got {self.latent_shape}")

    def _cond_shape(self) -> tuple[int, ...]:
        if self.uncond is not None:
            return tuple(self.uncond.shape[1:])
        length = getattr(self.tokenizer, "model_max_length", None)
        return (int(length) if length else -1, int(self.unet.config.cross_attention_dim))

    def _check_cond(self, cond: torch.Tensor, n: int) -> torch.Tensor:
        if cond.ndim != 3 or cond.shape[-1] != self.unet.config.cross_attention_dim:
            raise ValueError(f"animatediff base expects prompt embeddings [N, L, "
                             f"{self.unet.config.cross_attention_dim}] (encode_prompt); got "
                             f"{list(cond.shape)}")
        if cond.shape[0] != n:
            raise ValueError(f"cond has {cond.shape[0]} rows for a batch of {n}")
        return cond.to(self.device_, self.dtype_)

    def _to_unet(self, x):
        return rearrange(x, "n f c h w -> n c f h w")

    def _from_unet(self, x):
        return rearrange(x, "n c f h w -> n f c h w")

    def _unet(self, x, t, cond):
        frames = x.shape[2]   # UNetMotionModel folds frames into the batch; so must the prompt
        return self.unet(x, t, encoder_hidden_states=cond.repeat_interleave(frames, dim=0)).sample

    TEXT_ENCODER = "CLIPTextModel"

    @staticmethod
    def _embed(encoder, tokens, device):
        mask = None
        if getattr(encoder.config, "use_attention_mask", False):
            mask = tokens.attention_mask.to(device)
        return encoder(tokens.input_ids.to(device), attention_mask=mask)[0]

    @classmethod
    def _extra_load_options(cls, meta: dict) -> dict:
        return {"forward_chunking": meta.get("forward_chunking", False)}

    def describe(self) -> dict:
        return {**super().describe(), "forward_chunking": self.forward_chunking}

    @classmethod
    def from_pretrained(cls, model: str | Path, *, latent_shape: tuple[int, int, int, int],
                        motion_adapter: str | Path | None = None, guidance_scale: float = 1.0,
                        text_encoder: bool = True, device: str = "auto", dtype: str = "auto",
                        timestep_spacing: str = "trailing", beta_schedule: str | None = None,
                        offload: str = "none", cfg_batch: bool = True,
                        forward_chunking: bool = False, local_files_only: bool = False,
                        **_: Any) -> "AnimateDiffBase":
        """Load a Stable Diffusion 1.5 folder or id (``unet/``, ``scheduler/``, ``text_encoder/``,
        ``tokenizer/``) and a ``MotionAdapter``; or a saved AnimateDiff pipeline whose ``unet/``
        is already a ``UNetMotionModel`` (then ``motion_adapter`` may be None)."""
        from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
        model = str(model)
        unet_config = UNet2DConditionModel.load_config(model, subfolder="unet",
                                                       local_files_only=local_files_only)
        torch_dtype = resolve_dtype(dtype, resolve_device(device))
        if unet_config.get("_class_name") == "UNetMotionModel":
            unet = UNetMotionModel.from_pretrained(model, subfolder="unet", torch_dtype=torch_dtype,
                                                   local_files_only=local_files_only)
        else:
            if motion_adapter is None:
                raise ValueError(f"{model}: its unet is a plain UNet2DConditionModel; name a "
                                 f"MotionAdapter (motion_adapter=, e.g. "
                                 f"guoyww/animatediff-motion-adapter-v1-5-2)")
            unet2d = UNet2DConditionModel.from_pretrained(model, subfolder="unet", torch_dtype=torch_dtype,
                                                          local_files_only=local_files_only)
            adapter = MotionAdapter.from_pretrained(str(motion_adapter), torch_dtype=torch_dtype,
                                                    local_files_only=local_files_only)
            unet = UNetMotionModel.from_unet2d(unet2d, adapter)
        if forward_chunking:
            unet.enable_forward_chunking(chunk_size=1, dim=1)
        enc = tok = None
        if text_encoder:
            from transformers import CLIPTextModel
            enc, tok = _load_text(model, CLIPTextModel, local_files_only=local_files_only)
        base = cls(unet, load_scheduler_config(model, local_files_only=local_files_only), latent_shape,
                   guidance_scale=guidance_scale, text_encoder=enc, tokenizer=tok,
                   timestep_spacing=timestep_spacing, beta_schedule=beta_schedule, device=device,
                   dtype=dtype, offload=offload, cfg_batch=cfg_batch,
                   source={"model": model, "text_encoder": text_encoder,
                           "motion_adapter": None if motion_adapter is None else str(motion_adapter),
                           "local_files_only": local_files_only})
        base.forward_chunking = bool(forward_chunking)
        return base


PRETRAINED_BASES = {"audioldm": AudioLDMBase, "animatediff": AnimateDiffBase}
PRETRAINED_KINDS = (*PRETRAINED_BASES, "auffusion")


def pretrained_class(kind: str) -> type[PretrainedBase]:
    """The adapter class of a pretrained base kind."""
    if kind == "auffusion":   # it builds on PretrainedBase, so it imports this module: on use
        from mmdisco.bases.auffusion import AuffusionBase
        return AuffusionBase
    return PRETRAINED_BASES[kind]


def load_text_encoder(kind: str, model: str | Path, *, device: str = "auto", dtype: str = "auto",
                      local_files_only: bool = False):
    """``embed(prompts) -> Tensor``: a pretrained base's own frozen text encoder (its
    ``text_encoder/`` and ``tokenizer/``) without its UNet; the embeddings ``eps(cond=)`` takes.
    ``embed.null()`` is the base's unconditional embedding (``null_embedding``)."""
    import transformers
    if kind not in PRETRAINED_KINDS:
        raise ValueError(f"base kind {kind!r} has no pretrained text encoder; choose one of "
                         f"{', '.join(PRETRAINED_KINDS)}")
    if kind == "auffusion":   # its text conditioning is CLIP + an adapter (condition_config.json)
        from mmdisco.bases.auffusion import load_text_encoder as auffusion_text
        return auffusion_text(model, device=device, dtype=dtype, local_files_only=local_files_only)
    cls = PRETRAINED_BASES[kind]
    dev = resolve_device(device)
    enc, tok = _load_text(str(model), getattr(transformers, cls.TEXT_ENCODER),
                          local_files_only=local_files_only)
    enc = enc.eval().requires_grad_(False).to(dev, resolve_dtype(dtype, dev))

    def embed(prompts: list[str]) -> torch.Tensor:
        tokens = tok(list(prompts), padding="max_length", max_length=tok.model_max_length,
                     truncation=True, return_tensors="pt")
        with torch.no_grad():
            return cls._embed(enc, tokens, dev)
    embed.null = lambda: embed([""])   # the empty prompt; Auffusion's own is zeros
    return embed


def from_config(cfg, latent_shape: tuple[int, ...]) -> PretrainedBase:
    """A pretrained base from ``base.<modality>`` (a ``TrainBaseConfig`` whose kind is not tiny)."""
    if cfg.kind not in PRETRAINED_KINDS:
        raise ValueError(f"base kind {cfg.kind!r} is not pretrained; choose one of "
                         f"{', '.join(PRETRAINED_KINDS)}")
    p = cfg.pretrained
    extra = {"motion_adapter": p.motion_adapter, "forward_chunking": p.forward_chunking} \
        if cfg.kind == "animatediff" else {}
    return pretrained_class(cfg.kind).from_pretrained(
        p.model, latent_shape=tuple(latent_shape),
        device=p.device, dtype=p.dtype, timestep_spacing=p.timestep_spacing,
        beta_schedule=p.beta_schedule, offload=p.offload, cfg_batch=p.cfg_batch, **extra)


def prepare_pretrained_base(latents: torch.Tensor, cfg, folder: str | Path) -> dict:
    """What ``train_base`` does for a pretrained kind: no training, just ``base.json``.

    Loads the weights once (so that a wrong id or folder fails here, not three stages later),
    checks the latents' shape against the model, writes ``folder/base.json`` and returns a
    summary shaped like ``train_base``'s.
    """
    start = time.perf_counter()
    base = from_config(cfg, tuple(latents.shape[1:]))
    Path(folder).mkdir(parents=True, exist_ok=True)
    meta = base.describe()
    meta["dtype"] = cfg.pretrained.dtype   # "auto" stays auto: resolved where it is loaded
    write_json(Path(folder) / CONFIG_FILE, meta)
    return {"steps": 0, "final_loss": float("nan"), "num_parameters": base.num_parameters(),
            "wall_s": time.perf_counter() - start, "resumed_from": 0, "kind": cfg.kind}

