"""Alignment metrics of audio-video pairs, read off the ground-truth decoders.

Every metric comes as three flat keys: ``name`` (the value), ``name_ci`` ([lo, hi] at the
given confidence) and ``name_n`` (how many pairs or items it is taken over); a metric over
zero items is ``None`` with ``[None, None]``. Proportions get Wilson score intervals; means
and entropies get percentile bootstrap intervals drawn from ``np.random.default_rng(seed)``.
Definitions: /work/shared/design/synthav.md, "Metrics".
"""
from __future__ import annotations

from statistics import NormalDist

from typing import Sequence

import numpy as np

from mmdisco.data.synth import class_colours, class_pitches
from mmdisco.eval.decoders import AudioReading, VideoReading, decode_audios, decode_videos

METRICS = ("validity_audio", "validity_video", "validity_both", "semantic_agreement",
           "temporal_f1", "temporal_f1_tol1", "aligned_fraction", "class_balance_audio",
           "class_balance_video")


# --------------------------------------------------------------------------- pieces
def wilson_interval(successes: int, n: int, confidence: float) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson 1927)."""
    if n <= 0:
        raise ValueError("wilson_interval needs n >= 1")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)   # stdlib: no scipy.stats import (1 s)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    lo = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the ends
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return float(lo), float(hi)


def frame_f1(reference: Sequence[int], detected: Sequence[int], tolerance: int = 0) -> float:
    """F1 of two frame sets, each frame matched at most once within ``tolerance`` frames.

    Greedy matching in time order is a maximum matching for points on a line. Two empty
    sets agree (1.0).
    """
    ref, det = sorted(set(int(f) for f in reference)), sorted(set(int(f) for f in detected))
    if not ref and not det:
        return 1.0
    i = j = hits = 0
    while i < len(ref) and j < len(det):
        if abs(ref[i] - det[j]) <= tolerance:
            hits, i, j = hits + 1, i + 1, j + 1
        elif ref[i] < det[j]:
            i += 1
        else:
            j += 1
    return 2.0 * hits / (len(ref) + len(det))


def normalised_entropy(classes: Sequence[int], num_classes: int) -> float:
    """Entropy of the class histogram over log K: 0 for one class, 1 for a uniform spread."""
    counts = np.bincount(np.asarray(classes, dtype=np.int64), minlength=num_classes)[None]
    return float(_entropy_rows(counts, num_classes)[0])


def _entropy_rows(counts: np.ndarray, num_classes: int) -> np.ndarray:
    """Normalised entropy of each row of class counts ``[B, K]``."""
    p = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    h = -(p * np.log(np.where(p > 0, p, 1.0))).sum(1)
    return h / np.log(num_classes) if num_classes > 1 else np.zeros(len(counts))


def shuffle_pairs(n: int, seed: int) -> np.ndarray:
    """A random derangement of ``range(n)``: item i is paired with ``out[i] != i``.

    Walks a random order of the items as one cycle, each paired with the next.
    """
    if n == 1:
        raise ValueError("shuffle_pairs needs at least 2 items to pair each with another")
    if n < 0:
        raise ValueError(f"shuffle_pairs needs n >= 0, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    out = np.empty(n, dtype=np.int64)
    out[order] = np.roll(order, -1)
    return out


# --------------------------------------------------------------------------- scoring
def _proportion(out: dict, name: str, hits: np.ndarray, confidence: float) -> None:
    n = int(hits.size)
    out[f"{name}_n"] = n
    if n == 0:
        out[name], out[f"{name}_ci"] = None, [None, None]
        return
    out[name] = float(hits.mean())
    out[f"{name}_ci"] = list(wilson_interval(int(hits.sum()), n, confidence))


def _bootstrap_mean(out: dict, name: str, values: np.ndarray, rng: np.random.Generator,
                    bootstrap: int, confidence: float) -> None:
    n = int(values.size)
    out[f"{name}_n"] = n
    if n == 0:
        out[name], out[f"{name}_ci"] = None, [None, None]
        return
    means = values[rng.integers(0, n, size=(bootstrap, n))].mean(1)
    out[name] = float(values.mean())
    out[f"{name}_ci"] = _percentiles(means, confidence)


def _bootstrap_balance(out: dict, name: str, classes: np.ndarray, num_classes: int,
                       rng: np.random.Generator, bootstrap: int, confidence: float) -> None:
    n = int(classes.size)
    out[f"{name}_n"] = n
    if n == 0:
        out[name], out[f"{name}_ci"] = None, [None, None]
        return
    draws = classes[rng.integers(0, n, size=(bootstrap, n))]
    offsets = np.arange(bootstrap)[:, None] * num_classes
    counts = np.bincount((draws + offsets).ravel(), minlength=bootstrap * num_classes)
    values = _entropy_rows(counts.reshape(bootstrap, num_classes), num_classes)
    out[name] = normalised_entropy(classes, num_classes)
    out[f"{name}_ci"] = _percentiles(values, confidence)


def _percentiles(values: np.ndarray, confidence: float) -> list[float]:
    lo, hi = np.quantile(values, [0.5 - confidence / 2, 0.5 + confidence / 2])
    return [float(lo), float(hi)]


def pair_metrics(video_reads: Sequence[VideoReading], audio_reads: Sequence[AudioReading], *,
                 num_classes: int, bootstrap: int, confidence: float, seed: int,
                 prompt_classes: Sequence[int] | None = None) -> dict:
    """Score pairs (``video_reads[i]``, ``audio_reads[i]``): a flat, JSON-able dict.

    ``prompt_classes[i]``: the class that pair ``i`` was prompted with (``-1``: a prompt that
    names no class, left out). Adds ``prompt_agreement_<m>``, the fraction of prompted pairs
    whose modality ``m`` decodes to the prompted class (an invalid reading disagrees).
    """
    if len(video_reads) != len(audio_reads):
        raise ValueError(f"pair_metrics needs as many video as audio readings; got "
                         f"{len(video_reads)} and {len(audio_reads)}")
    if num_classes < 1 or bootstrap < 1 or not 0.0 < confidence < 1.0:
        raise ValueError(f"pair_metrics needs num_classes >= 1, bootstrap >= 1 and 0 < "
                         f"confidence < 1; got {num_classes}, {bootstrap}, {confidence}")
    rng = np.random.default_rng(seed)
    valid_v = np.array([r.valid for r in video_reads], dtype=bool)
    valid_a = np.array([r.valid for r in audio_reads], dtype=bool)
    both = valid_v & valid_a
    pairs = [(v, a) for v, a, ok in zip(video_reads, audio_reads, both) if ok]
    same = np.array([v.cls == a.cls for v, a in pairs], dtype=bool)
    f1 = np.array([frame_f1(v.contact_frames, a.onset_frames) for v, a in pairs], dtype=float)
    f1_tol1 = np.array([frame_f1(v.contact_frames, a.onset_frames, 1) for v, a in pairs],
                       dtype=float)
    aligned = both.copy()
    aligned[both] = same & (f1 == 1.0)
    cls_v = np.array([r.cls for r in video_reads if r.valid], dtype=np.int64)
    cls_a = np.array([r.cls for r in audio_reads if r.valid], dtype=np.int64)
    for cls, what in ((cls_v, "video"), (cls_a, "audio")):
        if cls.size and (cls.min() < 0 or cls.max() >= num_classes):
            raise ValueError(f"a valid {what} reading has a class outside 0..{num_classes - 1}")
    out: dict = {}
    _proportion(out, "validity_audio", valid_a, confidence)
    _proportion(out, "validity_video", valid_v, confidence)
    _proportion(out, "validity_both", both, confidence)
    _proportion(out, "semantic_agreement", same, confidence)
    _bootstrap_mean(out, "temporal_f1", f1, rng, bootstrap, confidence)
    _bootstrap_mean(out, "temporal_f1_tol1", f1_tol1, rng, bootstrap, confidence)
    _proportion(out, "aligned_fraction", aligned, confidence)
    _bootstrap_balance(out, "class_balance_audio", cls_a, num_classes, rng, bootstrap, confidence)
    _bootstrap_balance(out, "class_balance_video", cls_v, num_classes, rng, bootstrap, confidence)
    if prompt_classes is not None:
        prompted = np.asarray(prompt_classes, dtype=np.int64)
        if prompted.shape != (len(video_reads),):
            raise ValueError(f"prompt_classes needs one class per pair ({len(video_reads)}); got "
                             f"shape {prompted.shape}")
        known = prompted >= 0
        for what, reads in (("audio", audio_reads), ("video", video_reads)):
            hit = np.array([r.valid and r.cls == c for r, c in zip(reads, prompted)], dtype=bool)
            _proportion(out, f"prompt_agreement_{what}", hit[known], confidence)
    return out


def evaluate_clips(videos, mel_db, *, mel_hz, mel_frame_rate: float, fps: float,
                   num_classes: int, bootstrap: int, confidence: float, seed: int,
                   shuffle: bool = False, prompt_classes: Sequence[int] | None = None) -> dict:
    """Decode uint8 videos ``[N, F, H, W, 3]`` and dB mels ``[N, T, M]``, then score the pairs.

    With ``shuffle`` the audio of clip i is paired with the video of clip
    ``shuffle_pairs(N, seed)[i]``: the chance level of every metric.
    """
    if len(videos) != len(mel_db):
        raise ValueError(f"evaluate_clips needs as many videos as mels; got {len(videos)} and "
                         f"{len(mel_db)}")
    video_reads = decode_videos(videos, class_colours(num_classes))
    audio_reads = decode_audios(mel_db, mel_hz, class_pitches(num_classes),
                                mel_frame_rate=mel_frame_rate, fps=fps,
                                num_video_frames=int(videos.shape[1]))
    if shuffle:
        partner = shuffle_pairs(len(video_reads), seed)
        video_reads = [video_reads[j] for j in partner]
    return pair_metrics(video_reads, audio_reads, num_classes=num_classes, bootstrap=bootstrap,
                        confidence=confidence, seed=seed, prompt_classes=prompt_classes)
