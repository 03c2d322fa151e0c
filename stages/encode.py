"""Stage `encode`: precompute latents of every clip with the frozen encoders.

Writes `audio.safetensors` ([N, C, T, M]), `video.safetensors` ([N, F, C, H, W]) and
`encoders.json`, the fitted normalisation that decoding must reuse. With `condition: caption`
the captions are latents too: every distinct caption (and every `sample.prompts` entry) is
embedded once by each base's own frozen text encoder (`mmdisco.encoders.text`), together with
the empty prompt for classifier-free guidance: `text.json`, `text_audio.safetensors`,
`text_video.safetensors`. No later stage encodes text.
"""
from __future__ import annotations

from pathlib import Path

import click
import torch

from mmdisco import tracking
from mmdisco.config import to_dict
from mmdisco.data.clips import load_clips
from mmdisco.encoders import make_audio_encoder, make_video_encoder
from mmdisco.encoders.text import encode_prompts, text_encoder
from mmdisco.prompts import TEXT_INDEX, text_file
from mmdisco.io import atomic_path, save_tensors, write_json
from stages.common import Timer, load, params_option, user_errors


def encode_batched(encoder, clips: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([encoder.encode(clips[i:i + batch_size])
                      for i in range(0, len(clips), batch_size)])


@click.command("encode")
@params_option
@click.option("--clips", "clips_dir", type=click.Path(file_okay=False, path_type=Path),
              default="data/clips", show_default=True, help="output of `extract_clips`")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default="data/latents",
              show_default=True)
@user_errors
def main(params_path: Path, clips_dir: Path, out: Path) -> None:
    """Encode clips to latents with the frozen audio and video encoders (encoders.*)."""
    params = load(params_path)
    cfg, timer = params.encoders, Timer()
    video, audio, index = load_clips(clips_dir)
    audio_enc = make_audio_encoder(cfg.audio, sample_rate=index["sample_rate"],
                                   num_samples=audio.shape[1])
    video_enc = make_video_encoder(cfg.video)
    audio_enc.fit(audio)
    video_enc.fit(video)
    text = None
    if params.condition == "caption":
        captions = [clip.get("caption", "") for clip in index["clips"]]
        prompts = sorted(set(captions) | set(params.sample.prompts))
        encoders = {m: text_encoder(getattr(params.base, m), cfg.text) for m in ("audio", "video")}
        text = encode_prompts(prompts, encoders)
        position = {p: i for i, p in enumerate(prompts)}
        text_index = {"prompts": prompts, "clip_prompt": [position[c] for c in captions],
                      "uncaptioned_clips": sum(1 for c in captions if not c),
                      "encoders": {m: e.describe() for m, e in encoders.items()}}
    with torch.no_grad():
        a = encode_batched(audio_enc, audio, cfg.batch_size)
        v = encode_batched(video_enc, video, cfg.batch_size)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        if text is not None:
            for m, tensors in text.items():
                save_tensors(tmp / text_file(m), tensors)
            write_json(tmp / TEXT_INDEX, text_index)
        save_tensors(tmp / "audio.safetensors", {"latents": a})
        save_tensors(tmp / "video.safetensors", {"latents": v})
        write_json(tmp / "encoders.json", {"audio": audio_enc.state(), "video": video_enc.state(),
                                          "num_clips": len(a), "fps": index["fps"],
                                          "sample_rate": index["sample_rate"]})
    summary = {"clips": len(a), "seconds": timer.seconds,
               **({"prompts": len(text_index["prompts"]),
                   "uncaptioned_clips": text_index["uncaptioned_clips"]} if text else {})}
    click.echo(f"encode: audio {tuple(a.shape)}, video {tuple(v.shape)} in {summary['seconds']} s -> {out}")
    with tracking.stage_run("encode", {"encoders": to_dict(cfg), "condition": params.condition}):
        tracking.log_metrics(summary)
