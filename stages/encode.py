"""Stage `encode`: precompute latents of every clip with the frozen encoders.

Writes `audio.safetensors` ([N, C, T, M]), `video.safetensors` ([N, F, C, H, W]) and
`encoders.json`, the fitted normalisation that decoding must reuse.
"""
from __future__ import annotations

from pathlib import Path

import click
import torch

from mmdisco import tracking
from mmdisco.config import to_dict
from mmdisco.data.clips import load_clips
from mmdisco.encoders import make_audio_encoder, make_video_encoder
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
    with torch.no_grad():
        a = encode_batched(audio_enc, audio, cfg.batch_size)
        v = encode_batched(video_enc, video, cfg.batch_size)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        save_tensors(tmp / "audio.safetensors", {"latents": a})
        save_tensors(tmp / "video.safetensors", {"latents": v})
        write_json(tmp / "encoders.json", {"audio": audio_enc.state(), "video": video_enc.state(),
                                          "num_clips": len(a), "fps": index["fps"],
                                          "sample_rate": index["sample_rate"]})
    summary = {"clips": len(a), "seconds": timer.seconds}
    click.echo(f"encode: audio {tuple(a.shape)}, video {tuple(v.shape)} in {summary['seconds']} s -> {out}")
    with tracking.stage_run("encode", {"encoders": to_dict(cfg)}):
        tracking.log_metrics(summary)
