"""Auffusion's audio encoder: waveform ↔ mel "image" ↔ Stable Diffusion VAE latents, and its
HiFi-GAN vocoder, written here from the facts of Auffusion's code (Xue et al. 2024,
github.com/happylittlecat2333/Auffusion, ``converter.py`` / ``auffusion_pipeline.py``).

Front end (``AuffusionMel``), the values Auffusion's converter hard-codes: audio at 16 kHz, each
clip peak-normalised to 0.95; reflect-padded by ``(n_fft − hop) / 2`` on both sides, then an
STFT with ``n_fft = 2048``, a 1024-sample Hann window, hop 160 and no centring; magnitude
``sqrt(re² + im² + 1e-9)``; Slaney mel filters (librosa's default: Slaney scale and area
norm) over 0–8 kHz, 256 bins; natural log of the magnitude clamped at 1e-5. The log-mel is
made an image: clamped to ``[ln 1e-5, ln 200]``, mapped to ``[0, 1]``, flipped along the mel
axis (high frequencies on the top row), repeated to 3 channels and mapped to ``[−1, 1]`` for
the VAE. Decoding takes channel 0 of the VAE's ``[0, 1]``-clamped output and undoes the rest.
``T`` mel frames ↔ ``T · hop`` samples; Auffusion itself works on 10.24 s, 1024 frames.

Latents: the VAE's posterior mean × its ``scaling_factor``. Auffusion's own latent is
``[N, 4, M/8, T/8]`` (mel before time); at this module's boundary it is the project's audio
layout ``[N, C, T, M]`` (``rearrange`` here, nowhere else).

Vocoder (``HifiGanGenerator``): HiFi-GAN V1-style generator, log-mel ``[N, M, T]`` →
``tanh`` waveform ``[N, 1, T · prod(upsample_rates)]``. Its folder (``vocoder/``) holds
``config.json`` (``num_mels``, ``upsample_initial_channel``, ``upsample_rates``,
``upsample_kernel_sizes``, ``resblock`` ("1" or else type 2), ``resblock_kernel_sizes``,
``resblock_dilation_sizes``, ``sampling_rate``) and ``vocoder.pt``, a torch pickle
``{"generator": state_dict}`` saved with weight normalisation on (``<conv>.weight_g``,
``<conv>.weight_v``, ``<conv>.bias``). The weights are folded here exactly as torch's
``remove_weight_norm`` does (``w = g · v / ‖v‖``, norm over all axes but 0) and loaded strictly.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchaudio
from einops import rearrange
from torch import nn

from mmdisco.encoders.pretrained import _load_vae, _MelVAE

N_FFT = 2048                 # Auffusion's STFT size
WIN_LENGTH = 1024            # ... and Hann window (zero-padded to N_FFT by the STFT)
F_MAX = 8000.0               # top of the mel filters (the Nyquist frequency at 16 kHz)
MAG_EPS = 1e-9               # added under the square root of the STFT magnitude
LOG_MIN = math.log(1e-5)     # log floor, and the bottom of the image range
LOG_MAX = math.log(200.0)    # top of the image range
PEAK = 0.95                  # each clip is peak-normalised to this
LRELU_SLOPE = 0.1            # HiFi-GAN's leaky ReLU slope (the one before conv_post uses 0.01)
VOCODER_CONFIG, VOCODER_WEIGHTS, VOCODER_KEY = "config.json", "vocoder.pt", "generator"
VOCODER_FIELDS = ("num_mels", "upsample_initial_channel", "upsample_rates",
                  "upsample_kernel_sizes", "resblock", "resblock_kernel_sizes",
                  "resblock_dilation_sizes")


def resolve_folder(model: str | Path, patterns: list[str] | None = None, *,
                   local_files_only: bool = False) -> Path:
    """A local folder as is; a hub id downloaded (only ``patterns``) into the hub cache."""
    if Path(model).is_dir():
        return Path(model)
    from huggingface_hub import snapshot_download
    try:
        return Path(snapshot_download(str(model), allow_patterns=patterns,
                                      local_files_only=local_files_only))
    except Exception as err:   # the hub's own errors say little about what to do
        raise OSError(f"{model}: not a local folder and not downloadable as a hub model "
                      f"({type(err).__name__}: {err}); give a folder in Auffusion's hub layout "
                      f"or check the id and the network (HF_HUB_OFFLINE)") from err


# --------------------------------------------------------------------------- front end
def slaney_mel_filters(sample_rate: int, n_fft: int, n_mels: int, f_min: float,
                       f_max: float) -> torch.Tensor:
    """Triangular filters ``[n_mels, n_fft // 2 + 1]`` on the Slaney mel scale with Slaney
    (area) normalisation, computed in float64 and returned as float32 (librosa's defaults)."""
    def hz_to_mel(f):
        f = torch.as_tensor(f, dtype=torch.float64)
        lin = f / (200.0 / 3)
        log = 15.0 + torch.log(f.clamp_min(1000.0) / 1000.0) / (math.log(6.4) / 27.0)
        return torch.where(f >= 1000.0, log, lin)

    def mel_to_hz(m):
        lin = m * (200.0 / 3)
        log = 1000.0 * torch.exp((math.log(6.4) / 27.0) * (m - 15.0))
        return torch.where(m >= 15.0, log, lin)

    fft_hz = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = mel_to_hz(torch.linspace(float(hz_to_mel(f_min)), float(hz_to_mel(f_max)), n_mels + 2,
                                     dtype=torch.float64))
    widths = edges.diff()
    ramps = edges[:, None] - fft_hz[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    # the triangles are stored in float32 before the area norm multiplies them (librosa's order)
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0).float().double()
    return (weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]).float()


class AuffusionMel:
    """Auffusion's log-mel and mel-image transforms (see the module docstring)."""

    def __init__(self, *, sample_rate: int = 16000, hop_length: int = 160, n_mels: int = 256,
                 normalize: bool = True):
        if N_FFT < hop_length:
            raise ValueError(f"hop {hop_length} exceeds Auffusion's STFT size {N_FFT}")
        self.sample_rate, self.hop_length = int(sample_rate), int(hop_length)
        self.n_mels = int(n_mels)
        self.normalize = bool(normalize)
        self.filters = slaney_mel_filters(self.sample_rate, N_FFT, self.n_mels, 0.0,
                                          min(F_MAX, self.sample_rate / 2))
        self.window = torch.hann_window(WIN_LENGTH)

    @classmethod
    def from_vocoder(cls, config: dict, *, normalize: bool = True) -> "AuffusionMel":
        """The front end whose mel the vocoder of ``config`` takes (bins, rate, hop)."""
        return cls(sample_rate=int(config.get("sampling_rate", 16000)),
                   hop_length=math.prod(config["upsample_rates"]), n_mels=int(config["num_mels"]),
                   normalize=normalize)

    def log_mel(self, wav: torch.Tensor) -> torch.Tensor:
        """float audio ``[N, L]`` at ``sample_rate`` → natural-log mel ``[N, M, L // hop]``."""
        x = wav.float()
        if self.normalize:   # in float64, as Auffusion's (librosa's) peak normalisation
            x = x.double()
            x = (x / x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) * PEAK).float()
        pad = (N_FFT - self.hop_length) // 2
        if x.shape[-1] <= pad:
            raise ValueError(f"{x.shape[-1]} samples are too few for Auffusion's front end; it "
                             f"needs more than {pad} (reflect padding)")
        x = F.pad(x[:, None], (pad, pad), mode="reflect")[:, 0]
        spec = torch.stft(x, N_FFT, hop_length=self.hop_length, win_length=WIN_LENGTH,
                          window=self.window.to(x.device), center=False, normalized=False,
                          onesided=True, return_complex=True)
        spec = torch.view_as_real(spec)
        mag = (spec.pow(2).sum(-1) + MAG_EPS).sqrt()
        return torch.matmul(self.filters.to(x.device), mag).clamp_min(1e-5).log()

    @staticmethod
    def to_image(log_mel: torch.Tensor) -> torch.Tensor:
        """log-mel ``[N, M, T]`` → the VAE's input image ``[N, 3, M, T]`` in ``[−1, 1]``."""
        unit = (log_mel.clamp(LOG_MIN, LOG_MAX) - LOG_MIN) / (LOG_MAX - LOG_MIN)
        image = unit.flip(-2)[:, None].expand(-1, 3, -1, -1)
        return image * 2.0 - 1.0

    @staticmethod
    def from_image(image: torch.Tensor) -> torch.Tensor:
        """The VAE's output image ``[N, 3, M, T]`` → log-mel ``[N, M, T]`` (from channel 0)."""
        unit = (image[:, 0].float() / 2 + 0.5).clamp(0, 1)
        return unit.flip(-2) * (LOG_MAX - LOG_MIN) + LOG_MIN


# --------------------------------------------------------------------------- vocoder
def _pad(kernel: int, dilation: int = 1) -> int:
    return (kernel * dilation - dilation) // 2


class _ResBlock1(nn.Module):
    """Three dilated convolutions, each followed by an undilated one, residual after each pair."""

    def __init__(self, ch: int, kernel: int, dilations):
        super().__init__()
        self.convs1 = nn.ModuleList(nn.Conv1d(ch, ch, kernel, 1, dilation=d, padding=_pad(kernel, d))
                                    for d in dilations)
        self.convs2 = nn.ModuleList(nn.Conv1d(ch, ch, kernel, 1, dilation=1, padding=_pad(kernel))
                                    for _ in dilations)

    def forward(self, x):
        for c1, c2 in zip(self.convs1, self.convs2):
            x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
        return x


class _ResBlock2(nn.Module):
    """Dilated convolutions, residual after each."""

    def __init__(self, ch: int, kernel: int, dilations):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(ch, ch, kernel, 1, dilation=d, padding=_pad(kernel, d))
                                   for d in dilations)

    def forward(self, x):
        for c in self.convs:
            x = x + c(F.leaky_relu(x, LRELU_SLOPE))
        return x


class HifiGanGenerator(nn.Module):
    """Auffusion's HiFi-GAN generator with plain (weight-norm-free) convolutions; parameter
    names are Auffusion's minus the ``_g``/``_v`` split (``load_weight_norm_state_dict``)."""

    def __init__(self, config: dict):
        super().__init__()
        missing = [k for k in VOCODER_FIELDS if k not in config]
        if missing:
            raise ValueError(f"vocoder config lacks {', '.join(missing)}")
        self.config = dict(config)
        c = self.config
        ch = int(c["upsample_initial_channel"])
        self.num_kernels = len(c["resblock_kernel_sizes"])
        self.conv_pre = nn.Conv1d(int(c["num_mels"]), ch, 7, 1, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        block = _ResBlock1 if c["resblock"] == "1" else _ResBlock2   # Auffusion's test, verbatim
        for i, (u, k) in enumerate(zip(c["upsample_rates"], c["upsample_kernel_sizes"])):
            odd = (k - u) % 2
            self.ups.append(nn.ConvTranspose1d(ch // 2 ** i, ch // 2 ** (i + 1), k, u,
                                               padding=(k - u) // 2 + odd, output_padding=odd))
            for rk, rd in zip(c["resblock_kernel_sizes"], c["resblock_dilation_sizes"]):
                self.resblocks.append(block(ch // 2 ** (i + 1), rk, rd))
        self.conv_post = nn.Conv1d(ch // 2 ** len(self.ups), 1, 7, 1, padding=3)

    @property
    def hop_length(self) -> int:
        return math.prod(self.config["upsample_rates"])

    @property
    def sampling_rate(self) -> int:
        return int(self.config.get("sampling_rate", 16000))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """log-mel ``[N, M, T]`` → waveform ``[N, 1, T · hop]`` in ``(−1, 1)``."""
        x = self.conv_pre(mel)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
            x = sum(b(x) for b in blocks) / self.num_kernels
        return torch.tanh(self.conv_post(F.leaky_relu(x)))   # default slope 0.01, as HiFi-GAN

    def load_weight_norm_state_dict(self, state: dict, *, source: str = "the state dict") -> None:
        """Load a state dict saved with weight normalisation on, strictly (every key used, none
        missing); already folded ``<conv>.weight`` entries are taken as they are."""
        folded, bad = {}, []
        for key, value in state.items():
            if key.endswith("weight_g") or key.endswith("weight_v"):
                stem, other = key[:-2], key[:-1] + ("v" if key.endswith("g") else "g")
                if other not in state:
                    bad.append(f"{key} without {other}")
                elif key.endswith("g"):
                    folded[stem] = torch._weight_norm(state[other].float(), value.float(), 0)
            else:
                folded[key] = value
        own = self.state_dict()
        bad += [f"missing {k}" for k in own if k not in folded]
        bad += [f"unexpected {k}" for k in folded if k not in own]
        bad += [f"{k} is {list(v.shape)}, the config gives {list(own[k].shape)}"
                for k, v in folded.items() if k in own and v.shape != own[k].shape]
        if bad:
            raise ValueError(f"{source} does not fit Auffusion's vocoder as its config.json "
                             f"describes it: {'; '.join(bad[:8])}{' …' if len(bad) > 8 else ''}")
        self.load_state_dict(folded, strict=True)

    @classmethod
    def from_folder(cls, folder: str | Path) -> "HifiGanGenerator":
        """``config.json`` + ``vocoder.pt`` (``{"generator": state_dict}``), in eval mode."""
        folder = Path(folder)
        config_file, weights = folder / VOCODER_CONFIG, folder / VOCODER_WEIGHTS
        for f in (config_file, weights):
            if not f.is_file():
                raise FileNotFoundError(f"{f} is missing: Auffusion's vocoder folder holds "
                                        f"{VOCODER_CONFIG} and {VOCODER_WEIGHTS} (hub layout: "
                                        f"<model>/vocoder/)")
        try:
            model = cls(json.loads(config_file.read_text()))
        except ValueError as err:
            raise ValueError(f"{config_file}: {err}") from err
        ckpt = torch.load(weights, map_location="cpu", weights_only=True)
        state = ckpt.get(VOCODER_KEY, ckpt) if isinstance(ckpt, dict) else None
        if not isinstance(state, dict):
            raise ValueError(f"{weights}: expected a dict {{'generator': state_dict}}")
        model.load_weight_norm_state_dict(state, source=str(weights))
        return model.eval().requires_grad_(False)


def read_vocoder_config(root: Path) -> dict:
    f = Path(root) / "vocoder" / VOCODER_CONFIG
    if not f.is_file():
        raise FileNotFoundError(f"{f} is missing: an Auffusion model folder has vocoder/"
                                f"{VOCODER_CONFIG} (the mel settings come from it)")
    return json.loads(f.read_text())


def silence_latent(vae, mel: AuffusionMel, latent_frames: int, *, device: torch.device,
                   dtype: torch.dtype) -> torch.Tensor:
    """The latent ``[C, latent_frames, M/f]`` (our layout) of digital silence: what Auffusion's
    MMDisCo wrapper pads short latents with (there: a posterior sample; here: its mean)."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    wav = torch.zeros(1, latent_frames * factor * mel.hop_length)
    image = mel.to_image(mel.log_mel(wav))
    with torch.no_grad():
        z = vae.encode(image.to(device, dtype)).latent_dist.mode() * float(vae.config.scaling_factor)
    return rearrange(z[0].float().cpu(), "c m t -> c t m")


# --------------------------------------------------------------------------- encoder
class AuffusionEncoder(_MelVAE):
    """float32 audio ``[N, L]`` ↔ Auffusion latent ``[N, C, T, M]`` (see the module docstring).

    ``context_mel_frames`` (e.g. 1024, Auffusion's 10.24 s): pad each mel image with the log
    floor to that many frames before the VAE and crop the latent back, as Auffusion's MMDisCo
    wrapper does; None encodes the clip alone (padded to a multiple of the VAE's factor).
    """

    kind = "auffusion"

    def __init__(self, cfg=None, *, sample_rate: int, num_samples: int, model: str | None = None,
                 device: str | None = None, dtype: str | None = None, batch_size: int = 16,
                 normalize: bool = True, context_mel_frames: int | None = None,
                 progress: bool = True, local_files_only: bool = False, vae=None, vocoder=None):
        super().__init__(model or getattr(cfg, "model", None),
                         device=device or getattr(cfg, "device", "auto"),
                         dtype=dtype or getattr(cfg, "dtype", "float32"), batch_size=batch_size,
                         progress=progress, local_files_only=local_files_only)
        root = None
        if vae is None or vocoder is None:
            root = resolve_folder(self.model, ["vae/*", "vocoder/*"],
                                  local_files_only=local_files_only)
        self.vae = vae or _load_vae(str(root), "vae", self.dtype, local_files_only)
        self.vocoder = vocoder or HifiGanGenerator.from_folder(root / "vocoder").to(self.dtype)
        for m in (self.vae, self.vocoder):
            m.to(self.device).eval().requires_grad_(False)
        self.sample_rate, self.num_samples = int(sample_rate), int(num_samples)
        self.mel = AuffusionMel.from_vocoder(self.vocoder.config, normalize=normalize)
        self.model_rate, self.hop_length = self.mel.sample_rate, self.mel.hop_length
        self.vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        if self.mel.n_mels % self.vae_factor:
            raise ValueError(f"{self.model}: {self.mel.n_mels} mel bins are not divisible by the "
                             f"VAE's factor {self.vae_factor}")
        self.model_samples = math.ceil(self.num_samples * self.model_rate / self.sample_rate)
        frames = math.ceil(self.model_samples / self.hop_length)
        self.frames = math.ceil(frames / self.vae_factor) * self.vae_factor
        self.context_mel_frames = None if context_mel_frames is None else int(context_mel_frames)
        if self.context_mel_frames is not None and (self.context_mel_frames < self.frames or
                                                    self.context_mel_frames % self.vae_factor):
            raise ValueError(f"context_mel_frames ({self.context_mel_frames}) must be a multiple "
                             f"of {self.vae_factor} and at least the clip's {self.frames} frames")

    @property
    def normalize(self) -> bool:
        return self.mel.normalize

    @property
    def n_mels(self) -> int:
        return self.mel.n_mels

    def log_mel(self, clips: torch.Tensor) -> torch.Tensor:
        """Auffusion's log-mel ``[N, M, T = frames]`` of clips at the clip rate (float32, CPU)."""
        mel = self.mel.log_mel(self._at_model_rate(clips))[..., : self.frames]
        return F.pad(mel, (0, self.frames - mel.shape[-1]), value=LOG_MIN)

    def encode(self, clips: torch.Tensor) -> torch.Tensor:
        image = self.mel.to_image(self.log_mel(clips))
        if self.context_mel_frames is not None:
            image = F.pad(image, (0, self.context_mel_frames - self.frames), value=-1.0)
        sf, keep = float(self.vae.config.scaling_factor), self.frames // self.vae_factor

        def one(x):
            z = self.vae.encode(x.to(self.device, self.dtype)).latent_dist.mode() * sf
            return rearrange(z[..., :keep], "n c m t -> n c t m")
        return self._batched(one, image, "encode audio")

    def decode_mel(self, latents: torch.Tensor) -> torch.Tensor:
        """Latent ``[N, C, T, M]`` → log-mel ``[N, M, T · f]`` (the VAE's decoder)."""
        sf = float(self.vae.config.scaling_factor)

        def one(z):
            z = rearrange(z.to(self.device, self.dtype), "n c t m -> n c m t")
            return self.mel.from_image(self.vae.decode(z / sf).sample)
        return self._batched(one, latents, "decode audio (vae)")

    def to_db(self, latents: torch.Tensor) -> torch.Tensor:
        """Latent → dB mel ``[N, T, M]`` (for contact sheets), low frequencies first."""
        return self.decode_mel(latents).transpose(1, 2) * (20.0 / math.log(10.0))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latent → waveform ``[N, L]`` at the clip rate (VAE decoder, then the vocoder)."""
        mel = self.decode_mel(latents)
        wav = self._batched(lambda m: self.vocoder(m.to(self.device, self.dtype))[:, 0], mel,
                            "decode audio (vocoder)")
        if self.sample_rate != self.model_rate:
            wav = torchaudio.functional.resample(wav, self.model_rate, self.sample_rate)
        wav = F.pad(wav, (0, max(0, self.num_samples - wav.shape[-1])))
        return wav[..., : self.num_samples].float()

    def silence_latent(self, latent_frames: int) -> torch.Tensor:
        """``[C, latent_frames, M/f]``: the latent of silence (what ``AuffusionBase`` pads with)."""
        return silence_latent(self.vae, self.mel, latent_frames, device=self.device, dtype=self.dtype)

    def state(self) -> dict[str, Any]:
        return {**self._common_state(), "sample_rate": self.sample_rate,
                "num_samples": self.num_samples, "normalize": self.normalize,
                "context_mel_frames": self.context_mel_frames,
                "latent_shape": list(self.latent_shape)}

    @classmethod
    def from_state(cls, state: dict[str, Any], *, device: str = "auto",
                   **kwargs) -> "AuffusionEncoder":
        return cls(None, model=state["model"], sample_rate=state["sample_rate"],
                   num_samples=state["num_samples"], dtype=state.get("dtype", "float32"),
                   batch_size=state.get("batch_size", 16), normalize=state.get("normalize", True),
                   context_mel_frames=state.get("context_mel_frames"), device=device, **kwargs)
