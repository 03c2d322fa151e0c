"""Alignment metrics: exact values on hand-made readings, real ≈ 1 and shuffled ≈ chance."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from mmdisco.config import AudioEncoderConfig, SynthConfig
from mmdisco.data.synth import render_clip
from mmdisco.encoders.mel import LogMelEncoder
from mmdisco.eval.decoders import AudioReading, VideoReading
from mmdisco.eval.metrics import (METRICS, evaluate_clips, frame_f1, normalised_entropy,
                                  pair_metrics, shuffle_pairs, wilson_interval)


# --------------------------------------------------------------------------- pieces
def test_frame_f1_exact_values():
    assert frame_f1([1, 4], [1, 5]) == 0.5
    assert frame_f1([1, 4], [1, 5], tolerance=1) == 1.0
    assert frame_f1([1, 4], [1, 4]) == 1.0
    assert frame_f1([], []) == 1.0
    assert frame_f1([2], []) == 0.0
    assert frame_f1([0, 3, 6], [7]) == 0.0
    assert frame_f1([0, 3, 6], [7], tolerance=1) == pytest.approx(2 * 1 / 4)
    # each frame is matched at most once: one onset cannot cover two contacts
    assert frame_f1([1, 2], [2], tolerance=1) == pytest.approx(2 / 3)
    assert frame_f1([1, 3], [2], tolerance=1) == pytest.approx(2 / 3)
    # greedy in time order finds the maximum matching (2 pairs, not 1)
    assert frame_f1([1, 2], [2, 3], tolerance=1) == 1.0


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(8, 10, 0.95)
    assert (lo, hi) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))
    lo, hi = wilson_interval(0, 10, 0.95)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(10, 10, 0.95)
    assert lo == pytest.approx(0.7225, abs=1e-4) and hi == 1.0
    lo, hi = wilson_interval(50, 100, 0.95)
    assert (lo, hi) == (pytest.approx(0.4038, abs=1e-4), pytest.approx(0.5962, abs=1e-4))
    with pytest.raises(ValueError):
        wilson_interval(0, 0, 0.95)


def test_normalised_entropy():
    assert normalised_entropy([2, 2, 2, 2], 4) == 0.0
    assert normalised_entropy([0, 1, 2, 3] * 5, 4) == pytest.approx(1.0)
    assert normalised_entropy([0, 0, 1, 1], 4) == pytest.approx(0.5)
    assert normalised_entropy([0, 1, 1, 1], 2) == pytest.approx(0.811278, abs=1e-6)


def test_shuffle_pairs_is_a_deterministic_derangement():
    for n in (2, 3, 10, 601):
        p = shuffle_pairs(n, seed=5)
        assert sorted(p.tolist()) == list(range(n))
        assert np.all(p != np.arange(n))
        assert np.array_equal(p, shuffle_pairs(n, seed=5))
    assert not np.array_equal(shuffle_pairs(50, 0), shuffle_pairs(50, 1))
    assert shuffle_pairs(0, 0).size == 0
    with pytest.raises(ValueError, match="at least 2"):
        shuffle_pairs(1, 0)


# --------------------------------------------------------------------------- pair_metrics
def _hand_made():
    video = [VideoReading(True, 0, [1, 4]), VideoReading(True, 1, [1, 4]),
             VideoReading(True, 0, [2]), VideoReading(False, reason="no ball"),
             VideoReading(True, 1, [6])]
    audio = [AudioReading(True, 0, [1, 4]), AudioReading(True, 1, [1, 5]),
             AudioReading(True, 1, [2]), AudioReading(True, 1, [3]),
             AudioReading(False, reason="silence")]
    return video, audio


def test_pair_metrics_exact_values_on_hand_made_readings():
    video, audio = _hand_made()
    m = pair_metrics(video, audio, num_classes=2, bootstrap=200, confidence=0.95, seed=0)
    expected = {"validity_audio": (0.8, 5), "validity_video": (0.8, 5),
                "validity_both": (0.6, 5), "semantic_agreement": (2 / 3, 3),
                "temporal_f1": ((1 + 0.5 + 1) / 3, 3), "temporal_f1_tol1": (1.0, 3),
                "aligned_fraction": (0.2, 5), "class_balance_audio": (0.811278, 4),
                "class_balance_video": (1.0, 4)}
    assert set(m) == {f"{k}{s}" for k in METRICS for s in ("", "_ci", "_n")}
    for name, (value, n) in expected.items():
        assert m[name] == pytest.approx(value, abs=1e-6), name
        assert m[f"{name}_n"] == n, name
        lo, hi = m[f"{name}_ci"]
        assert lo <= m[name] + 1e-12 and m[name] <= hi + 1e-12, name
    assert m["validity_audio_ci"] == pytest.approx(list(wilson_interval(4, 5, 0.95)))
    assert m["semantic_agreement_ci"] == pytest.approx(list(wilson_interval(2, 3, 0.95)))
    assert m["temporal_f1_tol1_ci"] == [1.0, 1.0]  # every resample has mean 1
    json.dumps(m, allow_nan=False)  # plain floats, ints and lists
    assert all(type(v) in (float, int, list) for v in m.values())


def test_pair_metrics_is_seeded_and_bootstrap_narrows_with_n():
    video, audio = _hand_made()
    kw = dict(num_classes=2, bootstrap=300, confidence=0.9)
    assert pair_metrics(video, audio, seed=3, **kw) == pair_metrics(video, audio, seed=3, **kw)
    big = pair_metrics(video * 40, audio * 40, seed=3, **kw)
    small = pair_metrics(video, audio, seed=3, **kw)
    width = lambda m, k: m[f"{k}_ci"][1] - m[f"{k}_ci"][0]  # noqa: E731
    assert width(big, "temporal_f1") < width(small, "temporal_f1") / 3
    assert big["temporal_f1"] == pytest.approx(small["temporal_f1"])


def test_pair_metrics_with_nothing_valid_gives_none():
    video = [VideoReading(False, reason="x")] * 3
    audio = [AudioReading(False, reason="y")] * 3
    m = pair_metrics(video, audio, num_classes=4, bootstrap=10, confidence=0.95, seed=0)
    assert m["validity_both"] == 0.0 and m["aligned_fraction"] == 0.0
    assert m["semantic_agreement"] is None and m["semantic_agreement_ci"] == [None, None]
    assert m["semantic_agreement_n"] == 0 and m["class_balance_audio_n"] == 0
    json.dumps(m, allow_nan=False)


def test_pair_metrics_input_errors():
    video, audio = _hand_made()
    with pytest.raises(ValueError, match="as many"):
        pair_metrics(video[:2], audio, num_classes=2, bootstrap=10, confidence=0.95, seed=0)
    with pytest.raises(ValueError, match="confidence"):
        pair_metrics(video, audio, num_classes=2, bootstrap=10, confidence=1.5, seed=0)
    with pytest.raises(ValueError, match="outside 0..0"):
        pair_metrics(video, audio, num_classes=1, bootstrap=10, confidence=0.95, seed=0)


# --------------------------------------------------------------------------- rendered clips
def _render(num_classes: int, n: int, seed: int):
    cfg = SynthConfig(seconds=1.0, size=64, fps=8, sample_rate=8000, num_classes=num_classes)
    rng = np.random.default_rng(seed)
    clips = [render_clip(cfg, rng) for _ in range(n)]
    video = torch.from_numpy(np.stack([c[0] for c in clips])).float()
    video = F.interpolate(rearrange(video, "n f h w c -> (n f) c h w"), size=(16, 16), mode="area")
    video = rearrange(video.round().clamp(0, 255).to(torch.uint8), "(n f) c h w -> n f h w c", n=n)
    audio = torch.from_numpy(np.stack([c[1] for c in clips]))
    enc = LogMelEncoder(AudioEncoderConfig(), sample_rate=8000, num_samples=8000)
    enc.fit(audio)
    return video.numpy(), enc.to_db(enc.encode(audio)).numpy(), enc


@pytest.mark.parametrize("num_classes,n", [(2, 600), (4, 400), (8, 400)])
def test_real_pairs_score_one_and_shuffled_pairs_score_chance(num_classes, n):
    """Shuffled semantic agreement ~ Binomial(n, 1/K)/n: its standard error sqrt((K-1)/K²/n) is
    0.020, 0.022, 0.017 for these (K, n), so ±0.05 is a band of at least 2.3 standard errors."""
    video, mel_db, enc = _render(num_classes, n, seed=100 + num_classes)
    kw = dict(mel_hz=enc.mel_frequencies(), mel_frame_rate=enc.frame_rate, fps=8,
              num_classes=num_classes, bootstrap=200, confidence=0.95, seed=0)
    real = evaluate_clips(video, mel_db, **kw)
    shuffled = evaluate_clips(video, mel_db, shuffle=True, **kw)
    for name in ("validity_audio", "validity_video", "validity_both", "semantic_agreement",
                 "temporal_f1", "temporal_f1_tol1", "aligned_fraction"):
        assert real[name] >= 0.99, (name, real[name])
    assert real["validity_audio_n"] == n
    assert real["class_balance_audio"] > 0.95 and real["class_balance_video"] > 0.95
    # shuffling re-pairs readings: per-modality figures are unchanged
    for name in ("validity_audio", "validity_video", "class_balance_audio", "class_balance_video"):
        assert shuffled[name] == real[name]
    assert abs(shuffled["semantic_agreement"] - 1 / num_classes) <= 0.05
    assert shuffled["temporal_f1"] < 0.4
    assert shuffled["temporal_f1_ci"][1] < real["temporal_f1_ci"][0]
    assert shuffled["temporal_f1_tol1"] < 0.8  # lenient: about 0.6 by chance
    assert shuffled["aligned_fraction"] < 0.1
    assert not math.isclose(shuffled["semantic_agreement"], real["semantic_agreement"])
