"""Stage `evaluate`: ground-truth alignment and fidelity metrics of the embedded world.

Sections of `metrics/eval.json`: `real` (the clips themselves, the ceiling), `shuffled` (real
audio paired with another clip's video, the chance level), `baseline` (independent sampling)
and `guided` (discriminator-guided joint sampling, same initial noise as the baseline), each
with Fréchet distances to real clips on the world's fixed features (`fd_audio`, `fd_video`). The
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


SWEEP_METRICS = ("validity_audio", "validity_video", "semantic_agreement", "temporal_f1",
                 "aligned_fraction", "class_balance_audio", "class_balance_video", "fd_audio",
                 "fd_video")
# what `dvc exp show` lists per experiment (metrics/headline.json): alignment beside what it may
# cost (validity, class balance, Fréchet distances) and how tonal the rendered mp4s are
HEADLINE = SWEEP_METRICS + ("tonal_fraction",)


def headline(report: dict) -> dict:
    """The baseline and guided sections cut to ``HEADLINE`` (``eval.json`` has everything)."""
    return {name: {k: report[name].get(k) for k in HEADLINE} for name in SETS if name in report}


def add_tonality(report: dict, samples_dir: Path, num_classes: int) -> None:
    """Share of each set's rendered sound (its mp4 files, decoded) at the class pitches."""
    from mmdisco.data.synth import class_pitches
    from mmdisco.eval.tonality import media_pitch_fraction

    for name in SETS:
        files = sorted((samples_dir / name / "media").glob("*.mp4"))
        fraction = media_pitch_fraction(files, class_pitches(num_classes)) if files else None
        ok = fraction[np.isfinite(fraction)] if fraction is not None else np.zeros(0)
        report[name]["tonal_fraction"] = round(float(ok.mean()), 4) if len(ok) else None
        report[name]["tonal_fraction_n"] = int(len(ok))


def write_sweep_row(path: Path, params, report: dict) -> None:
    """One CSV row: the guidance params and each set's headline metrics (``guided_*``,
    ``baseline_*``). Each experiment has its own row, so ``dvc plots diff`` over experiments
    draws the metrics against ``scale``."""
    import csv
    import io

    from mmdisco.io import atomic_path

    g = params.guidance
    row = {"scale": g.scale, "audio_weight": g.audio_weight, "video_weight": g.video_weight,
           "critic_weight": g.critic_weight}
    for name in SETS:
        row.update({f"{name}_{k}": report[name][k] for k in SWEEP_METRICS})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(row))
    writer.writeheader()
    writer.writerow(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())


def add_frechet(report: dict, real: tuple[np.ndarray, np.ndarray],
                sets: dict[str, tuple[np.ndarray, np.ndarray]], seed: int) -> None:
    """Fréchet distances to real clips on the world's fixed features (``mmdisco.eval.frechet``).

    FD is biased by the set size, so every set is compared with a real subset of its own size;
    the `real` section holds the floor: two disjoint real subsets of that size (when the real
    clips suffice).
    """
    from mmdisco.eval.frechet import WorldAudioFeatures, WorldVideoFeatures, frechet_distance

    videos, mel_db = real
    fx = {"audio": WorldAudioFeatures(n_mels=mel_db.shape[-1]), "video": WorldVideoFeatures()}
    order = np.random.default_rng(seed).permutation(len(videos))
    sizes = {len(v) for v, _ in sets.values()}
    pool = order[:min(len(order), 2 * max(sizes))]          # features of the real clips used
    real_x = {"audio": fx["audio"](mel_db[pool]), "video": fx["video"](videos[pool])}
    for name, (v, m) in sets.items():
        n = len(v)
        for modality, x in (("audio", m), ("video", v)):
            report[name][f"fd_{modality}"] = frechet_distance(real_x[modality][:n],
                                                              fx[modality](x))["fd"]
            if 2 * n <= len(order):
                floor = frechet_distance(real_x[modality][:n], real_x[modality][n:2 * n])["fd"]
                report["real"][f"fd_{modality}"] = floor
        report[name]["fd_pairs"] = n
        report["real"]["fd_pairs"] = n if 2 * n <= len(order) else 0


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
@click.option("--headline", "headline_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="the headline metrics of the baseline and guided sets")
@click.option("--sweep-plot", "sweep_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="CSV row of guidance params and guided/baseline metrics, for "
                                 "`dvc plots diff` across experiments")
@user_errors
def main(params_path: Path, clips_dir: Path, latents_dir: Path, samples_dir: Path | None,
         metrics_path: Path, headline_path: Path | None, sweep_path: Path | None) -> None:
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
        decoded = {}
        for name in SETS:
            a = load_tensors(samples_dir / name / "audio.safetensors")["latents"]
            v = load_tensors(samples_dir / name / "video.safetensors")["latents"]
            keep = subsample(len(a), cfg.max_pairs, seed)
            decoded[name] = (pixels.decode(v[keep]).numpy(), mel.to_db(a[keep]).numpy())
            report[name] = evaluate_clips(*decoded[name], shuffle=False, **common)
        add_frechet(report, (videos, mel_db), decoded, seed)
        add_tonality(report, samples_dir, params.data.synth.num_classes)
    write_json(metrics_path, report)
    if headline_path is not None and samples_dir is not None:
        write_json(headline_path, headline(report))
    if sweep_path is not None and samples_dir is not None:
        write_sweep_row(sweep_path, params, report)
    click.echo(f"evaluate: {len(report)} sets in {timer.seconds} s -> {metrics_path}")
    f = lambda x: "–" if x is None else f"{x:.3f}"   # noqa: E731  (a set with no valid pair)
    for section, m in report.items():
        fd = f"  FD a/v {f(m['fd_audio'])}/{f(m['fd_video'])}" if "fd_audio" in m else ""
        click.echo(f"  {section:9s} semantic {f(m['semantic_agreement'])}  temporal_f1 "
                   f"{f(m['temporal_f1'])}  aligned {f(m['aligned_fraction'])}  validity a/v "
                   f"{f(m['validity_audio'])}/{f(m['validity_video'])}  balance a/v "
                   f"{f(m['class_balance_audio'])}/{f(m['class_balance_video'])}{fd}")
    # 3. one MLflow run that carries everything needed to compare experiments
    with tracking.stage_run("evaluate", to_dict(params)):
        import mlflow

        for section, m in report.items():
            tracking.log_metrics(m, prefix=f"{section}.")
        mlflow.log_artifact(str(metrics_path))
        if samples_dir is not None:
            for name in SETS:
                folder = samples_dir / name
                if (folder / "provenance.json").is_file():
                    mlflow.set_tags({f"mmdisco.run.{k}": str(v)
                                     for k, v in read_json(folder / "provenance.json").items()})
                if (folder / "sheet.png").is_file():
                    mlflow.log_artifact(str(folder / "sheet.png"), artifact_path=name)
                if (folder / "media").is_dir():
                    mlflow.log_artifacts(str(folder / "media"), artifact_path=f"{name}/media")
