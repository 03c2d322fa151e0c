"""Frozen pretrained encoders for pretrained mode: AudioLDM's mel + VAE, Stable Diffusion's VAE.

Same interface as the embedded default's encoders (``fit``, ``encode``, ``decode``, ``state``,
``from_state``); the weights are named by ``model`` (a Hugging Face model id or a local folder
in diffusers' layout) and loaded with ``from_pretrained``.

``AudioLDMEncoder`` (``kind: audioldm``): float32 audio ``[N, L]`` at the clip rate →
  resampled to the vocoder's rate (16 kHz for AudioLDM) → AudioLDM's mel front end (STFT with
  ``n_fft = win = 1024``, hop = the vocoder's upsampling factor (160), Hann window, reflect
  padding, magnitude, Slaney mel filters over ``[0, rate/2]`` with the vocoder's ``model_in_dim``
  bins (64), natural log clamped at 1e-5) → ``[N, 1, T, M]`` → the VAE's posterior mean × its
  ``scaling_factor`` → latent ``[N, C, T/s, M/s]`` (C = 8, s = 4 for AudioLDM), time before mel
  bins. Like AudioLDM's own data loader, each clip is centred and scaled to a peak of 0.5 first
  (``normalize``). ``T`` is the clip's frame count rounded up to a multiple of the VAE's factor
  (padded with silence). Decoding: VAE → log-mel → ``SpeechT5HifiGan`` vocoder → waveform,
  resampled back to the clip rate and cut to the clip length.

``SDVAEEncoder`` (``kind: sd_vae``): uint8 video ``[N, F, H, W, 3]`` → ``[-1, 1]`` → every frame
  through ``AutoencoderKL`` (posterior mean × ``scaling_factor``) → ``[N, F, C, H/8, W/8]``.

Both encode in batches of ``batch_size`` (frames for video) with a progress bar
(``progress=False`` silences it), on ``device`` in ``dtype``; the posterior MEAN is used, so
encoding is deterministic. Rebuilt from a stored ``state`` (``from_state``), an encoder runs on
the ``device`` its caller names (``auto`` by default): the state records no device.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
import torchaudio
from einops import rearrange
from tqdm.auto import tqdm

from mmdisco.devices import dtype_name, resolve_device, resolve_dtype

FILTER_LENGTH = 1024        # AudioLDM's STFT size and window (16 kHz audio)
LOG_FLOOR = 1e-5            # AudioLDM's dynamic range compression: log(clamp(x, 1e-5))
PEAK = 0.5                  # AudioLDM's loader scales each clip to this peak


def _progress(total: int, desc: str, enabled: bool):
    return tqdm(total=total, desc=desc, unit="item", disable=not enabled, leave=False)


def _load_vae(source: str, subfolder: str | None, dtype: torch.dtype, local_files_only: bool):
    """``AutoencoderKL`` from ``source/subfolder``, or from ``source`` itself when it is a VAE alone."""
    from diffusers import AutoencoderKL
    if subfolder is None:
        return AutoencoderKL.from_pretrained(source, torch_dtype=dtype, local_files_only=local_files_only)
    try:
        return AutoencoderKL.from_pretrained(source, subfolder=subfolder, torch_dtype=dtype,
                                             local_files_only=local_files_only)
    except (OSError, EnvironmentError):
        return AutoencoderKL.from_pretrained(source, torch_dtype=dtype, local_files_only=local_files_only)


class _Frozen:
    """Shared bits: device, dtype, batching, a frozen module list."""

    kind = ""

    def __init__(self, model: str, *, device: str = "auto", dtype: str = "float32",
                 batch_size: int = 16, progress: bool = True, local_files_only: bool = False):
        if not model:
            raise ValueError(f"the {self.kind} encoder needs its weights: set encoders.*.model "
                             f"to a model id or a local folder")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = str(model)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.batch_size = int(batch_size)
        self.progress = progress
        self.local_files_only = local_files_only

    def fit(self, clips: torch.Tensor) -> None:
        """Nothing to learn: the pretrained encoder's normalisation is fixed."""

    def _batched(self, fn, x: torch.Tensor, desc: str) -> torch.Tensor:
        out = []
        with torch.no_grad(), _progress(len(x), desc, self.progress) as bar:
            for lo in range(0, len(x), self.batch_size):
                chunk = x[lo:lo + self.batch_size]
                out.append(fn(chunk).float().cpu())
                bar.update(len(chunk))
        return torch.cat(out) if out else x.new_zeros((0,))

    def _common_state(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model, "dtype": dtype_name(self.dtype),
                "batch_size": self.batch_size}


# --------------------------------------------------------------------------- audio
class _MelVAE(_Frozen):
    """What the mel-spectrogram VAE encoders share (AudioLDM's, Auffusion's): ``frames`` mel
    frames of ``n_mels`` bins at ``model_rate``, ``vae_factor`` times smaller in the latent."""

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (int(self.vae.config.latent_channels), self.frames // self.vae_factor,
                self.n_mels // self.vae_factor)

    @property
    def seconds(self) -> float:
        """Audio the latent covers (the clip, rounded up to whole VAE-sized frame groups)."""
        return self.frames * self.hop_length / self.model_rate

    def _at_model_rate(self, clips: torch.Tensor) -> torch.Tensor:
        """Float clips ``[N, L]`` resampled from the clip rate to the model's."""
        if clips.ndim != 2:
            raise ValueError(f"audio clips must be float [N, L], got {tuple(clips.shape)}")
        wav = clips.float()
        if self.sample_rate != self.model_rate:
            wav = torchaudio.functional.resample(wav, self.sample_rate, self.model_rate)
        return wav


class AudioLDMEncoder(_MelVAE):
    """float32 audio ``[N, L]`` ↔ AudioLDM latent ``[N, C, T, M]`` (see the module docstring)."""

    kind = "audioldm"

    def __init__(self, cfg=None, *, sample_rate: int, num_samples: int, model: str | None = None,
                 device: str | None = None, dtype: str | None = None, batch_size: int = 16,
                 normalize: bool = True, progress: bool = True, local_files_only: bool = False,
                 vae=None, vocoder=None):
        super().__init__(model or getattr(cfg, "model", None),
                         device=device or getattr(cfg, "device", "auto"),
                         dtype=dtype or getattr(cfg, "dtype", "float32"), batch_size=batch_size,
                         progress=progress, local_files_only=local_files_only)
        from transformers import SpeechT5HifiGan
        self.sample_rate, self.num_samples = int(sample_rate), int(num_samples)
        self.normalize = bool(normalize)
        self.vae = (vae or _load_vae(self.model, "vae", self.dtype, local_files_only))
        self.vocoder = vocoder or SpeechT5HifiGan.from_pretrained(
            self.model, subfolder="vocoder", torch_dtype=self.dtype, local_files_only=local_files_only)
        for m in (self.vae, self.vocoder):   # dtype set at load (torch_dtype=), as diffusers asks
            m.to(self.device).eval().requires_grad_(False)
        vc = self.vocoder.config
        self.model_rate = int(vc.sampling_rate)
        self.hop_length = int(math.prod(vc.upsample_rates))
        self.n_mels = int(vc.model_in_dim)
        self.vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        if self.n_mels % self.vae_factor:
            raise ValueError(f"{self.model}: {self.n_mels} mel bins are not divisible by the VAE's "
                             f"factor {self.vae_factor}")
        if FILTER_LENGTH < self.hop_length:
            raise ValueError(f"{self.model}: hop {self.hop_length} exceeds the STFT size {FILTER_LENGTH}")
        self.model_samples = math.ceil(self.num_samples * self.model_rate / self.sample_rate)
        frames = math.ceil(self.model_samples / self.hop_length)
        self.frames = math.ceil(frames / self.vae_factor) * self.vae_factor
        self._mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=self.model_rate, n_fft=FILTER_LENGTH, win_length=FILTER_LENGTH,
            hop_length=self.hop_length, f_min=0.0, f_max=self.model_rate / 2, n_mels=self.n_mels,
            power=1.0, center=True, pad_mode="reflect", norm="slaney", mel_scale="slaney")

    def log_mel(self, clips: torch.Tensor) -> torch.Tensor:
        """AudioLDM's log-mel ``[N, 1, T, M]`` of clips at the clip rate (float32, CPU)."""
        wav = self._at_model_rate(clips)
        if self.normalize:
            wav = wav - wav.mean(dim=-1, keepdim=True)
            wav = wav / wav.abs().amax(dim=-1, keepdim=True).clamp_min(1e-8) * PEAK
        mel = self._mel(wav.clamp(-1, 1)).clamp_min(LOG_FLOOR).log()       # [N, M, T + 1]
        mel = mel[..., : self.frames]
        if mel.shape[-1] < self.frames:
            mel = F.pad(mel, (0, self.frames - mel.shape[-1]), value=math.log(LOG_FLOOR))
        return rearrange(mel, "n m t -> n 1 t m")

    def encode(self, clips: torch.Tensor) -> torch.Tensor:
        mel = self.log_mel(clips)
        sf = float(self.vae.config.scaling_factor)

        def one(x):
            return self.vae.encode(x.to(self.device, self.dtype)).latent_dist.mode() * sf
        return self._batched(one, mel, "encode audio")

    def decode_mel(self, latents: torch.Tensor) -> torch.Tensor:
        """Latent → AudioLDM log-mel ``[N, 1, T, M]`` (the VAE's decoder)."""
        sf = float(self.vae.config.scaling_factor)
        return self._batched(lambda z: self.vae.decode(z.to(self.device, self.dtype) / sf).sample,
                             latents, "decode audio (vae)")

    def to_db(self, latents: torch.Tensor) -> torch.Tensor:
        """Latent → dB mel ``[N, T, M]`` (for contact sheets): the VAE's log-magnitude mel
        (natural log) times 20 / ln 10."""
        return self.decode_mel(latents)[:, 0].float().cpu() * (20.0 / math.log(10.0))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latent → waveform ``[N, L]`` at the clip rate (VAE decoder, then the vocoder)."""
        mel = self.decode_mel(latents)
        wav = self._batched(lambda m: self.vocoder(m[:, 0].to(self.device, self.dtype)), mel,
                            "decode audio (vocoder)")
        if self.sample_rate != self.model_rate:
            wav = torchaudio.functional.resample(wav, self.model_rate, self.sample_rate)
        wav = F.pad(wav, (0, max(0, self.num_samples - wav.shape[-1])))
        return wav[..., : self.num_samples].float()

    def state(self) -> dict[str, Any]:
        return {**self._common_state(), "sample_rate": self.sample_rate,
                "num_samples": self.num_samples, "normalize": self.normalize,
                "latent_shape": list(self.latent_shape)}

    @classmethod
    def from_state(cls, state: dict[str, Any], *, device: str = "auto",
                   **kwargs) -> "AudioLDMEncoder":
        return cls(None, model=state["model"], sample_rate=state["sample_rate"],
                   num_samples=state["num_samples"], dtype=state.get("dtype", "float32"),
                   batch_size=state.get("batch_size", 16), normalize=state.get("normalize", True),
                   device=device, **kwargs)


# --------------------------------------------------------------------------- video
class SDVAEEncoder(_Frozen):
    """uint8 video ``[N, F, H, W, 3]`` ↔ latent ``[N, F, C, H/s, W/s]`` through Stable Diffusion's VAE."""

    kind = "sd_vae"

    def __init__(self, cfg=None, *, model: str | None = None, device: str | None = None,
                 dtype: str | None = None, batch_size: int = 16, subfolder: str | None = "vae",
                 progress: bool = True, local_files_only: bool = False, vae=None):
        super().__init__(model or getattr(cfg, "model", None),
                         device=device or getattr(cfg, "device", "auto"),
                         dtype=dtype or getattr(cfg, "dtype", "float32"), batch_size=batch_size,
                         progress=progress, local_files_only=local_files_only)
        self.subfolder = subfolder
        self.vae = vae or _load_vae(self.model, subfolder, self.dtype, local_files_only)
        self.vae.to(self.device).eval().requires_grad_(False)
        self.factor = 2 ** (len(self.vae.config.block_out_channels) - 1)

    def _check(self, clips: torch.Tensor) -> None:
        if clips.dtype != torch.uint8 or clips.ndim != 5 or clips.shape[-1] != 3:
            raise ValueError(f"video clips must be uint8 [N, F, H, W, 3], got "
                             f"{clips.dtype} {tuple(clips.shape)}")
        h, w = clips.shape[2:4]
        if h % self.factor or w % self.factor:
            raise ValueError(f"frames of {h}×{w} pixels: the VAE needs sides divisible by "
                             f"{self.factor}; change data.clip.size")

    def encode(self, clips: torch.Tensor) -> torch.Tensor:
        self._check(clips)
        n = clips.shape[0]
        frames = rearrange(clips, "n f h w c -> (n f) c h w")
        sf = float(self.vae.config.scaling_factor)

        def one(x):
            x = x.to(self.device).to(self.dtype) / 127.5 - 1.0
            return self.vae.encode(x).latent_dist.mode() * sf
        z = self._batched(one, frames, "encode video frames")
        return rearrange(z, "(n f) c h w -> n f c h w", n=n)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        n = latents.shape[0]
        sf = float(self.vae.config.scaling_factor)
        z = rearrange(latents, "n f c h w -> (n f) c h w")
        x = self._batched(lambda z: self.vae.decode(z.to(self.device, self.dtype) / sf).sample,
                          z, "decode video frames")
        pixels = ((x.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
        return rearrange(pixels, "(n f) c h w -> n f h w c", n=n)

    def state(self) -> dict[str, Any]:
        return {**self._common_state(), "subfolder": self.subfolder}

    @classmethod
    def from_state(cls, state: dict[str, Any], *, device: str = "auto",
                   **kwargs) -> "SDVAEEncoder":
        return cls(None, model=state["model"], dtype=state.get("dtype", "float32"),
                   batch_size=state.get("batch_size", 16), subfolder=state.get("subfolder", "vae"),
                   device=device, **kwargs)
