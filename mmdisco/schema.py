"""The params schema: one frozen dataclass per section of ``params.yaml``, with each key's
default, allowed range and the rules that tie keys together.

Defaults live in ``params.yaml``; the dataclass defaults only mirror them so the library can be
used without a file (tests, notebooks). Reading files, merging and overrides are the loader's
(``mmdisco.config``); everything here is importable from there too.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar


class ConfigError(ValueError):
    """A params file or override is invalid; the message names the key and the fix."""


def _opt(default: Any, *, lo: float | None = None, hi: float | None = None,
         lo_open: bool = False, choices: tuple | None = None, doc: str = "") -> Any:
    """A dataclass field carrying its validation rule in metadata (read by ``check_range``)."""
    meta = {"lo": lo, "hi": hi, "lo_open": lo_open, "choices": choices, "doc": doc}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


def check_range(value: Any, meta: dict, key: str) -> None:
    """Apply one field's rule (its ``_opt`` metadata: choices, bounds) to ``value``."""
    if value is None:
        return
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, choices))}; got {value!r}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value != value:  # NaN
            raise ConfigError(f"{key} must be a number, got NaN")
        if lo is not None and (value <= lo if meta.get("lo_open") else value < lo):
            op = ">" if meta.get("lo_open") else ">="
            rng = f"{op} {lo}" + (f" and <= {hi}" if hi is not None else "")
            raise ConfigError(f"{key} must be {rng}; got {value}")
        if hi is not None and value > hi:
            rng = (f">= {lo} and " if lo is not None else "") + f"<= {hi}"
            raise ConfigError(f"{key} must be {rng}; got {value}")


def check_device(device: str, key: str) -> None:
    """``key`` names the device key itself (``device``, ``encoders.audio.device``)."""
    if device != "auto" and not re.fullmatch(r"cpu|cuda(:\d+)?|mps", device):
        raise ConfigError(f"{key} must be auto, cpu, cuda, cuda:N or mps; got {device!r}")


def check_config(cfg: Any, key: str) -> Any:
    """Apply a params file's checks (every field's rule, then each section's ``validate``) to a
    config dataclass built in code, where ``build`` never ran; return it."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            check_config(value, f"{key}.{f.name}")
        else:
            check_range(value, dict(f.metadata), f"{key}.{f.name}")
    if hasattr(cfg, "validate"):
        cfg.validate(key)
    return cfg


# --------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class SynthConfig:
    """The embedded bouncing-ball world (see README, "The embedded world")."""

    num_files: int = _opt(1000, lo=1, doc="media files to render")
    seconds: float = _opt(2.0, lo=0.25, doc="duration of each rendered file")
    num_classes: int = _opt(4, lo=2, hi=8, doc="K: colours tied one-to-one to pitches")
    fps: int = _opt(8, lo=1, hi=120, doc="frame rate of the rendered files")
    size: int = _opt(64, lo=32, hi=512, doc="rendered frame side in pixels (decoded, then resized)")
    sample_rate: int = _opt(16000, lo=8000, hi=48000, doc="audio rate of the rendered files")
    min_period: int = _opt(3, lo=2, doc="fewest frames between floor contacts")
    max_period: int = _opt(6, lo=2, doc="most frames between floor contacts")
    video_noise: float = _opt(0.02, lo=0.0, hi=0.5, doc="Gaussian pixel noise, std on [-1, 1]")
    audio_noise: float = _opt(0.003, lo=0.0, hi=0.5, doc="Gaussian background noise, std")
    tone_decay: float = _opt(0.06, lo=0.005, hi=1.0, doc="tone decay time constant (s)")
    vocabulary: tuple[str, ...] = _opt((), doc="caption of class k = vocabulary[k]; empty = "
                                              "'a <colour> ball with a <pitch> Hz tone'")

    def validate(self, key: str) -> None:
        if self.max_period < self.min_period:
            raise ConfigError(f"{key}.max_period ({self.max_period}) must be >= "
                              f"{key}.min_period ({self.min_period})")
        if self.vocabulary:
            if len(self.vocabulary) < self.num_classes:
                raise ConfigError(f"{key}.vocabulary has {len(self.vocabulary)} captions for "
                                  f"{self.num_classes} classes; give one per class (or [] for "
                                  f"the default captions)")
            if len(set(self.vocabulary[:self.num_classes])) < self.num_classes:
                raise ConfigError(f"{key}.vocabulary repeats a caption: classes would share a "
                                  f"prompt; give {self.num_classes} distinct captions")


@dataclass(frozen=True)
class ClipConfig:
    """Fixed-length windows cut from any media file."""

    seconds: float = _opt(1.0, lo=0.0, lo_open=True, doc="window length")
    hop_seconds: float = _opt(1.0, lo=0.0, lo_open=True, doc="stride between window starts")
    fps: int = _opt(8, lo=1, hi=120, doc="frames per second kept in a clip")
    size: int = _opt(16, lo=4, hi=1024, doc="frame side after resizing (square)")
    sample_rate: int = _opt(8000, lo=1000, hi=96000, doc="audio rate of a clip (mono)")
    max_windows_per_file: int = _opt(0, lo=0, doc="0 = all windows a file holds")
    max_reject_fraction: float = _opt(0.5, lo=0.0, hi=1.0,
                                      doc="fail the stage when more files than this are rejected")
    workers: int = _opt(2, lo=1, hi=64, doc="processes decoding files in parallel")
    file_timeout_s: float = _opt(120.0, lo=1.0, doc="a file taking longer is rejected")
    shard_size: int = _opt(1024, lo=1, doc="clips per shard file")

    @property
    def num_frames(self) -> int:
        return round(self.seconds * self.fps)

    @property
    def num_samples(self) -> int:
        return round(self.seconds * self.sample_rate)

    def validate(self, key: str) -> None:
        if abs(self.seconds * self.fps - self.num_frames) > 1e-6:
            raise ConfigError(f"{key}.seconds × {key}.fps must be a whole number of frames "
                              f"(got {self.seconds} × {self.fps})")
        if self.num_frames < 2:
            raise ConfigError(f"{key}.seconds × {key}.fps must give at least 2 frames")


@dataclass(frozen=True)
class DataConfig:
    source: str = _opt("synth", choices=("synth", "folder"),
                       doc="synth: render the embedded world; folder: the user's media files")
    folder: str | None = _opt(None, doc="folder of media files when source is 'folder'")
    captions: str | None = _opt(None, doc="folder source: CSV with columns file,caption (paths "
                                          "relative to data.folder); a file without a caption "
                                          "gets the empty caption")
    synth: SynthConfig = _opt(SynthConfig())
    clip: ClipConfig = _opt(ClipConfig())

    def validate(self, key: str) -> None:
        if self.source == "folder":
            if not self.folder:
                raise ConfigError(f"{key}.folder must name a folder of media files when "
                                  f"{key}.source is 'folder'")
        elif self.captions:
            raise ConfigError(f"{key}.captions names a captions CSV for data.folder; the synthetic "
                              f"world captions its own clips (data.synth.vocabulary): set "
                              f"{key}.captions to null")


TORCH_DTYPES = ("float32", "float16", "bfloat16")


def _weights_device() -> Any:
    """The device of an encoder's pretrained weights (the same key in both encoders)."""
    return _opt("auto", doc="pretrained kinds: auto (cuda when present) | cpu | cuda[:N]")


def _weights_dtype() -> Any:
    return _opt("float32", choices=TORCH_DTYPES, doc="pretrained kinds: weights' dtype")


class _PretrainedEncoder:
    """The rule both encoder sections share: a kind other than the embedded one loads
    pretrained weights, so ``model`` must name them, on a device torch knows."""

    embedded_kind: ClassVar[str]

    def validate(self, key: str) -> None:
        if self.kind != self.embedded_kind and not self.model:
            raise ConfigError(f"{key}.model must name the {self.kind} weights (a Hugging Face "
                              f"model id or a local folder) when {key}.kind is '{self.kind}'")
        check_device(self.device, f"{key}.device")


@dataclass(frozen=True)
class AudioEncoderConfig(_PretrainedEncoder):
    embedded_kind: ClassVar[str] = "logmel"

    kind: str = _opt("logmel", choices=("logmel", "audioldm", "auffusion"),
                     doc="frozen audio encoder: logmel (embedded default) | audioldm (AudioLDM's "
                         "mel front end + VAE, its HiFi-GAN vocoder to decode; pretrained mode)")
    n_mels: int = _opt(32, lo=4, hi=512)
    n_fft: int = _opt(256, lo=16, hi=8192)
    frames: int = _opt(32, lo=4, hi=4096, doc="mel frames per clip (time axis T)")
    top_db: float = _opt(45.0, lo=10.0, hi=160.0, doc="dynamic range kept below the peak")
    # pretrained kinds only (logmel ignores them)
    model: str | None = _opt(None, doc="audioldm: weights, a model id or a local folder holding "
                                       "vae/ and vocoder/")
    device: str = _weights_device()
    dtype: str = _weights_dtype()


@dataclass(frozen=True)
class VideoEncoderConfig(_PretrainedEncoder):
    embedded_kind: ClassVar[str] = "pixels"

    kind: str = _opt("pixels", choices=("pixels", "sd_vae"),
                     doc="frozen video encoder: pixels (embedded default) | sd_vae (Stable "
                         "Diffusion's AutoencoderKL per frame; pretrained mode)")
    model: str | None = _opt(None, doc="sd_vae: weights, a model id or a local folder (with a "
                                       "vae/ subfolder, or a VAE alone)")
    device: str = _weights_device()
    dtype: str = _weights_dtype()


@dataclass(frozen=True)
class TextEncoderConfig:
    """The tiny bases' frozen text encoder (pretrained bases use their own, e.g. CLAP, CLIP)."""

    dim: int = _opt(64, lo=4, hi=4096, doc="embedding size of the hashed bag-of-words encoder")


@dataclass(frozen=True)
class EncodersConfig:
    audio: AudioEncoderConfig = _opt(AudioEncoderConfig())
    video: VideoEncoderConfig = _opt(VideoEncoderConfig())
    text: TextEncoderConfig = _opt(TextEncoderConfig())
    batch_size: int = _opt(256, lo=1)


@dataclass(frozen=True)
class EvalConfig:
    bootstrap: int = _opt(1000, lo=10, doc="bootstrap resamples for confidence intervals")
    confidence: float = _opt(0.95, lo=0.5, hi=0.999)
    max_pairs: int = _opt(0, lo=0, doc="0 = evaluate every clip")
    av_align_pairs: int = _opt(64, lo=0, doc="pairs per set rendered to mp4 and scored by "
                                             "AV-Align (0 = off)")
    audio_features: str | None = _opt(None, doc="TorchScript audio feature extractor (waveform "
                                                "[N, L] -> [N, D]) for Fréchet distances")
    video_features: str | None = _opt(None, doc="TorchScript video feature extractor (frames "
                                                "[N, F, 3, H, W] in [0, 1] -> [N, D])")


# --------------------------------------------------------------------------- base models
@dataclass(frozen=True)
class TinyBaseConfig:
    """Architecture and parameterisation of one tiny base model."""

    arch: str = _opt("unet2d", choices=("unet2d", "unet1d"),
                     doc="unet2d: diffusers UNet2DModel (frames and patches as channels); "
                         "unet1d: UNet1DModel over time, mel bins as channels (audio only)")
    channels: tuple[int, ...] = _opt((64, 128), doc="width of each resolution level")
    layers_per_block: int = _opt(1, lo=1, hi=4, doc="resnet layers per level")
    attn_levels: tuple[int, ...] = _opt((), doc="levels (0 = finest) with self-attention (unet2d)")
    mid_attention: bool = _opt(True, doc="self-attention in the middle block (unet2d)")
    attn_head_dim: int = _opt(32, lo=4, doc="channels per attention head (unet2d)")
    norm_groups: int = _opt(16, lo=1, doc="GroupNorm groups (unet1d always uses 8)")
    patch: int = _opt(2, lo=1, hi=8, doc="pixels per side folded into channels (unet2d)")
    frame_layout: str = _opt("channels", choices=("channels", "tiles"),
                             doc="video (unet2d): frames stacked as channels, or tiled into one "
                                 "image (a near-square grid) so that convolutions share weights "
                                 "across frames")
    prediction_type: str = _opt("edm", choices=("edm", "v_prediction", "epsilon", "sample"),
                                doc="what the network outputs: EDM-preconditioned x_0, v, ε or x_0; "
                                    "eps() always returns ε")
    data_mean: float | None = _opt(None, doc="edm: latent mean μ; null = estimate from the "
                                             "training latents")
    sigma_data: float | None = _opt(None, lo=0.0, lo_open=True,
                                    doc="edm: latent std σ_d around μ; null = estimate from the "
                                        "training latents")
    beta_schedule: str = _opt("squaredcos_cap_v2",
                              choices=("squaredcos_cap_v2", "linear", "scaled_linear"),
                              doc="noise schedule (Nichol & Dhariwal 2021 cosine by default)")
    num_train_timesteps: int = _opt(1000, lo=2, hi=100000)
    clip_sample: bool = _opt(True, doc="eps() clips its x0 prediction to [-1, 1] (latents live "
                                       "there); schedulers never clip")

    def validate(self, key: str) -> None:
        if not self.channels:
            raise ConfigError(f"{key}.channels must list at least one width")
        for i, c in enumerate(self.channels):
            groups = 8 if self.arch == "unet1d" else self.norm_groups
            if c < 1 or c % groups:
                raise ConfigError(f"{key}.channels[{i}] = {c} must be a positive multiple of "
                                  f"{'8 (unet1d GroupNorm)' if self.arch == 'unet1d' else key + '.norm_groups'}"
                                  f" ({groups})")
        bad = [lv for lv in self.attn_levels if not 0 <= lv < len(self.channels)]
        if bad:
            raise ConfigError(f"{key}.attn_levels {bad} must index {key}.channels "
                              f"(0 … {len(self.channels) - 1})")
        with_attn = set(self.attn_levels) | ({len(self.channels) - 1} if self.mid_attention else set())
        widths = [self.channels[lv] for lv in sorted(with_attn)] if self.arch == "unet2d" else []
        if any(c % self.attn_head_dim for c in widths):
            raise ConfigError(f"{key}.attn_head_dim ({self.attn_head_dim}) must divide the width of "
                              f"every level with attention ({widths})")


BASE_KINDS = {"audio": ("tiny", "audioldm", "auffusion"), "video": ("tiny", "animatediff")}


@dataclass(frozen=True)
class PretrainedBaseConfig:
    """A frozen pretrained base (``mmdisco.bases.pretrained``), used when ``kind`` is not tiny."""

    model: str | None = _opt(None, doc="weights: a model id or a local folder in diffusers' layout "
                                       "(unet/, scheduler/, text_encoder/, tokenizer/)")
    motion_adapter: str | None = _opt(None, doc="animatediff: the MotionAdapter (model id or "
                                                "folder); null when model's unet already has one")
    device: str = _opt("auto", doc="auto (cuda when present) | cpu | cuda[:N]")
    dtype: str = _opt("auto", choices=("auto",) + TORCH_DTYPES,
                      doc="auto: float16 on a GPU, float32 on the CPU")
    timestep_spacing: str = _opt("trailing", choices=("trailing", "leading", "linspace"),
                                 doc="sampler timesteps; both bases must give the same sequence")
    beta_schedule: str | None = _opt(None, choices=(None, "linear", "scaled_linear",
                                                    "squaredcos_cap_v2"),
                                     doc="override the model's noise schedule (null = its own)")
    offload: str = _opt("none", choices=("none", "model", "sequential"),
                        doc="GPU memory: model = text encoder on the GPU only while encoding "
                            "prompts; sequential = stream the UNet's weights from the CPU (slow)")
    forward_chunking: bool = _opt(False, doc="animatediff: chunked feed-forward (less memory)")
    cfg_batch: bool = _opt(True, doc="one UNet pass on [uncond; cond] (false: two passes, "
                                     "half the activation memory)")

    def validate(self, key: str) -> None:
        check_device(self.device, f"{key}.device")


@dataclass(frozen=True)
class TrainBaseConfig:
    """One base model's architecture and training schedule."""

    kind: str = _opt("tiny", choices=("tiny", "audioldm", "auffusion", "animatediff"),
                     doc="tiny: the embedded default's model (trained here); audioldm (audio) | "
                         "animatediff (video): frozen pretrained weights (base.<m>.pretrained)")
    model: TinyBaseConfig = _opt(TinyBaseConfig())
    steps: int = _opt(1500, lo=1, doc="optimiser steps")
    batch_size: int = _opt(64, lo=1)
    lr: float = _opt(2e-3, lo=0.0, lo_open=True, doc="peak learning rate")
    warmup_steps: int = _opt(100, lo=0, doc="linear warmup from 0 to lr")
    min_lr_ratio: float = _opt(0.05, lo=0.0, hi=1.0, doc="cosine decay ends at lr × this")
    weight_decay: float = _opt(0.0, lo=0.0)
    adam_beta2: float = _opt(0.99, lo=0.0, hi=0.9999)
    grad_clip: float = _opt(1.0, lo=0.0, doc="max global gradient norm; 0 = off")
    ema_decay: float = _opt(0.995, lo=0.0, hi=1.0, doc="EMA decay cap; (1+n)/(10+n) early on")
    min_snr_gamma: float = _opt(0.0, lo=0.0, doc="cap on the loss's x_0 weight (min-SNR-γ); 0 = off")
    hflip: bool = _opt(False, doc="mirror video latents left-right at random (video only)")
    cond_dropout: float = _opt(0.1, lo=0.0, hi=0.9, doc="condition: caption: fraction of "
                                                        "training rows given the empty prompt "
                                                        "(what classifier-free guidance needs)")
    checkpoint_every: int = _opt(500, lo=1, doc="steps between resumable checkpoints")
    log_every: int = _opt(50, lo=1, doc="steps between loss logs")
    pretrained: PretrainedBaseConfig = _opt(PretrainedBaseConfig())

    def validate(self, key: str) -> None:
        if self.kind != "tiny" and not self.pretrained.model:
            raise ConfigError(f"{key}.pretrained.model must name the {self.kind} weights (a model "
                              f"id or a local folder) when {key}.kind is '{self.kind}'")
        if self.warmup_steps >= self.steps:
            raise ConfigError(f"{key}.warmup_steps ({self.warmup_steps}) must be < {key}.steps "
                              f"({self.steps})")


@dataclass(frozen=True)
class BaseModelsConfig:
    """The ``base`` section: one base model per modality, each trained (or loaded) alone; by
    default the embedded world's two tiny ones."""

    # audio: a 2D UNet over (time, mel) folded into 4×4 patches with EDM preconditioning
    # (σ_data = 0.1); sizes and steps picked with bench/tune_bases.py (README, "Cost")
    audio: TrainBaseConfig = _opt(TrainBaseConfig(
        model=TinyBaseConfig(arch="unet2d", channels=(32, 64), patch=4, prediction_type="edm",
                             sigma_data=0.1),
        steps=500, warmup_steps=50))
    # video: the 8 frames tiled into one 2×4 image so that convolutions share weights across
    # frames; 4×4 patches and EDM preconditioning (σ_data = 0.1) as for audio, picked likewise
    video: TrainBaseConfig = _opt(TrainBaseConfig(
        model=TinyBaseConfig(channels=(32, 64, 64), patch=4, frame_layout="tiles",
                             prediction_type="edm", sigma_data=0.1),
        steps=1000))

    def validate(self, key: str) -> None:
        for modality, kinds in BASE_KINDS.items():
            kind = getattr(self, modality).kind
            if kind not in kinds:
                raise ConfigError(f"{key}.{modality}.kind '{kind}' is not a {modality} base; "
                                  f"choose one of {', '.join(kinds)}")


@dataclass(frozen=True)
class FakesConfig:
    """The fake-pair bank: each base samples alone, pairs are formed at random."""

    num_pairs: int = _opt(1024, lo=2, doc="fake pairs in the bank")
    steps: int = _opt(25, lo=1, hi=1000, doc="sampler steps per sample (match sample.steps)")
    kind: str = _opt("ddim", choices=("ddim", "ddpm"), doc="sampler (match sample.kind)")
    eta: float = _opt(1.0, lo=0.0, hi=1.0, doc="DDIM stochasticity (match sample.eta); 0 for ddpm")
    batch_size: int = _opt(256, lo=1)

    def validate(self, key: str) -> None:
        if self.kind == "ddpm" and self.eta != 0:
            raise ConfigError(f"{key}.eta is DDIM's; set it to 0 with {key}.kind: ddpm")


@dataclass(frozen=True)
class DiscriminatorConfig:
    """The joint discriminator D(a_t, v_t, t) (README, "The method") and its training."""

    width: int = _opt(16, lo=4, hi=512, doc="conv channels of each modality encoder")
    time_dim: int = _opt(64, lo=8, hi=1024, doc="timestep embedding size")
    head_hidden: int = _opt(64, lo=4, hi=1024, doc="hidden units of the fusion heads")
    # its training (the base models stay frozen): one section per guide, as the critic's
    steps: int = _opt(1200, lo=1)
    batch_size: int = _opt(64, lo=2, doc="real pairs per step (and as many negatives)")
    lr: float = _opt(1e-3, lo=0.0, lo_open=True)
    weight_decay: float = _opt(0.0, lo=0.0)
    grad_clip: float = _opt(1.0, lo=0.0, doc="max gradient norm; 0 = off")
    denoise_weight: float = _opt(0.0, lo=0.0,
                                 doc="λ of the denoising score-matching term; 0 = plain BCE")
    negatives: str = _opt("generated", choices=("generated", "shuffled", "both"),
                          doc="generated: the paper's fakes; shuffled: mismatched real pairs")
    checkpoint_every: int = _opt(250, lo=1, doc="steps between resumable checkpoints")
    log_every: int = _opt(50, lo=1)
    eval_every: int = _opt(500, lo=1, doc="steps between held-out accuracy checks")
    heldout: int = _opt(256, lo=8, doc="real clips held out for accuracy checks")
    cond_dropout: float = _opt(0.1, lo=0.0, hi=0.9, doc="condition: caption: fraction of pairs "
                                                        "trained without their prompt (the "
                                                        "unconditional branch of the guide's CFG)")


@dataclass(frozen=True)
class CriticConfig:
    """The contrastive critic (InfoNCE on real pairs; the alignment part of the residual)."""

    width: int = _opt(16, lo=4, hi=512, doc="conv channels of each modality encoder")
    time_dim: int = _opt(64, lo=8, hi=1024, doc="timestep embedding size")
    dim: int = _opt(64, lo=4, hi=1024, doc="embedding size of each tower")
    temperature: float = _opt(0.1, lo=0.0, lo_open=True, doc="τ: score = cosine / τ")
    steps: int = _opt(1000, lo=1)
    batch_size: int = _opt(64, lo=2, doc="real pairs per step; the others are the negatives")
    lr: float = _opt(1e-3, lo=0.0, lo_open=True)
    warmup_steps: int = _opt(50, lo=0)
    weight_decay: float = _opt(0.0, lo=0.0)
    grad_clip: float = _opt(1.0, lo=0.0, doc="max gradient norm; 0 = off")
    t_min: int = _opt(300, lo=0, doc="training timesteps are uniform over [t_min, t_max]")
    t_max: int = _opt(999, lo=0)
    checkpoint_every: int = _opt(250, lo=1, doc="steps between resumable checkpoints")
    log_every: int = _opt(50, lo=1)
    eval_every: int = _opt(500, lo=1, doc="steps between held-out retrieval checks")
    heldout: int = _opt(256, lo=8, doc="real clips held out for retrieval checks")

    def validate(self, key: str) -> None:
        if self.t_max < self.t_min:
            raise ConfigError(f"{key}.t_max ({self.t_max}) must be >= {key}.t_min ({self.t_min})")


# the authors' released discriminators (``mmdisco.guidance.release.SETTINGS``; a test keeps the
# two lists equal: the schema names them without importing torch)
RELEASED_SETTINGS = ("audioldm_animediff_vggsound", "auffusion_videocrafter2_vggsound",
                     "mmdiffusion_landscape", "mmdiffusion_aist++")
RELEASED_URL = "https://huggingface.co/AkioHayakawa/MMDisCo"


@dataclass(frozen=True)
class ReleasedGuideConfig:
    """One of the authors' released discriminators (``docs/released.md``), used when
    ``guidance.module`` is released."""

    checkpoint: str | None = _opt(None, doc="path of the released <setting>.pt (from "
                                            f"{RELEASED_URL})")
    setting: str | None = _opt(None, choices=RELEASED_SETTINGS,
                               doc="which released discriminator the checkpoint is")


@dataclass(frozen=True)
class GuidanceConfig:
    """ε̂^m = ε_m + s_m r_D^m + c_m r_C^m, with r = −σ_t^m ∇ (logit D or critic score).

    s_a = scale × audio_weight, s_v = scale × video_weight (the paper's discriminator);
    c_a = scale × critic_weight × critic_audio_weight, c_v likewise with critic_video_weight.
    ``scale`` multiplies everything, so ``scale = 0`` is independent sampling.
    ``module`` says which discriminator D is: the one `train_discriminator` trains, or a
    released one (``released``), which that stage then checks and records instead.
    """

    module: str = _opt("trained", choices=("trained", "released"),
                       doc="trained: the discriminator trained here; released: the authors' "
                           "released module (guidance.released)")
    released: ReleasedGuideConfig = _opt(ReleasedGuideConfig())
    scale: float = _opt(8.0, lo=0.0, doc="overall guidance scale; 0 = independent sampling")
    audio_weight: float = _opt(2.0, lo=0.0)
    video_weight: float = _opt(0.5, lo=0.0)
    critic_weight: float = _opt(2.0, lo=0.0, doc="critic residual relative to scale; 0 = off")
    critic_audio_weight: float = _opt(1.0, lo=0.0)
    critic_video_weight: float = _opt(0.0, lo=0.0)
    restarts: int = _opt(0, lo=0, doc="extra re-noised repeats of each of the first restart_steps")
    restart_steps: int = _opt(0, lo=0, doc="how many leading sampler steps get restarts")

    def validate(self, key: str) -> None:
        if self.module != "released":
            return
        r = self.released
        if not r.setting:
            raise ConfigError(f"{key}.released.setting must name the released discriminator "
                              f"when {key}.module is released; choose one of "
                              f"{', '.join(RELEASED_SETTINGS)}")
        if not r.checkpoint:
            raise ConfigError(f"{key}.released.checkpoint must name the released checkpoint file "
                              f"({r.setting}.pt from {RELEASED_URL}) when {key}.module is released")

    @property
    def scales(self) -> tuple[float, float]:
        """``(s_a, s_v)`` of the discriminator."""
        return self.scale * self.audio_weight, self.scale * self.video_weight

    @property
    def critic_scales(self) -> tuple[float, float]:
        """``(c_a, c_v)`` of the critic."""
        c = self.scale * self.critic_weight
        return c * self.critic_audio_weight, c * self.critic_video_weight


@dataclass(frozen=True)
class SampleConfig:
    num_samples: int = _opt(512, lo=1, doc="pairs per set (guided and baseline)")
    steps: int = _opt(25, lo=1, hi=1000)
    kind: str = _opt("ddim", choices=("ddim", "ddpm"))
    eta: float = _opt(1.0, lo=0.0, hi=1.0, doc="DDIM stochasticity (1: a fresh noise draw per "
                                                "step, which lets guidance correct course)")
    batch_size: int = _opt(256, lo=1)
    media: int = _opt(8, lo=0, doc="pairs per set written as mp4 with sound")
    prompts: tuple[str, ...] = _opt((), doc="condition: caption: prompts, cycled over the "
                                            "samples; empty = captions of held-out clips")

    def validate(self, key: str) -> None:
        if self.kind == "ddpm" and self.eta != 0:
            raise ConfigError(f"{key}.eta is DDIM's; set it to 0 with {key}.kind: ddpm")


@dataclass(frozen=True)
class CFGConfig:
    """Each base's own classifier-free guidance weight w (``condition: caption``)."""

    audio: float = _opt(2.0, lo=0.0, doc="ε = ε_u + w (ε_c − ε_u); 1 = prompt only")
    video: float = _opt(2.0, lo=0.0, doc="likewise for the video base")


@dataclass(frozen=True)
class Params:
    seed: int = _opt(0, lo=0, doc="master seed; every stage derives its generators from it")
    device: str = _opt("auto", doc="where the tiny bases, the guides and sampling run in a "
                                   "single-process run: auto (the first GPU, else the CPU) | "
                                   "cpu | cuda[:N]; a launcher gives each rank its own")
    condition: str = _opt("none", choices=("none", "caption"),
                          doc="none: unconditional bases; caption: text-conditional bases, "
                              "fakes, discriminator and sampling from prompts")
    data: DataConfig = _opt(DataConfig())
    encoders: EncodersConfig = _opt(EncodersConfig())
    eval: EvalConfig = _opt(EvalConfig())
    base: BaseModelsConfig = _opt(BaseModelsConfig())
    fakes: FakesConfig = _opt(FakesConfig())
    discriminator: DiscriminatorConfig = _opt(DiscriminatorConfig())
    critic: CriticConfig = _opt(CriticConfig())
    guidance: GuidanceConfig = _opt(GuidanceConfig())
    sample: SampleConfig = _opt(SampleConfig())
    cfg: CFGConfig = _opt(CFGConfig())

    def validate(self, key: str) -> None:
        check_device(self.device, "device")
        if self.data.source == "synth":
            synth, clip = self.data.synth, self.data.clip
            if clip.seconds > synth.seconds:
                raise ConfigError(f"data.clip.seconds ({clip.seconds}) is longer than the rendered "
                                  f"files (data.synth.seconds = {synth.seconds}); no clip would fit")
            if clip.sample_rate < 7000:
                raise ConfigError(f"data.clip.sample_rate ({clip.sample_rate}) cannot carry the "
                                  f"world's tones (up to 3 kHz); use at least 7000")
        if self.encoders.audio.frames > self.data.clip.num_samples:
            raise ConfigError(f"encoders.audio.frames ({self.encoders.audio.frames}) exceeds the "
                              f"audio samples per clip ({self.data.clip.num_samples})")
