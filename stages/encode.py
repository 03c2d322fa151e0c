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

from mmdisco import tracking
from mmdisco.config import to_dict
from mmdisco.data.shards import load_clips
from mmdisco.encoders.latents import encode_clips, write_latents
from stages.common import Timer, load, params_option, user_errors


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
    try:
        video, audio, index = load_clips(clips_dir)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e} (`dvc repro extract_clips`)") from None
    bases = ({m: getattr(params.base, m) for m in ("audio", "video")}
             if params.condition == "caption" else None)
    latents = encode_clips(video, audio, index, cfg, text_bases=bases,
                           prompts=params.sample.prompts)
    write_latents(out, latents)
    a, v, text = latents.audio, latents.video, latents.text_index
    summary = {"clips": len(a), "seconds": timer.seconds,
               **({"prompts": len(text["prompts"]),
                   "uncaptioned_clips": text["uncaptioned_clips"]} if text else {})}
    click.echo(f"encode: audio {tuple(a.shape)}, video {tuple(v.shape)} in {summary['seconds']} s "
               f"-> {out}")
    with tracking.stage_run("encode", {"encoders": to_dict(cfg), "condition": params.condition}):
        tracking.log_metrics(summary)
