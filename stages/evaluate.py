"""Stage `evaluate`: alignment and fidelity metrics of real, shuffled, baseline and guided pairs.

Sections of `metrics/eval.json`: `real` (the clips themselves, the ceiling), `shuffled` (real
audio paired with another clip's video, the chance level), `baseline` (independent sampling)
and `guided` (discriminator-guided joint sampling, same initial noise as the baseline).

Every data source: AV-Align (the published metric, on `eval.av_align_pairs` pairs of each set
rendered to mp4, `mmdisco.eval.sets`) and, when `eval.audio_features` / `eval.video_features`
name TorchScript extractors, Fréchet distances on them (`fd_audio_net`, `fd_video_net`).
The embedded world (`data.source: synth`) adds its ground-truth metrics (validity, semantic
agreement, temporal F1, aligned fraction, class balance), Fréchet distances on the world's fixed
features (`fd_audio`, `fd_video`) and, with `condition: caption`, prompt agreement: the fraction
of pairs whose decoded class in each modality is the prompted one. The MLflow run of this stage
carries every param, every metric, the sample media and the ids of the training runs used, so
experiments compare side by side in the UI.
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
from mmdisco.seeds import stage_seed
from stages.common import Timer, load, params_option, user_errors

SETS = ("baseline", "guided")


def subsample(n: int, max_pairs: int, seed: int) -> torch.Tensor:
    keep = np.arange(n)
    if max_pairs and max_pairs < n:
        keep = np.sort(np.random.default_rng(seed).choice(n, max_pairs, replace=False))
    return torch.from_numpy(keep)


SWEEP_METRICS = ("validity_audio", "validity_video", "semantic_agreement", "temporal_f1",
                 "aligned_fraction", "class_balance_audio", "class_balance_video", "fd_audio",
                 "fd_video", "av_align")
# what `dvc exp show` lists per experiment (metrics/headline.json): alignment beside what it may
# cost (validity, class balance, Fréchet distances) and how tonal the rendered mp4s are
HEADLINE = SWEEP_METRICS + ("tonal_fraction",)


def headline(report: dict) -> dict:
    """The baseline and guided sections cut to ``HEADLINE`` (``eval.json`` has everything)."""
    keys = HEADLINE + ("prompt_agreement_audio", "prompt_agreement_video")
    return {name: {k: report[name][k] for k in keys if k in report[name]}
            for name in SETS if name in report}


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
        row.update({f"{name}_{k}": report[name].get(k) for k in SWEEP_METRICS})
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


def prompt_classes(samples_dir: Path, name: str, synth_cfg, keep: torch.Tensor) -> np.ndarray | None:
    """The class each kept pair (``keep``: indices into the set) of a set was prompted with
    (``-1``: a prompt that is no class caption), from its ``prompts.json``; None when
    unprompted."""
    from mmdisco.data.synth import class_captions

    path = samples_dir / name / "prompts.json"
    if not path.is_file():
        return None
    record = read_json(path)
    of_caption = {c: k for k, c in enumerate(class_captions(synth_cfg))}
    texts = [record["prompts"][j] for j in record["prompt_of"]]
    return np.array([of_caption.get(t, -1) for t in texts], dtype=np.int64)[keep.numpy()]


def add_ground_truth(report: dict, params, sets: dict, latents: dict, mel, enc: dict, *,
                     audio: torch.Tensor, samples_dir: Path | None, seed: int,
                     kept: dict[str, torch.Tensor]) -> None:
    """The embedded world's ground-truth metrics, world-feature Fréchet distances and tonality."""
    from mmdisco.eval.metrics import evaluate_clips

    cfg = params.eval
    common = dict(mel_hz=mel.mel_frequencies().numpy(), mel_frame_rate=mel.frame_rate,
                  fps=enc["fps"], num_classes=params.data.synth.num_classes,
                  bootstrap=cfg.bootstrap, confidence=cfg.confidence, seed=seed)
    videos, mel_db = sets["real"][0], mel.to_db(audio).numpy()
    report["real"].update(evaluate_clips(videos, mel_db, shuffle=False, **common))
    report["shuffled"].update(evaluate_clips(videos, mel_db, shuffle=True, **common))
    if samples_dir is None:
        return
    decoded = {}
    for name, (a, _) in latents.items():
        decoded[name] = (sets[name][0], mel.to_db(a).numpy())
        prompted = prompt_classes(samples_dir, name, params.data.synth, kept[name]) \
            if params.condition == "caption" else None
        report[name].update(evaluate_clips(*decoded[name], shuffle=False,
                                           prompt_classes=prompted, **common))
    add_frechet(report, (videos, mel_db), decoded, seed)
    add_tonality(report, samples_dir, params.data.synth.num_classes)


def summary_line(m: dict) -> str:
    """One section's figures in a line (– where a figure is missing or undefined)."""
    f = lambda x: "–" if x is None else f"{x:.3f}"   # noqa: E731
    parts = []
    if "semantic_agreement" in m:
        parts += [f"semantic {f(m['semantic_agreement'])}", f"temporal_f1 {f(m['temporal_f1'])}",
                  f"aligned {f(m['aligned_fraction'])}",
                  f"validity a/v {f(m['validity_audio'])}/{f(m['validity_video'])}",
                  f"balance a/v {f(m['class_balance_audio'])}/{f(m['class_balance_video'])}"]
    if "prompt_agreement_audio" in m:
        parts.append(f"prompt a/v {f(m['prompt_agreement_audio'])}/"
                     f"{f(m['prompt_agreement_video'])}")
    if "fd_audio" in m:
        parts.append(f"FD a/v {f(m['fd_audio'])}/{f(m['fd_video'])}")
    for k in ("fd_audio_net", "fd_video_net"):
        if k in m:
            parts.append(f"{k} {f(m[k])}")
    if "av_align" in m:
        parts.append(f"AV-Align {f(m['av_align'])}")
    return "  ".join(parts)


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
    """Score real, shuffled, baseline and guided pairs (eval.*): AV-Align and network Fréchet
    distances on any data; the ground-truth metrics on the embedded world."""
    from mmdisco.eval.metrics import shuffle_pairs

    params = load(params_path)
    cfg, timer = params.eval, Timer()
    synth = params.data.source == "synth"
    enc = read_json(latents_dir / "encoders.json")
    mel, pixels = encoder_from_state(enc["audio"]), encoder_from_state(enc["video"])
    seed = stage_seed(params.seed, "evaluate")
    # 1. real clips (and, for the embedded world, their dB mels from the latents)
    video, wave, _ = load_clips(clips_dir)
    keep = subsample(len(video), cfg.max_pairs, seed)
    videos, waves = video[keep].numpy(), wave[keep].numpy()
    partner = shuffle_pairs(len(videos), seed)
    sets = {"real": (videos, waves), "shuffled": (videos[partner], waves)}
    # 2. samples: decoded exactly as the real clips were read
    latents: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    kept: dict[str, torch.Tensor] = {}     # which pairs of each set are scored
    if samples_dir is not None:
        for name in SETS:
            a = load_tensors(samples_dir / name / "audio.safetensors")["latents"]
            v = load_tensors(samples_dir / name / "video.safetensors")["latents"]
            kept[name] = subsample(len(a), cfg.max_pairs, seed)
            latents[name] = (a[kept[name]], v[kept[name]])
    need_waves = None if cfg.audio_features else cfg.av_align_pairs   # all, or what AV-Align reads
    for name, (a, v) in latents.items():
        with torch.no_grad():
            sets[name] = (pixels.decode(v).numpy(), mel.decode(a[:need_waves]).numpy())
    report: dict[str, dict] = {name: {} for name in sets}
    if synth:
        add_ground_truth(report, params, sets, latents, mel, enc, audio=load_tensors(
            latents_dir / "audio.safetensors")["latents"][keep], samples_dir=samples_dir,
            seed=seed, kept=kept)
    # 3. what reads rendered media, on every data source
    if cfg.av_align_pairs:
        import tempfile

        from mmdisco.eval.sets import av_align_report, render_sets

        with tempfile.TemporaryDirectory(prefix="mmdisco-av-align-") as tmp:
            files = render_sets(Path(tmp), sets, fps=enc["fps"], sample_rate=enc["sample_rate"],
                                n=cfg.av_align_pairs)
            for name, m in av_align_report(files, bootstrap=cfg.bootstrap,
                                           confidence=cfg.confidence, seed=seed).items():
                report[name].update(m)
    if cfg.audio_features or cfg.video_features:
        from mmdisco.eval.sets import network_frechet

        samples = {k: v for k, v in sets.items() if k in SETS}
        for name, m in network_frechet(sets["real"], samples, audio_features=cfg.audio_features,
                                       video_features=cfg.video_features,
                                       sample_rate=enc["sample_rate"], seed=seed).items():
            report[name].update(m)
    write_json(metrics_path, report)
    if headline_path is not None and samples_dir is not None:
        write_json(headline_path, headline(report))
    if sweep_path is not None and samples_dir is not None:
        write_sweep_row(sweep_path, params, report)
    click.echo(f"evaluate: {len(report)} sets in {timer.seconds} s -> {metrics_path}")
    for section, m in report.items():
        click.echo(f"  {section:9s} {summary_line(m)}")
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
