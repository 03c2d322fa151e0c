"""Short forms of an evaluation report: the headline figures, one sweep row, one line per set.

The full report (``mmdisco.eval.evaluation.evaluate``) has every figure with its interval;
these cut it to what is compared across experiments and printed after a run.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from mmdisco.config import GuidanceConfig
from mmdisco.eval.evaluation import SETS
from mmdisco.io import atomic_path

SWEEP_METRICS = ("validity_audio", "validity_video", "semantic_agreement", "temporal_f1",
                 "aligned_fraction", "class_balance_audio", "class_balance_video", "fd_audio",
                 "fd_video", "av_align")
# the figures compared per experiment: alignment beside what it may cost (validity, class
# balance, Fréchet distances) and how tonal the rendered mp4s are
HEADLINE = SWEEP_METRICS + ("tonal_fraction",)


def headline(report: dict) -> dict:
    """The baseline and guided sections cut to ``HEADLINE`` (the report has everything)."""
    keys = HEADLINE + ("prompt_agreement_audio", "prompt_agreement_video")
    return {name: {k: report[name][k] for k in keys if k in report[name]}
            for name in SETS if name in report}


def write_sweep_row(path: Path, guidance: GuidanceConfig, report: dict) -> None:
    """One CSV row: the guidance params and each set's headline metrics (``guided_*``,
    ``baseline_*``). Each experiment writes its own row, so rows of several experiments plot
    the metrics against ``scale``."""
    row = {"scale": guidance.scale, "audio_weight": guidance.audio_weight,
           "video_weight": guidance.video_weight, "critic_weight": guidance.critic_weight}
    for name in SETS:
        row.update({f"{name}_{k}": report[name].get(k) for k in SWEEP_METRICS})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(row))
    writer.writeheader()
    writer.writerow(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())


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
