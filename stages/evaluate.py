"""Stage `evaluate`: ground-truth alignment and fidelity metrics of the embedded world.

Sections of `metrics/eval.json`: `real` (the clips themselves, the ceiling), `shuffled` (real
audio paired with another clip's video, the chance level), `baseline` (independent sampling)
and `guided` (discriminator-guided joint sampling, same initial noise as the baseline). The
MLflow run of this stage carries every param, every metric, the sample media and the ids of
the training runs used, so experiments compare side by side in the UI.
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

SETS = ("baseline", "guided")


def subsample(n: int, max_pairs: int, seed: int) -> torch.Tensor:
    keep = np.arange(n)
    if max_pairs and max_pairs < n:
        keep = np.sort(np.random.default_rng(seed).choice(n, max_pairs, replace=False))
    return torch.from_numpy(keep)


@click.command("evaluate")
@params_option
@click.option("--clips", "clips_dir", type=click.Path(file_okay=False, path_type=Path),
              default="data/clips", show_default=True)
@click.option("--latents", "latents_dir", type=click.Path(file_okay=False, path_type=Path),
              default="data/latents", show_default=True)
@click.option("--samples", "samples_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="output of `sample` (adds the baseline and guided sections)")
@click.option("--metrics", "metrics_path", type=click.Path(dir_okay=False, path_type=Path),
              default="metrics/eval.json", show_default=True)
@user_errors
def main(params_path: Path, clips_dir: Path, latents_dir: Path, samples_dir: Path | None,
         metrics_path: Path) -> None:
    """Score real, shuffled, baseline and guided pairs with the ground-truth decoders (eval.*)."""
    from mmdisco.eval.metrics import evaluate_clips

    params = load(params_path)
    cfg, timer = params.eval, Timer()
    if params.data.source != "synth":
        raise click.ClickException("evaluate: the ground-truth metrics need the embedded world "
                                   "(data.source: synth); a folder of real media has no labels")
    enc = read_json(latents_dir / "encoders.json")
    mel, pixels = encoder_from_state(enc["audio"]), encoder_from_state(enc["video"])
    seed = stage_seed(params.seed, "evaluate")
    common = dict(mel_hz=mel.mel_frequencies().numpy(), mel_frame_rate=mel.frame_rate,
                  fps=enc["fps"], num_classes=params.data.synth.num_classes,
                  bootstrap=cfg.bootstrap, confidence=cfg.confidence, seed=seed)
    # 1. real clips and their shuffled pairing
    video, _, _ = load_clips(clips_dir)
    audio = load_tensors(latents_dir / "audio.safetensors")["latents"]
    keep = subsample(len(video), cfg.max_pairs, seed)
    videos, mel_db = video[keep].numpy(), mel.to_db(audio[keep]).numpy()
    report = {"real": evaluate_clips(videos, mel_db, shuffle=False, **common),
              "shuffled": evaluate_clips(videos, mel_db, shuffle=True, **common)}
    # 2. samples: decode latents exactly as the real clips were read
    if samples_dir is not None:
        for name in SETS:
            a = load_tensors(samples_dir / name / "audio.safetensors")["latents"]
            v = load_tensors(samples_dir / name / "video.safetensors")["latents"]
            keep = subsample(len(a), cfg.max_pairs, seed)
            report[name] = evaluate_clips(pixels.decode(v[keep]).numpy(),
                                          mel.to_db(a[keep]).numpy(), shuffle=False, **common)
    write_json(metrics_path, report)
    click.echo(f"evaluate: {len(report)} sets in {timer.seconds} s -> {metrics_path}")
    for section, m in report.items():
        click.echo(f"  {section:9s} semantic {m['semantic_agreement'] or 0:.3f}  temporal_f1 "
                   f"{m['temporal_f1'] or 0:.3f}  aligned {m['aligned_fraction']:.3f}  "
                   f"validity a/v {m['validity_audio']:.3f}/{m['validity_video']:.3f}")
    # 3. one MLflow run that carries everything needed to compare experiments
    with tracking.stage_run("evaluate", to_dict(params)):
        import mlflow

        for section, m in report.items():
            tracking.log_metrics(m, prefix=f"{section}.")
        mlflow.log_artifact(str(metrics_path))
        if samples_dir is not None:
            provenance = samples_dir / "provenance.json"
            if provenance.is_file():
                mlflow.set_tags({f"mmdisco.run.{k}": str(v)
                                 for k, v in read_json(provenance).items()})
            for name in SETS:
                folder = samples_dir / name
                if (folder / "sheet.png").is_file():
                    mlflow.log_artifact(str(folder / "sheet.png"), artifact_path=name)
                if (folder / "media").is_dir():
                    mlflow.log_artifacts(str(folder / "media"), artifact_path=f"{name}/media")
