"""Metrics of whole sets of pairs that read rendered media: AV-Align and network Fréchet distances.

Every set (real clips, shuffled real pairs, baseline and guided samples) is rendered the same
way (``write_pairs``: mp4, H.264 + AAC, frames enlarged to at least 128 pixels) and then
measured on the files, so that the four sets differ only in their content, and what a user
plays is what is scored.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mmdisco.eval.av_align import av_align_files
from mmdisco.eval.frechet import TorchScriptExtractor, frechet_distance
from mmdisco.eval.sheets import write_pairs


def render_sets(folder: Path, sets: dict[str, tuple[np.ndarray, np.ndarray]], *, fps: int,
                sample_rate: int, n: int) -> dict[str, list[Path]]:
    """The first ``n`` pairs of each set (uint8 videos ``[N, F, H, W, 3]``, waves ``[N, L]``)
    as mp4 files under ``folder/<set>/``."""
    out = {}
    for name, (videos, waves) in sets.items():
        k = min(n, len(videos))
        out[name] = write_pairs(Path(folder) / name, videos[:k], waves[:k], fps=fps,
                                sample_rate=sample_rate, prefix=name)
    return out


def av_align_report(files: dict[str, list[Path]], *, bootstrap: int, confidence: float,
                    seed: int) -> dict[str, dict]:
    """Per set: the mean AV-Align of its files (the published metric, ``mmdisco.eval.av_align``)
    with a bootstrap interval, and the number of files."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, paths in files.items():
        scores = np.asarray(av_align_files(paths)["scores"], dtype=float) if paths else np.zeros(0)
        entry: dict = {"av_align_n": int(scores.size)}
        if scores.size:
            means = scores[rng.integers(0, scores.size, size=(bootstrap, scores.size))].mean(1)
            lo, hi = np.quantile(means, [0.5 - confidence / 2, 0.5 + confidence / 2])
            entry.update(av_align=float(scores.mean()), av_align_ci=[float(lo), float(hi)])
        else:
            entry.update(av_align=None, av_align_ci=[None, None])
        out[name] = entry
    return out


def network_frechet(real: tuple[np.ndarray, np.ndarray], sets: dict[str, tuple[np.ndarray, np.ndarray]],
                    *, audio_features: str | None, video_features: str | None, sample_rate: int,
                    seed: int) -> dict[str, dict]:
    """Fréchet distances of each set to real clips on the user's TorchScript extractors
    (``TorchScriptExtractor``; an extractor left ``None`` is skipped). Each set is compared with
    a real subset of its own size (FD is biased by the set size); ``real`` gets the floor, two
    disjoint real subsets of that size, when the real clips suffice."""
    paths = {"audio": audio_features, "video": video_features}
    extractors = {m: TorchScriptExtractor(p, m) for m, p in paths.items() if p}
    out: dict[str, dict] = {name: {} for name in ("real", *sets)}
    if not extractors:
        return out
    real_v, real_w = real
    order = np.random.default_rng(seed).permutation(len(real_v))
    data = {"video": lambda v, w: v, "audio": lambda v, w: w}
    for modality, fx in extractors.items():
        real_x = fx(data[modality](real_v[order], real_w[order]), sample_rate=sample_rate)
        for name, (v, w) in sets.items():
            n = len(v)
            key = f"fd_{modality}_net"
            out[name][key] = frechet_distance(real_x[:n], fx(data[modality](v, w),
                                                            sample_rate=sample_rate))["fd"]
            if 2 * n <= len(order):
                out["real"][key] = frechet_distance(real_x[:n], real_x[n:2 * n])["fd"]
    return out
