"""Scoring the four sets of pairs: real clips, shuffled real pairs, baseline and guided samples.

``real`` (the clips themselves, the ceiling) and ``shuffled`` (real audio paired with another
clip's video, the chance level) come from the clips; ``baseline`` and ``guided`` from the
sampled latents, decoded exactly as the real clips were read. Every data source gets AV-Align
on rendered media (``mmdisco.eval.sets``) and, with TorchScript extractors, network Fréchet
distances; the embedded world (``data.source: synth``) adds its ground-truth metrics, Fréchet
distances on its fixed features, prompt agreement and the tonality of the rendered sound.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from mmdisco.config import EvalConfig, Params, SynthConfig
from mmdisco.data.shards import load_clips
from mmdisco.data.synth import class_captions, class_pitches
from mmdisco.encoders import encoder_from_state
from mmdisco.eval.frechet import WorldAudioFeatures, WorldVideoFeatures, frechet_distance
from mmdisco.eval.metrics import evaluate_clips, shuffle_pairs
from mmdisco.eval.sets import av_align_report, network_frechet, render_sets
from mmdisco.eval.tonality import media_pitch_fraction
from mmdisco.io import load_tensors, read_json

SETS = ("baseline", "guided")      # the sampled sets, beside the real and shuffled ones
Pairs = tuple[np.ndarray, np.ndarray]


def subsample(n: int, max_pairs: int, seed: int) -> torch.Tensor:
    """Sorted indices of ``max_pairs`` of ``n`` items drawn without replacement; all of them
    when ``max_pairs`` is 0 or not below ``n``."""
    keep = np.arange(n)
    if max_pairs and max_pairs < n:
        keep = np.sort(np.random.default_rng(seed).choice(n, max_pairs, replace=False))
    return torch.from_numpy(keep)


def real_sets(clips_dir: Path, max_pairs: int, seed: int) -> tuple[torch.Tensor, dict[str, Pairs]]:
    """The kept real clips (indices, and ``real`` / ``shuffled`` as uint8 videos and waves)."""
    video, wave, _ = load_clips(clips_dir)
    keep = subsample(len(video), max_pairs, seed)
    videos, waves = video[keep].numpy(), wave[keep].numpy()
    partner = shuffle_pairs(len(videos), seed)
    return keep, {"real": (videos, waves), "shuffled": (videos[partner], waves)}


def sample_latents(samples_dir: Path, max_pairs: int,
                   seed: int) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict]:
    """Each sampled set's kept ``(audio, video)`` latents, and which pairs of it are kept."""
    latents, kept = {}, {}
    for name in SETS:
        a = load_tensors(samples_dir / name / "audio.safetensors")["latents"]
        v = load_tensors(samples_dir / name / "video.safetensors")["latents"]
        kept[name] = subsample(len(a), max_pairs, seed)
        latents[name] = (a[kept[name]], v[kept[name]])
    return latents, kept


def decode_sets(latents: dict, mel, pixels, waves: int | None) -> dict[str, Pairs]:
    """Videos and the first ``waves`` waveforms (all with None) of each set of latents."""
    out = {}
    for name, (a, v) in latents.items():
        with torch.no_grad():
            out[name] = (pixels.decode(v).numpy(), mel.decode(a[:waves]).numpy())
    return out


def add_frechet(report: dict, real: Pairs, sets: dict[str, Pairs], seed: int) -> None:
    """Fréchet distances to real clips on the world's fixed features (``mmdisco.eval.frechet``).

    FD is biased by the set size, so every set is compared with a real subset of its own size;
    the `real` section holds the floor: two disjoint real subsets of that size (when the real
    clips suffice). ``real`` and ``sets`` hold videos and dB mels.
    """
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


def prompt_classes(samples_dir: Path, name: str, synth_cfg: SynthConfig,
                   keep: torch.Tensor) -> np.ndarray | None:
    """The class each kept pair (``keep``: indices into the set) of a set was prompted with
    (``-1``: a prompt that is no class caption), from its ``prompts.json``; None when
    unprompted."""
    path = samples_dir / name / "prompts.json"
    if not path.is_file():
        return None
    record = read_json(path)
    of_caption = {c: k for k, c in enumerate(class_captions(synth_cfg))}
    texts = [record["prompts"][j] for j in record["prompt_of"]]
    return np.array([of_caption.get(t, -1) for t in texts], dtype=np.int64)[keep.numpy()]


def add_tonality(report: dict, samples_dir: Path, num_classes: int) -> None:
    """Share of each set's rendered sound (its mp4 files, decoded) at the class pitches."""
    for name in SETS:
        files = sorted((samples_dir / name / "media").glob("*.mp4"))
        fraction = media_pitch_fraction(files, class_pitches(num_classes)) if files else None
        ok = fraction[np.isfinite(fraction)] if fraction is not None else np.zeros(0)
        report[name]["tonal_fraction"] = round(float(ok.mean()), 4) if len(ok) else None
        report[name]["tonal_fraction_n"] = int(len(ok))


def add_ground_truth(report: dict, params: Params, sets: dict, latents: dict, mel, enc: dict, *,
                     audio: torch.Tensor, samples_dir: Path | None, seed: int,
                     kept: dict[str, torch.Tensor]) -> None:
    """The embedded world's ground-truth metrics, world-feature Fréchet distances and tonality."""
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


def add_media_metrics(report: dict, sets: dict[str, Pairs], cfg: EvalConfig, *, fps: int,
                      sample_rate: int, seed: int) -> None:
    """What reads rendered media or raw waveforms, on every data source: AV-Align and, with
    ``eval.audio_features`` / ``eval.video_features``, network Fréchet distances."""
    if cfg.av_align_pairs:
        with tempfile.TemporaryDirectory(prefix="mmdisco-av-align-") as tmp:
            files = render_sets(Path(tmp), sets, fps=fps, sample_rate=sample_rate,
                                n=cfg.av_align_pairs)
            for name, m in av_align_report(files, bootstrap=cfg.bootstrap,
                                           confidence=cfg.confidence, seed=seed).items():
                report[name].update(m)
    if cfg.audio_features or cfg.video_features:
        samples = {k: v for k, v in sets.items() if k in SETS}
        for name, m in network_frechet(sets["real"], samples, audio_features=cfg.audio_features,
                                       video_features=cfg.video_features,
                                       sample_rate=sample_rate, seed=seed).items():
            report[name].update(m)


def evaluate(params: Params, *, clips_dir: Path, latents_dir: Path, samples_dir: Path | None,
             seed: int) -> dict[str, dict]:
    """The report: one section per set (``real``, ``shuffled`` and, with ``samples_dir``,
    ``baseline`` and ``guided``). Latents are decoded with the encoders stored beside them in
    ``latents_dir``; pretrained ones run on ``params.device``."""
    cfg = params.eval
    enc = read_json(latents_dir / "encoders.json")
    mel = encoder_from_state(enc["audio"], device=params.device)
    pixels = encoder_from_state(enc["video"], device=params.device)
    keep, sets = real_sets(clips_dir, cfg.max_pairs, seed)
    latents, kept = ({}, {}) if samples_dir is None else \
        sample_latents(samples_dir, cfg.max_pairs, seed)
    # every waveform for network features, else only those AV-Align reads
    waves = None if cfg.audio_features else cfg.av_align_pairs
    sets.update(decode_sets(latents, mel, pixels, waves))
    report: dict[str, dict] = {name: {} for name in sets}
    if params.data.source == "synth":
        audio = load_tensors(latents_dir / "audio.safetensors")["latents"][keep]
        add_ground_truth(report, params, sets, latents, mel, enc, audio=audio,
                         samples_dir=samples_dir, seed=seed, kept=kept)
    add_media_metrics(report, sets, cfg, fps=enc["fps"], sample_rate=enc["sample_rate"], seed=seed)
    return report
