"""What the four released MMDisCo discriminators are: architectures, layouts, sampling facts.

Why a table: the release's hydra configs (``conf/model/<setting>.yaml``) are the only record of
each checkpoint's architecture; ``SETTINGS`` keeps those facts here, checked against the configs
by ``tests/test_release.py``. Also the release's guidance quantity ``φ(h)`` (see the package doc).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

EPS = 1e-5                      # the release's offset inside φ(h)
HEADS, HEAD_DIM = 8, 64         # the fusion transformer's attention (fixed in the release)
CHECKPOINTS_URL = "https://huggingface.co/AkioHayakawa/MMDisCo"
FUSIONS = ("aggregate_time_and_cat_ch", "cat_time_and_apply_transformer")


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class ReleasedArch:
    """Architecture of one released discriminator (the release's config names in comments)."""

    video_channels: int                 # feature_extractor.video_cdim
    audio_channels: int                 # feature_extractor.audio_cdim
    audio_conv: str                     # audio_conv_type: "2d" (latent [N,C,T,M]) or "1d" (waveform)
    num_res_blocks: int
    max_dila: int                       # audio dilation of ResBlock k is 2 ** ((k + 1) % max_dila)
    fusion: str                         # fusion_model_conf.fusion_type
    text_dims: tuple[int, int] | None   # (audio_text_emb_dims, video_text_emb_dims); None: no text
    model_channels: int = 128
    time_dims: int = 128                # time_embed_dims
    channel_mult: tuple[int, ...] = (1, 2, 4)
    num_attn_layers: int = 4            # transformer fusion only (+1 layer with a class token)
    fusion_channels: int = 256          # fusion_model_conf.model_channels
    fusion_out_channels: int = 256      # fusion_model_conf.out_channels
    use_class_token: bool = True
    max_seq_len: int = 128              # positional table of the fusion transformer

    @property
    def separable(self) -> bool:
        """``h = f(v, t, text) + g(a, t, text)``: time-pooled features and a linear head."""
        return self.fusion == "aggregate_time_and_cat_ch"


@dataclass(frozen=True)
class ReleasedSetting:
    """One released checkpoint: its architecture and how the release samples with it."""

    arch: ReleasedArch
    params: int                         # parameter count of the state dict
    bases: tuple[str, str]              # (audio base, video base)
    text: tuple[str, str] | None        # what feeds text_dims (audio, video)
    native: tuple[str, str]             # the bases' own latent layouts (audio, video)
    video_channel_time_transpose: bool  # native video is [N, C, F, H, W]
    audio_spatial_transpose: bool       # native audio is [N, C, M, T]
    cfg_weights: tuple[float, float] | None  # (audio, video) CFG weights of the residuals
    joint_scales: tuple[float, float]   # (audio, video) scale of the residual added to ε


def _latent(audio_channels: int, fusion: str, text_dims: tuple[int, int]) -> ReleasedArch:
    return ReleasedArch(video_channels=4, audio_channels=audio_channels, audio_conv="2d",
                        num_res_blocks=4, max_dila=1, fusion=fusion, text_dims=text_dims)


_MMDIFF = ReleasedArch(video_channels=3, audio_channels=1, audio_conv="1d", num_res_blocks=2,
                       max_dila=10, fusion="aggregate_time_and_cat_ch", text_dims=None)
_MMDIFF_SETTING = ReleasedSetting(
    arch=_MMDIFF, params=12_682_241, bases=("MM-Diffusion (audio)", "MM-Diffusion (video, 64x64)"),
    text=None, native=("[N, 1, L] waveform", "[N, F, 3, H, W] pixels"),
    video_channel_time_transpose=False, audio_spatial_transpose=False, cfg_weights=None,
    joint_scales=(1.0, 1.0))

SETTINGS: dict[str, ReleasedSetting] = {
    "audioldm_animediff_vggsound": ReleasedSetting(
        arch=_latent(8, "aggregate_time_and_cat_ch", (512, 768)), params=33_261_313,
        bases=("AudioLDM (cvssp/audioldm-m-full)", "AnimateDiff"),
        text=("CLAP text embedding [N, 512]", "CLIP text states [N, 77, 768] (token mean)"),
        native=("[N, 8, T, 16]", "[N, 4, F, H, W]"), video_channel_time_transpose=True,
        audio_spatial_transpose=False, cfg_weights=(2.5, 7.5), joint_scales=(1.0, 8.0)),
    "auffusion_videocrafter2_vggsound": ReleasedSetting(
        arch=_latent(4, "cat_time_and_apply_transformer", (768, 1024)), params=38_972_161,
        bases=("Auffusion", "VideoCrafter2"),
        text=("CLIP text states [N, 77, 768] (token mean)",
              "OpenCLIP text states [N, 77, 1024] (token mean)"),
        native=("[N, 4, M, T]", "[N, 4, F, H, W]"), video_channel_time_transpose=True,
        audio_spatial_transpose=True, cfg_weights=(8.0, 8.0), joint_scales=(1.0, 8.0)),
    "mmdiffusion_landscape": _MMDIFF_SETTING,
    "mmdiffusion_aist++": _MMDIFF_SETTING,
}


def resolve_arch(setting: str | ReleasedArch) -> ReleasedArch:
    """The architecture of a released setting (by name), or ``setting`` itself."""
    if isinstance(setting, ReleasedArch):
        return setting
    if setting not in SETTINGS:
        raise ValueError(f"unknown released setting {setting!r}; choose one of {', '.join(SETTINGS)}")
    return SETTINGS[setting].arch


def arch_from_release_config(rp: dict) -> ReleasedArch:
    """``ReleasedArch`` from the ``residual_predictor`` section of a release model config
    (``conf/model/<setting>.yaml``); options the released settings do not use are refused."""
    fe, fm = rp["feature_extractor"], rp["fusion_model_conf"]
    unsupported = {"video_conv_type": fe["video_conv_type"] != "2d+1d",
                   "use_scale_shift_norm": not fe["use_scale_shift_norm"],
                   "first_norm_type": fe.get("first_norm_type") is not None,
                   "attention_resolutions": bool(fe["video_attention_resolutions"]
                                                 or fe["audio_attention_resolutions"]
                                                 or fe["cross_attention_resolutions"]),
                   "input_type": (rp["video_input_type"], rp["audio_input_type"]) != ("sample_only",) * 2,
                   "last_sigmoid": not rp.get("last_sigmoid", True)}
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise ValueError(f"the release config uses options no released setting uses: {bad}")
    if fe["model_channels"] % 32 or fe["time_embed_dims"] != rp["time_embed_dims"]:
        raise ValueError("model_channels must be a multiple of 32 (GroupNorm(32)) and the two "
                         "time_embed_dims must agree")
    transformer = fm["fusion_type"] == FUSIONS[1]
    return ReleasedArch(
        video_channels=fe["video_cdim"], audio_channels=fe["audio_cdim"],
        audio_conv=fe["audio_conv_type"], num_res_blocks=fe["num_res_blocks"],
        max_dila=fe["max_dila"], fusion=fm["fusion_type"],
        text_dims=(rp["audio_text_emb_dims"], rp["video_text_emb_dims"]) if rp["text_cond"] else None,
        model_channels=fe["model_channels"], time_dims=rp["time_embed_dims"],
        channel_mult=tuple(fe["channel_mult"]),
        **({"num_attn_layers": fm["num_attn_layers"], "fusion_channels": fm["model_channels"],
            "fusion_out_channels": fm["out_channels"], "use_class_token": fm["use_class_token"]}
           if transformer else {}))


# --------------------------------------------------------------------------- layouts and φ
def to_ours(setting: str, audio: torch.Tensor, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The bases' native latents (``SETTINGS[s].native``) in our layouts; its own inverse."""
    if setting not in SETTINGS:
        raise ValueError(f"unknown released setting {setting!r}; choose one of {', '.join(SETTINGS)}")
    s = SETTINGS[setting]
    if s.audio_spatial_transpose:
        audio = audio.transpose(2, 3)
    if s.video_channel_time_transpose:
        video = video.transpose(1, 2)
    return audio, video


to_native = to_ours


def release_potential(h: torch.Tensor) -> torch.Tensor:
    """``φ(h) = log(p + ε) − log1p(−p + ε)``, ``p = sigmoid(h)``: what the release differentiates."""
    p = torch.sigmoid(h)
    return torch.log(p + EPS) - torch.log1p(-p + EPS)


def potential_slope(h: torch.Tensor) -> torch.Tensor:
    """``dφ/dh = p(1 − p)(1/(p + ε) + 1/(1 − p + ε))`` (≤ 1; the release's residual is this × ours)."""
    p = torch.sigmoid(h.double())
    return p * (1 - p) * (1 / (p + EPS) + 1 / (1 - p + EPS))
