"""Stage `evaluate`: ground-truth alignment and fidelity metrics of the embedded world.

Sections of `metrics/eval.json`: `real` (held clips, the ceiling) and `shuffled` (real audio
paired with another clip's video, the chance level).
"""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import torch

from mmdisco import tracking
from mmdisco.config import to_dict
from mmdisco.data.clips import load_clips
from mmdisco.encoders import encoder_from_state
from mmdisco.io import load_tensors, read_json, write_json
from stages.common import Timer, load, params_option, stage_seed, user_errors


@click.command("evaluate")
@params_option
@click.option("--clips", "clips_dir", type=click.Path(file_okay=False, path_type=Path),
              default="data/clips", show_default=True)
@click.option("--latents", "latents_dir", type=click.Path(file_okay=False, path_type=Path),
              default="data/latents", show_default=True)
@click.option("--metrics", "metrics_path", type=click.Path(dir_okay=False, path_type=Path),
              default="metrics/eval.json", show_default=True)
@user_errors
def main(params_path: Path, clips_dir: Path, latents_dir: Path, metrics_path: Path) -> None:
    """Score real and shuffled pairs with the world's ground-truth decoders (eval.*)."""
    from mmdisco.eval.metrics import evaluate_clips

    params = load(params_path)
    cfg, timer = params.eval, Timer()
    if params.data.source != "synth":
        raise click.ClickException("evaluate: the ground-truth metrics need the embedded world "
                                   "(data.source: synth); a folder of real media has no labels")
    video, _, index = load_clips(clips_dir)
    state = read_json(latents_dir / "encoders.json")
    mel = encoder_from_state(state["audio"])
    audio_latents = load_tensors(latents_dir / "audio.safetensors")["latents"]
    seed = stage_seed(params.seed, "evaluate")
    keep = np.arange(len(video))
    if cfg.max_pairs and cfg.max_pairs < len(keep):
        keep = np.sort(np.random.default_rng(seed).choice(len(keep), cfg.max_pairs, replace=False))
    keep_t = torch.from_numpy(keep)
    common = dict(mel_hz=mel.mel_frequencies().numpy(), mel_frame_rate=mel.frame_rate,
                  fps=index["fps"], num_classes=params.data.synth.num_classes,
                  bootstrap=cfg.bootstrap, confidence=cfg.confidence, seed=seed)
    videos = video[keep_t].numpy()
    mel_db = mel.to_db(audio_latents[keep_t]).numpy()
    report = {"real": evaluate_clips(videos, mel_db, shuffle=False, **common),
              "shuffled": evaluate_clips(videos, mel_db, shuffle=True, **common)}
    write_json(metrics_path, report)
    click.echo(f"evaluate: {len(keep)} pairs in {timer.seconds} s -> {metrics_path}")
    for section, m in report.items():
        click.echo(f"  {section:9s} semantic {m['semantic_agreement']:.3f}  temporal_f1 "
                   f"{m['temporal_f1']:.3f}  aligned {m['aligned_fraction']:.3f}  validity a/v "
                   f"{m['validity_audio']:.3f}/{m['validity_video']:.3f}")
    with tracking.stage_run("evaluate", {"seed": params.seed, "eval": to_dict(cfg),
                                         "data": to_dict(params.data),
                                         "encoders": to_dict(params.encoders)}):
        for section, m in report.items():
            tracking.log_metrics(m, prefix=f"{section}.")
        import mlflow
        mlflow.log_artifact(str(metrics_path))
