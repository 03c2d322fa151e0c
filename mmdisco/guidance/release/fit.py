"""Whether a released discriminator fits the bases it is asked to guide, checked before sampling.

Why: a released module was trained in its own bases' latent spaces (``docs/released.md``,
"Layouts"). Fed other latents, it either fails deep inside a convolution halfway through
sampling or, worse, runs and guides with gradients that mean nothing. So the pipeline checks
the bases' latent shapes and prompt embeddings against the module's architecture at load time
and fails with one message that lists every mismatch. Base kinds are only compared for a note:
equal shapes from other bases are allowed, but they are flagged.
"""
from __future__ import annotations

from typing import Sequence

from mmdisco.guidance.release.settings import FUSIONS, SETTINGS, ReleasedArch

# the bases each setting was trained against (``base.<m>.kind``); the project has no
# VideoCrafter2 adapter yet (Auffusion's is mmdisco.bases.auffusion), and MM-Diffusion is joint
BASE_KINDS = {"audioldm_animediff_vggsound": ("audioldm", "animatediff"),
              "auffusion_videocrafter2_vggsound": ("auffusion", "videocrafter2")}


def _audio_steps(arch: ReleasedArch, audio_shape: Sequence[int]) -> int:
    """Audio positions the fusion sees: spectrogram time frames, or the waveform length / 4
    per downsampling level."""
    if arch.audio_conv == "2d":
        return int(audio_shape[1])
    return int(audio_shape[-1]) // 4 ** (len(arch.channel_mult) - 1)


def _latent_problems(arch: ReleasedArch, audio_shape: tuple, video_shape: tuple) -> list[str]:
    problems = []
    if arch.audio_conv == "2d":
        if len(audio_shape) != 3 or audio_shape[0] != arch.audio_channels:
            problems.append(f"audio latents are {list(audio_shape)}; it takes spectrogram "
                            f"latents [C, T, M] with C = {arch.audio_channels}")
    elif len(audio_shape) != 2 or audio_shape[0] != 1:
        problems.append(f"audio latents are {list(audio_shape)}; it takes a waveform [1, L]")
    if len(video_shape) != 4 or video_shape[1] != arch.video_channels:
        problems.append(f"video latents are {list(video_shape)}; it takes [F, C, H, W] with "
                        f"C = {arch.video_channels}")
    if not problems and arch.fusion == FUSIONS[1]:
        length = int(video_shape[0]) + _audio_steps(arch, audio_shape) + 1 + arch.use_class_token
        if length > arch.max_seq_len:
            problems.append(f"frames + audio steps make {length} fusion positions; it has "
                            f"{arch.max_seq_len}")
    return problems


def _text_problems(arch: ReleasedArch, text_audio: tuple | None,
                   text_video: tuple | None) -> list[str]:
    if arch.text_dims is None:
        return []
    if text_audio is None or text_video is None:
        return ["it is text-conditional and needs the bases' prompt embeddings "
                "(condition: caption)"]
    problems = []
    for name, shape, dim in (("audio", text_audio, arch.text_dims[0]),
                             ("video", text_video, arch.text_dims[1])):
        if len(shape) not in (1, 2) or shape[-1] != dim:
            problems.append(f"the {name} base's prompt embeddings are {list(shape)} per prompt; "
                            f"it takes [{dim}] or token states [L, {dim}]")
    return problems


def check_fits(setting: str | ReleasedArch, *, audio_shape: Sequence[int],
               video_shape: Sequence[int], text_audio: Sequence[int] | None = None,
               text_video: Sequence[int] | None = None,
               base_kinds: tuple[str, str] | None = None) -> list[str]:
    """Refuse bases whose latents (``[C, T, M]``, ``[F, C, H, W]``, no batch axis) or prompt
    embeddings (per prompt, no batch axis; None without prompts) the released ``setting``
    cannot take, naming every mismatch. Returns notes that do not stop the run (other bases
    than the release's, with fitting shapes)."""
    arch = setting if isinstance(setting, ReleasedArch) else SETTINGS[setting].arch
    name = setting if isinstance(setting, str) else "the given architecture"
    problems = (_latent_problems(arch, tuple(audio_shape), tuple(video_shape))
                + _text_problems(arch, None if text_audio is None else tuple(text_audio),
                                 None if text_video is None else tuple(text_video)))
    if problems:
        known = SETTINGS[setting] if isinstance(setting, str) else None
        trained_on = "" if known is None else (
            f" (it was trained against {' / '.join(known.bases)}, native latents "
            f"{' / '.join(known.native)})")
        raise ValueError(f"the released discriminator {name} does not fit these bases: "
                         f"{'; '.join(problems)}{trained_on}")
    expected = BASE_KINDS.get(name) if isinstance(setting, str) else None
    if base_kinds is not None and expected is not None and tuple(base_kinds) != expected:
        return [f"the released {name} was trained against {' / '.join(expected)} bases; these "
                f"are {' / '.join(base_kinds)}: the shapes fit, but its guidance may mean nothing"]
    return []


def check_bases(module, base_a, base_v, text_audio: Sequence[int] | None = None,
                text_video: Sequence[int] | None = None) -> list[str]:
    """``check_fits`` for a loaded released ``module`` (its ``setting``, else its ``arch``) and
    two bases (their ``latent_shape`` and ``kind``); the prompt embeddings' shapes per prompt."""
    setting = module.setting if module.setting in SETTINGS else module.arch
    return check_fits(setting, audio_shape=base_a.latent_shape, video_shape=base_v.latent_shape,
                      text_audio=text_audio, text_video=text_video,
                      base_kinds=(getattr(base_a, "kind", "tiny"), getattr(base_v, "kind", "tiny")))
