"""Fréchet distances: closed forms, stability, warnings, world features, TorchScript extractors."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from scipy import linalg

from mmdisco.config import AudioEncoderConfig, SynthConfig
from mmdisco.data.synth import render_clip
from mmdisco.encoders.mel import LogMelEncoder
from mmdisco.eval import frechet
from mmdisco.eval.frechet import (FeatureExtractor, FrechetBiasWarning, TorchScriptExtractor,
                                  WorldAudioFeatures, WorldVideoFeatures, frechet_distance,
                                  frechet_report)
from mmdisco.eval.sets import network_frechet


def _with_moments(rng, n: int, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """n samples whose sample mean and covariance (ddof 1) are exactly ``mean`` and ``cov``."""
    z = rng.standard_normal((n, len(mean)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.atleast_2d(np.cov(z, rowvar=False)))).T
    return z @ np.linalg.cholesky(cov).T + mean


def _random_cov(rng, d: int, scale: float = 1.0) -> np.ndarray:
    a = rng.standard_normal((d, d)) * scale
    return a @ a.T + 0.1 * np.eye(d)


# --------------------------------------------------------------------------- (a) closed form
def test_closed_forms():
    rng = np.random.default_rng(0)
    # 1-D: (μ1 − μ2)² + (σ1 − σ2)²
    a = _with_moments(rng, 50, np.array([1.0]), np.array([[4.0]]))
    b = _with_moments(rng, 70, np.array([-0.5]), np.array([[0.25]]))
    r = frechet_distance(a, b)
    assert r == {"fd": pytest.approx(1.5 ** 2 + (2.0 - 0.5) ** 2, rel=1e-10), "n_a": 50,
                 "n_b": 70, "d": 1}
    # commuting (diagonal) covariances: ||δ||² + Σ (√a_i − √b_i)²
    va, vb = np.array([1.0, 4.0, 9.0, 0.5]), np.array([2.0, 1.0, 9.0, 0.01])
    ma, mb = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 1.0, -1.0, 3.5])
    a = _with_moments(rng, 200, ma, np.diag(va))
    b = _with_moments(rng, 300, mb, np.diag(vb))
    expect = ((ma - mb) ** 2).sum() + ((np.sqrt(va) - np.sqrt(vb)) ** 2).sum()
    assert frechet_distance(a, b)["fd"] == pytest.approx(expect, rel=1e-9)
    # general covariances: the textbook formula with scipy's sqrtm of S1 S2
    d = 6
    ma, mb = rng.standard_normal(d), rng.standard_normal(d)
    sa, sb = _random_cov(rng, d), _random_cov(rng, d, 0.5)
    a, b = _with_moments(rng, 400, ma, sa), _with_moments(rng, 250, mb, sb)
    expect = ((ma - mb) ** 2).sum() + np.trace(sa + sb - 2 * linalg.sqrtm(sa @ sb).real)
    assert frechet_distance(a, b)["fd"] == pytest.approx(expect, rel=1e-9)
    # symmetric in its arguments
    assert frechet_distance(b, a)["fd"] == pytest.approx(expect, rel=1e-9)
    # large samples of the Gaussians themselves approach the population value
    big_a = rng.multivariate_normal(ma, sa, size=200_000)
    big_b = rng.multivariate_normal(mb, sb, size=200_000)
    assert frechet_distance(big_a, big_b)["fd"] == pytest.approx(expect, rel=0.02)


def test_identical_sets_and_mean_shift():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 12)) @ rng.standard_normal((12, 12))
    assert frechet_distance(x, x)["fd"] == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(x, x[::-1].copy())["fd"] == pytest.approx(0.0, abs=1e-9)
    delta = rng.standard_normal(12)
    assert frechet_distance(x, x + delta)["fd"] == pytest.approx(delta @ delta, rel=1e-9)
    assert frechet_distance(torch.from_numpy(x), x + delta)["fd"] == pytest.approx(delta @ delta,
                                                                                 rel=1e-9)


# --------------------------------------------------------------------------- (b) stability
def test_rank_deficient_and_nearly_singular_covariances():
    rng = np.random.default_rng(2)
    d = 20
    low_a = rng.standard_normal((300, 3)) @ rng.standard_normal((3, d))   # rank 3
    low_b = rng.standard_normal((300, 2)) @ rng.standard_normal((2, d)) + 0.1
    const = np.ones((100, d))                                             # zero covariance
    near = rng.standard_normal((400, d)) * np.r_[np.ones(d - 2), 1e-9, 1e-12]
    scaled = rng.standard_normal((400, d)) * np.logspace(-6, 3, d)         # condition 1e18
    sets = [low_a, low_b, const, near, scaled, low_a * 1e4]
    for i, a in enumerate(sets):
        for b in sets[i:]:
            r, r_back = frechet_distance(a, b)["fd"], frechet_distance(b, a)["fd"]
            assert isinstance(r, float) and np.isfinite(r) and r >= 0.0
            assert r == pytest.approx(r_back, rel=1e-6, abs=1e-9)
    assert frechet_distance(const, const + 2.0)["fd"] == pytest.approx(4.0 * d, rel=1e-12)
    assert frechet_distance(low_a, low_a)["fd"] == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(near, near)["fd"] == pytest.approx(0.0, abs=1e-9)
    # rank-deficient: agrees with the textbook formula where that one is defined
    sa, sb = np.cov(low_a, rowvar=False), np.cov(low_b, rowvar=False)
    delta = low_a.mean(0) - low_b.mean(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)  # scipy: "matrix is singular"
        expect = delta @ delta + np.trace(sa + sb - 2 * linalg.sqrtm(sa @ sb).real)
    assert frechet_distance(low_a, low_b)["fd"] == pytest.approx(expect, rel=1e-6)


# --------------------------------------------------------------------------- (c) warnings
def test_warns_when_samples_do_not_exceed_the_dimension():
    rng = np.random.default_rng(3)
    d = 10
    big = rng.standard_normal((50, d))
    for n in (2, 5, d):  # a covariance of n samples has rank <= n - 1 < d
        with pytest.warns(FrechetBiasWarning, match=rf"N = {n} and M = 50 .* d = {d}"):
            r = frechet_distance(rng.standard_normal((n, d)), big)
        assert np.isfinite(r["fd"]) and r["n_a"] == n
        with pytest.warns(FrechetBiasWarning, match=rf"N = 50 and M = {n}"):
            frechet_distance(big, rng.standard_normal((n, d)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frechet_distance(rng.standard_normal((d + 1, d)), big)
        frechet_distance(big, big + 1)


def test_input_errors():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((20, 3))
    with pytest.raises(ValueError, match="N = 1"):
        frechet_distance(x[:1], x)
    with pytest.raises(ValueError, match="feats_b has N = 0"):
        frechet_distance(x, x[:0])
    with pytest.raises(ValueError, match="dimension: 3 and 2"):
        frechet_distance(x, x[:, :2])
    with pytest.raises(ValueError, match="2-D"):
        frechet_distance(x[:, 0], x)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="1 of 20 feature rows"):
        frechet_distance(bad, x)


def test_frechet_report():
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((40, 3)), rng.standard_normal((30, 3)) + 1.0
    r = frechet_report(a, b)
    assert r == {"fd": frechet_distance(a, b)["fd"], "n_real": 40, "n_sample": 30, "dim": 3}
    both = frechet_report({"audio": a, "video": a[:, :2]}, {"audio": b, "video": b[:, :2]})
    assert both["audio"] == r and both["video"]["dim"] == 2
    json.dumps(both, allow_nan=False)
    with pytest.raises(ValueError, match="different modalities"):
        frechet_report({"audio": a}, {"video": b})
    with pytest.raises(ValueError, match="two arrays or two"):
        frechet_report({"audio": a}, b)


# --------------------------------------------------------------------------- (d) the world
def _render(n: int, seed: int, **overrides):
    """Clips as tests/test_metrics.py makes them: 16×16 uint8 video, 8 kHz audio of 1 s."""
    cfg = SynthConfig(**{**dict(seconds=1.0, size=32, fps=8, sample_rate=8000), **overrides})
    rng = np.random.default_rng(seed)
    clips = [render_clip(cfg, rng) for _ in range(n)]
    video = torch.from_numpy(np.stack([c[0] for c in clips])).float()
    video = F.interpolate(rearrange(video, "n f h w c -> (n f) c h w"), size=(16, 16), mode="area")
    video = rearrange(video.round().clamp(0, 255).to(torch.uint8), "(n f) c h w -> n f h w c", n=n)
    return video.numpy(), torch.from_numpy(np.stack([c[1] for c in clips]))


@pytest.fixture(scope="module")
def world():
    """Features of two real sets and degraded sets, with one encoder fitted on real set 1."""
    n = 300
    enc = LogMelEncoder(AudioEncoderConfig(), sample_rate=8000, num_samples=8000)
    audio_fx, video_fx = WorldAudioFeatures(enc.cfg.n_mels), WorldVideoFeatures()
    sets = {"real1": _render(n, 11), "real2": _render(n, 12),
            "noisy": _render(n, 13, video_noise=0.25, audio_noise=0.05),
            "palette": _render(n, 14, num_classes=3),          # other colours and pitches
            "timing": _render(n, 15, min_period=6, max_period=8)}
    enc.fit(sets["real1"][1])
    mels = {k: enc.to_db(enc.encode(a)).numpy() for k, (_, a) in sets.items()}
    feats = {k: {"audio": audio_fx(mels[k]), "video": video_fx(v)} for k, (v, _) in sets.items()}
    return sets, mels, feats


def test_world_features_layouts(world, monkeypatch):
    sets, mels, feats = world
    video, mel = sets["real1"][0][:20], mels["real1"][:20]
    audio_fx, video_fx = WorldAudioFeatures(32), WorldVideoFeatures()
    for fx in (audio_fx, video_fx):
        assert isinstance(fx, FeatureExtractor)
    a = audio_fx(mel)
    assert a.shape == (20, audio_fx.dim) and a.dtype == np.float64 and np.isfinite(a).all()
    np.testing.assert_allclose(audio_fx(mel[:, None]), a)              # latent layout [N,1,T,M]
    np.testing.assert_allclose(audio_fx(torch.from_numpy(mel)), a)
    v = video_fx(video)
    assert v.shape == (20, video_fx.dim) and np.isfinite(v).all()
    np.testing.assert_allclose(video_fx(video.astype(np.float32) / 255.0), v, atol=1e-5)
    np.testing.assert_allclose(video_fx(torch.from_numpy(video)), v)
    # summarised in chunks of clips: the same features
    monkeypatch.setattr(frechet, "CHUNK", 7)
    np.testing.assert_allclose(audio_fx(mel), a)
    np.testing.assert_allclose(video_fx(video), v, rtol=1e-6, atol=1e-6)
    monkeypatch.setattr(frechet, "_CHUNK_PIXELS", 1)
    np.testing.assert_allclose(video_fx(video), v, rtol=1e-6, atol=1e-6)
    # a black clip (no ball) still gives finite features
    assert np.isfinite(video_fx(np.zeros((2, 8, 16, 16, 3), np.uint8))).all()
    with pytest.raises(ValueError, match=r"\[N, T, 32\]"):
        audio_fx(mel[..., :16])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        video_fx(video.astype(np.float32) / 127.5 - 1.0)
    with pytest.raises(ValueError, match=r"\[N, F, H, W, 3\]"):
        video_fx(rearrange(video, "n f h w c -> n f c h w"))


def test_world_fd_separates_real_from_degraded(world, record_property):
    _, _, feats = world
    fd = {k: {m: frechet_distance(feats["real1"][m], feats[k][m])["fd"]
              for m in ("audio", "video")} for k in ("real2", "noisy", "palette", "timing")}
    record_property("fd", fd)
    print("world FDs against real set 1:", json.dumps(fd))
    for m in ("audio", "video"):
        base = fd["real2"][m]
        assert base > 0.0
        assert fd["noisy"][m] > 10 * base, (m, fd)
        assert fd["palette"][m] > 10 * base, (m, fd)
        assert fd["timing"][m] > 3 * base, (m, fd)


# --------------------------------------------------------------------------- (e) TorchScript
class _AudioNet(torch.nn.Module):
    """Frame energies of a waveform → 8 features; carries its rate and width."""

    def __init__(self):
        super().__init__()
        self.sample_rate, self.dim = 16000, 8
        self.proj = torch.nn.Linear(64 + 1, 8)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        n = wave.shape[1] // 64 * 64
        frames = wave[:, :n].reshape(wave.shape[0], -1, 64).abs().mean(1)
        length = torch.full((wave.shape[0], 1), float(wave.shape[1]) / 1000.0)
        return self.proj(torch.cat([frames, length], 1))


class _NotFeatures(torch.nn.Module):
    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return wave.unsqueeze(1)


class _VideoNet(torch.nn.Module):
    def __init__(self, out: int = 5):
        super().__init__()
        self.proj = torch.nn.Linear(3, out)

    def forward(self, video: torch.Tensor) -> torch.Tensor:  # [N, F, 3, H, W]
        return self.proj(video.mean(dim=(1, 3, 4)))


def test_torchscript_extractor(tmp_path, world):
    sets, _, _ = world
    torch.manual_seed(0)
    audio_path, video_path = tmp_path / "audio.pt", tmp_path / "video.pt"
    torch.jit.save(torch.jit.script(_AudioNet()), str(audio_path))
    torch.jit.save(torch.jit.trace(_VideoNet(), torch.rand(2, 8, 3, 16, 16)), str(video_path))
    audio_fx = TorchScriptExtractor(audio_path, "audio", batch_size=128)
    video_fx = TorchScriptExtractor(video_path, "video")
    assert isinstance(audio_fx, FeatureExtractor) and isinstance(video_fx, FeatureExtractor)
    assert (audio_fx.dim, audio_fx.sample_rate, video_fx.dim) == (8, 16000, None)
    (v1, a1), (v2, a2) = sets["real1"], sets["real2"]
    fa1, fa2 = audio_fx(a1), audio_fx(a2.numpy())
    fv1, fv2 = video_fx(v1), video_fx(v2)                   # uint8 [N, F, H, W, 3]
    assert fa1.shape == (300, 8) and fv1.shape == (300, 5) and video_fx.dim == 5
    np.testing.assert_allclose(video_fx(rearrange(v1, "n f h w c -> n f c h w") / 255.0), fv1,
                               rtol=1e-5, atol=1e-6)
    for a, b in ((fa1, fa2), (fv1, fv2)):
        r = frechet_distance(a, b)
        assert np.isfinite(r["fd"]) and r["fd"] >= 0.0 and r["n_a"] == 300
    # clips at another rate are resampled to the module's rate first: 8000 → 16000 Hz
    length = TorchScriptExtractor(audio_path, "audio")
    plain = length(a1[:4])
    resampled = length(a1[:4], sample_rate=8000)
    assert not np.allclose(plain, resampled)
    # wrong inputs and outputs name the path
    with pytest.raises(ValueError, match="waveform"):
        audio_fx(a1[:, None])
    with pytest.raises(ValueError, match="returned 8 features per clip; expected dim = 3"):
        TorchScriptExtractor(audio_path, "audio", dim=3)(a1[:2])
    bad_path = tmp_path / "bad_shape.pt"
    torch.jit.save(torch.jit.script(_NotFeatures()), str(bad_path))
    with pytest.raises(ValueError, match=rf"{bad_path.name} returned \(2, 1, 8000\) .*\[N, dim"):
        TorchScriptExtractor(bad_path, "audio")(a1[:2])


def test_torchscript_extractor_refuses_what_is_not_torchscript(tmp_path):
    missing = tmp_path / "nowhere.pt"
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        TorchScriptExtractor(missing, "audio")
    pickled = tmp_path / "weights.pt"
    torch.save(_VideoNet().state_dict(), str(pickled))         # a pickle, not TorchScript
    text = tmp_path / "notes.txt"
    text.write_text("not a model\n")
    for path in (pickled, text):
        with pytest.raises(ValueError, match=rf"{path.name} is not a TorchScript archive"):
            TorchScriptExtractor(path, "video")
    with pytest.raises(ValueError, match="modality"):
        TorchScriptExtractor(pickled, "text")


def test_evaluate_scores_each_set_on_the_users_networks(tmp_path, world):
    """``mmdisco.eval.sets.network_frechet``, what `evaluate` runs with eval.audio_features /
    eval.video_features: each set against a real subset of its own size, the floor in `real`."""
    sets, _, _ = world
    torch.manual_seed(0)
    audio_path, video_path = tmp_path / "audio.pt", tmp_path / "video.pt"
    torch.jit.save(torch.jit.script(_AudioNet()), str(audio_path))
    torch.jit.save(torch.jit.trace(_VideoNet(), torch.rand(2, 8, 3, 16, 16)), str(video_path))
    (v1, a1), (v2, a2) = sets["real1"], sets["real2"]
    real = (np.concatenate([v1, v2]), np.concatenate([a1, a2]))
    dark = (v2[:100] // 4, a2[:100].numpy() * 0.1)          # dim frames, quiet sound
    out = network_frechet(real, {"same": (v1[:100], a1[:100].numpy()), "dark": dark},
                          audio_features=str(audio_path), video_features=str(video_path),
                          sample_rate=16000, seed=0)
    for m in ("audio", "video"):
        key = f"fd_{m}_net"
        assert out["real"][key] >= 0 and out["same"][key] >= 0
        assert out["dark"][key] > 5 * max(out["same"][key], out["real"][key])
    only_video = network_frechet(real, {"same": (v1[:100], a1[:100].numpy())}, audio_features=None,
                                 video_features=str(video_path), sample_rate=16000, seed=0)
    assert set(only_video["same"]) == {"fd_video_net"}
    assert network_frechet(real, {}, audio_features=None, video_features=None, sample_rate=16000,
                           seed=0) == {"real": {}}
