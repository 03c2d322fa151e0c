"""Latents of a clips folder: the frozen encoders are fitted on the clips (their normalisation)
and encode every clip. With captions, the prompt table too: every distinct caption (and every
extra prompt) embedded once by each base's own frozen text encoder, with the empty prompt for
classifier-free guidance (``mmdisco.prompts`` reads it back).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import torch

from mmdisco.config import EncodersConfig
from mmdisco.encoders import Encoder, make_audio_encoder, make_video_encoder
from mmdisco.encoders.text import encode_prompts, text_encoder
from mmdisco.io import atomic_path, save_tensors, write_json
from mmdisco.prompts import TEXT_INDEX, text_file


@dataclasses.dataclass
class Latents:
    audio: torch.Tensor              # [N, C, T, M]
    video: torch.Tensor              # [N, F, C, H, W]
    encoders: dict                   # encoders.json: the fitted normalisation, clip settings
    text: dict | None = None         # {modality: {"prompts", "null"}} with captions
    text_index: dict | None = None   # text.json with captions


def encode_batched(encoder: Encoder, clips: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([encoder.encode(clips[i:i + batch_size])
                      for i in range(0, len(clips), batch_size)])


def _prompt_table(index: dict, bases: dict[str, Any], prompts: list[str],
                  text_cfg: Any) -> tuple[dict, dict]:
    """The embeddings of every caption and prompt, and the table's index (text.json)."""
    captions = [clip.get("caption", "") for clip in index["clips"]]
    table = sorted(set(captions) | set(prompts))
    encoders = {m: text_encoder(base, text_cfg) for m, base in bases.items()}
    text = encode_prompts(table, encoders)
    position = {p: i for i, p in enumerate(table)}
    return text, {"prompts": table, "clip_prompt": [position[c] for c in captions],
                  "uncaptioned_clips": sum(1 for c in captions if not c),
                  "encoders": {m: e.describe() for m, e in encoders.items()}}


def encode_clips(video: torch.Tensor, audio: torch.Tensor, index: dict, cfg: EncodersConfig,
                 *, text_bases: dict[str, Any] | None = None,
                 prompts: Sequence[str] = ()) -> Latents:
    """Fit the encoders (``cfg``) on the clips and encode them. ``text_bases`` (``{modality:
    base.<m> section}``) also embeds the clips' captions and ``prompts``."""
    audio_enc = make_audio_encoder(cfg.audio, sample_rate=index["sample_rate"],
                                   num_samples=audio.shape[1])
    video_enc = make_video_encoder(cfg.video)
    audio_enc.fit(audio)
    video_enc.fit(video)
    text = text_index = None
    if text_bases is not None:
        text, text_index = _prompt_table(index, text_bases, list(prompts), cfg.text)
    with torch.no_grad():
        a = encode_batched(audio_enc, audio, cfg.batch_size)
        v = encode_batched(video_enc, video, cfg.batch_size)
    return Latents(a, v, {"audio": audio_enc.state(), "video": video_enc.state(),
                          "num_clips": len(a), "fps": index["fps"],
                          "sample_rate": index["sample_rate"]}, text, text_index)


def write_latents(out: Path, latents: Latents) -> None:
    """``out``: audio.safetensors, video.safetensors, encoders.json (and with captions
    text.json, text_audio.safetensors, text_video.safetensors), atomically."""
    with atomic_path(out) as tmp:
        tmp.mkdir()
        if latents.text is not None:
            for m, tensors in latents.text.items():
                save_tensors(tmp / text_file(m), tensors)
            write_json(tmp / TEXT_INDEX, latents.text_index)
        save_tensors(tmp / "audio.safetensors", {"latents": latents.audio})
        save_tensors(tmp / "video.safetensors", {"latents": latents.video})
        write_json(tmp / "encoders.json", latents.encoders)
