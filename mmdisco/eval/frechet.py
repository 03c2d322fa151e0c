"""Fréchet distances per modality, behind a small feature-extractor protocol.

The Fréchet distance between two feature sets is the 2-Wasserstein distance between the
Gaussians fitted to them (Fréchet 1957; Dowson & Landau 1982), as used by FID, FAD and FVD::

    FD = ||μ1 − μ2||² + Tr(S1 + S2 − 2 (S1^{1/2} S2 S1^{1/2})^{1/2})

with μ the feature means and S the sample covariances (ddof = 1). Everything is computed in
float64. The trace of the matrix square root is taken through two symmetric
eigendecompositions: S1^{1/2} from the eigenpairs of S1, then the eigenvalues of the
symmetric positive semi-definite matrix S1^{1/2} S2 S1^{1/2}, with round-off negatives
clipped to 0. That product has the same eigenvalues as S1 S2, so the trace equals the
usual Tr((S1 S2)^{1/2}), but the result is always real and stays stable for singular or
nearly singular covariances, where ``scipy.linalg.sqrtm`` of the non-symmetric S1 S2 returns
complex parts and needs an ad hoc ε offset.

Bias: the plug-in FD is biased upwards by roughly Tr(S)/N-type terms, so compare FDs only
at equal set sizes. With N ≤ d samples the covariance (rank ≤ N − 1) is singular and the
bias large: ``frechet_distance`` warns (``FrechetBiasWarning``) and refuses N < 2.

Extractors (``FeatureExtractor``): ``WorldAudioFeatures`` and ``WorldVideoFeatures`` are fixed,
hand-made summaries for the embedded bouncing-ball world (nothing to download or train);
``TorchScriptExtractor`` loads any network a user exported to TorchScript (VGGish, PANNs,
CLAP, I3D, ...) for real data.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torchaudio

CHUNK = 256                # clips summarised at once by the world extractors (bounded memory)
_CHUNK_PIXELS = 1 << 21    # ... and at most about this many video pixels (F·H·W per clip)


class FrechetBiasWarning(UserWarning):
    """A feature set has no more samples than dimensions: singular covariance, biased FD."""


# --------------------------------------------------------------------------- distance
def _as_numpy(x) -> np.ndarray:
    """numpy view of an array or a (CPU-movable) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_features(feats, name: str) -> np.ndarray:
    x = _as_numpy(feats)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D feature array [N, d], got shape {x.shape}")
    x = x.astype(np.float64)
    bad = int((~np.isfinite(x).all(1)).sum())
    if bad:
        raise ValueError(f"{name} has {bad} of {len(x)} feature rows with NaN or inf values")
    if len(x) < 2:
        raise ValueError(f"{name} has N = {len(x)} feature rows; a Fréchet distance needs at "
                         f"least 2 to estimate a covariance")
    return x


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix."""
    w, v = np.linalg.eigh((s + s.T) / 2.0)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """Tr((S1^{1/2} S2 S1^{1/2})^{1/2}) for symmetric PSD S1, S2, real and non-negative."""
    r = _psd_sqrt(s1)
    m = r @ s2 @ r
    w = np.linalg.eigvalsh((m + m.T) / 2.0)
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance(feats_a, feats_b) -> dict[str, Any]:
    """Fréchet distance between feature sets ``[N, d]`` and ``[M, d]`` (see the module docs).

    Returns ``{"fd": float, "n_a": N, "n_b": M, "d": d}``. Warns with ``FrechetBiasWarning``
    when N ≤ d or M ≤ d (rank-deficient covariance: the value is finite but biased) and
    raises ``ValueError`` for fewer than 2 rows, mismatched widths or non-finite features.
    """
    a = _check_features(feats_a, "feats_a")
    b = _check_features(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets differ in dimension: {a.shape[1]} and {b.shape[1]}")
    (n, d), m = a.shape, len(b)
    if n <= d or m <= d:
        warnings.warn(f"Fréchet distance with N = {n} and M = {m} samples for d = {d} feature "
                      f"dimensions: a covariance from n samples has rank ≤ n − 1, so with "
                      f"n ≤ d it is singular and the distance strongly biased; use more than "
                      f"{d} samples per set", FrechetBiasWarning, stacklevel=2)
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    s_a, s_b = np.atleast_2d(s_a), np.atleast_2d(s_b)
    diff = mu_a - mu_b
    fd = float(diff @ diff + np.trace(s_a) + np.trace(s_b) - 2.0 * trace_sqrt_product(s_a, s_b))
    return {"fd": max(fd, 0.0), "n_a": int(n), "n_b": int(m), "d": int(d)}


def frechet_report(real_feats, sample_feats) -> dict[str, Any]:
    """FD of samples against real features, JSON-able, with its counts.

    Arrays give ``{"fd", "n_real", "n_sample", "dim"}``; mappings ``{modality: features}``
    (the same keys on both sides) give ``{modality: {"fd", "n_real", "n_sample", "dim"}}``.
    """
    if isinstance(real_feats, Mapping) or isinstance(sample_feats, Mapping):
        if not (isinstance(real_feats, Mapping) and isinstance(sample_feats, Mapping)):
            raise ValueError("frechet_report needs two arrays or two {modality: features} "
                             "mappings, not one of each")
        if set(real_feats) != set(sample_feats):
            raise ValueError(f"frechet_report: real and sample features name different "
                             f"modalities: {sorted(real_feats)} and {sorted(sample_feats)}")
        return {k: frechet_report(real_feats[k], sample_feats[k]) for k in real_feats}
    r = frechet_distance(real_feats, sample_feats)
    return {"fd": r["fd"], "n_real": r["n_a"], "n_sample": r["n_b"], "dim": r["d"]}


# --------------------------------------------------------------------------- protocol
@runtime_checkable
class FeatureExtractor(Protocol):
    """Maps a batch of one modality to features ``float [N, dim]``."""

    modality: str
    dim: int

    def __call__(self, batch) -> np.ndarray: ...


# --------------------------------------------------------------------------- world: audio
_RISE_DB = 6.0  # an onset: the envelope rises by at least this from one mel frame to the next


class WorldAudioFeatures:
    """Frozen hand-made features of dB log-mel images of the embedded world.

    Input: dB mels ``[N, T, M]`` as ``LogMelEncoder.to_db`` gives them (what ``evaluate_clips``
    reads), or the latent layout ``[N, 1, T, M]`` of the same dB values. Features (``2M + 8``),
    dB values in units of 10 dB (bels) so every group is of order one:

    - per-band mean and standard deviation over time (``2M``): where the tone sits (pitch
      class, harmonic), how loud and how much it varies, and the noise floor between tones;
    - the energy envelope (power summed over bands, dB per frame): mean, std, and peak over
      the 10th-percentile floor (signal-to-noise);
    - onset statistics from its positive frame-to-frame rises: mean and max rise, the
      fraction of frames that start an onset (a rise ≥ 6 dB), i.e. the bounce rate, and the
      mean gap between onsets as a fraction of T (timing);
    - the spectral centroid (fraction of the mel axis) averaged over time.

    The world varies exactly these: class pitch, bounce period/phase, loudness and noise.
    Nothing is learned, so the features are the same for every run and need no download.
    """

    modality = "audio"

    def __init__(self, n_mels: int = 32):
        if n_mels < 1:
            raise ValueError(f"n_mels must be >= 1, got {n_mels}")
        self.n_mels = int(n_mels)
        self.dim = 2 * self.n_mels + 8

    def __call__(self, mel_db) -> np.ndarray:
        x = _as_numpy(mel_db)
        if x.ndim == 4 and x.shape[1] == 1:
            x = x[:, 0]
        if x.ndim != 3 or x.shape[-1] != self.n_mels:
            raise ValueError(f"WorldAudioFeatures needs dB mels [N, T, {self.n_mels}] (or "
                             f"[N, 1, T, {self.n_mels}]), got shape {x.shape}")
        if x.shape[1] < 2:
            raise ValueError(f"WorldAudioFeatures needs at least 2 mel frames, got {x.shape}")
        out = [self._chunk(x[i:i + CHUNK].astype(np.float64)) for i in range(0, len(x), CHUNK)]
        return np.concatenate(out) if out else np.zeros((0, self.dim))

    def _chunk(self, db: np.ndarray) -> np.ndarray:
        if not np.isfinite(db).all():
            raise ValueError("WorldAudioFeatures got NaN or inf dB values")
        n, t, m = db.shape
        bels = db / 10.0
        top = bels.max(-1, keepdims=True)                      # summed power in bels, [N, T]
        env = top[..., 0] + np.log10((10.0 ** (bels - top)).sum(-1))
        rise = np.diff(env, axis=1)                             # bels per frame, [N, T-1]
        onset = rise >= _RISE_DB / 10.0
        starts = onset & ~np.concatenate([np.zeros((n, 1), bool), onset[:, :-1]], axis=1)
        count = starts.sum(1)
        gaps = np.zeros(n)
        for i in np.flatnonzero(count >= 2):
            gaps[i] = np.diff(np.flatnonzero(starts[i])).mean() / t
        power = 10.0 ** (bels - bels.max(axis=(1, 2), keepdims=True))
        centroid = (power * (np.arange(m) + 0.5) / m).sum(-1) / power.sum(-1).clip(1e-300)
        floor = np.percentile(env, 10.0, axis=1)
        feats = [bels.mean(1), bels.std(1),
                 np.stack([env.mean(1), env.std(1), env.max(1) - floor,
                           np.clip(rise, 0.0, None).mean(1), rise.max(1),
                           count / (t - 1), gaps, centroid.mean(1)], axis=1)]
        return np.concatenate(feats, axis=1)


# --------------------------------------------------------------------------- world: video
_MIN_CONTRAST = 48.0 / 255.0  # a frame shows a ball if its brightest pixel stands this far out
_HUE_BINS = 8
_EPS = 1e-3  # floor under scale-like quantities before their log10 (1/1000 of full scale)


def _log(v):
    """log10 of a non-negative scale (noise, speed, change): multiplicative changes count."""
    return np.log10(np.asarray(v, dtype=np.float64) + _EPS)


def _video_unit(videos) -> np.ndarray:
    """uint8 ``[N, F, H, W, 3]`` or float in [0, 1] → float32 in [0, 1]."""
    x = _as_numpy(videos)
    if x.ndim != 5 or x.shape[-1] != 3:
        raise ValueError(f"videos must be [N, F, H, W, 3] (uint8, or float in [0, 1]), got "
                         f"shape {x.shape}")
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"videos must be uint8 or float in [0, 1], got dtype {x.dtype}")
    x = x.astype(np.float32)
    if x.size and not np.isfinite(x).all():
        raise ValueError("videos contain NaN or inf values")
    if x.size and (x.min() < -1e-3 or x.max() > 1.0 + 1e-3):
        raise ValueError(f"float videos must lie in [0, 1], got values in [{x.min():.3g}, "
                         f"{x.max():.3g}] (pixel latents in [-1, 1] go through "
                         f"PixelEncoder.decode first; 0..255 values should be uint8)")
    return np.clip(x, 0.0, 1.0)


def _hue(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hue in [0, 1) and saturation (max − min) of RGB ``[..., 3]`` in [0, 1]."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    hi, lo = rgb.max(-1), rgb.min(-1)
    c = hi - lo
    safe = np.where(c > 0, c, 1.0)
    h = np.where(hi == r, ((g - b) / safe) % 6.0,
                 np.where(hi == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    return (h / 6.0) % 1.0, c


class WorldVideoFeatures:
    """Frozen hand-made features of videos of the embedded world.

    Input: ``[N, F, H, W, 3]``, uint8 (what ``evaluate_clips`` and ``PixelEncoder.decode``
    give) or float in [0, 1]. The ball is the set of pixels brighter (max over RGB) than the
    frame median plus half the way to the frame peak, as the ground-truth decoder finds it.
    Features (``36``, each of order one, independent of F, H and W):

    - colour: mean RGB of the ball pixels, its spread over frames, and the ball colour over
      the background scaled to a largest channel of 1 (chroma) (9);
    - a soft, circular hue histogram of the ball pixels weighted by saturation (8 bins);
    - ball area fraction (mean, std), fraction of frames with a visible ball (3);
    - background: median RGB (3); log10 of the noise std of the non-ball pixels and of the
      mean absolute difference of horizontal neighbours (2) — image noise quality;
    - ball position (centroid, fraction of the frame): vertical mean/std/max/min,
      horizontal mean/std, log10 of the mean absolute vertical and horizontal speed per
      frame, and the rate of floor contacts (local maxima of the vertical centroid per
      frame) (9) — bounce timing and motion;
    - frame-difference energy: log10 of the mean RMS change between consecutive frames and
      its coefficient of variation over time (2).

    Scale-like quantities (noise, speeds, change) enter as log10(· + 1e-3): they vary by
    factors, and on a log scale a noisier or jerkier set moves them as much as a colour
    change moves the colour features.
    The world varies exactly these: class colour, bounce period, height and horizontal
    motion, and noise. Nothing is learned; no download.
    """

    modality = "video"
    dim = 36

    def __call__(self, videos) -> np.ndarray:
        x = _video_unit(videos)
        if min(x.shape[1:4]) < 1:
            raise ValueError(f"videos need at least one frame of at least 1×1 pixels, got "
                             f"{x.shape}")
        step = max(1, min(CHUNK, _CHUNK_PIXELS // int(np.prod(x.shape[1:4]))))
        out = [self._chunk(x[i:i + step]) for i in range(0, len(x), step)]
        return np.concatenate(out).astype(np.float64) if out else np.zeros((0, self.dim))

    def _chunk(self, x: np.ndarray) -> np.ndarray:
        n, f, h, w, _ = x.shape
        bright = x.max(-1)                                            # [n, f, h, w]
        bg = np.median(bright.reshape(n, f, -1), axis=-1)             # [n, f]
        bg_rgb = np.median(x.reshape(n, f, -1, 3), axis=2)            # [n, f, 3]
        peak = bright.max(axis=(2, 3))
        visible = peak - bg >= _MIN_CONTRAST                          # [n, f]
        level = bg + 0.5 * (peak - bg)
        ball = (bright > level[..., None, None]) & visible[..., None, None]
        wgt = ball.astype(np.float32)
        area = wgt.sum(axis=(2, 3))                                   # [n, f]
        has = area > 0
        norm = np.maximum(area, 1.0)
        colour = (x * wgt[..., None]).sum(axis=(2, 3)) / norm[..., None]   # [n, f, 3]
        lift = np.where(has[..., None], colour - bg_rgb, 0.0)
        chroma = lift / np.maximum(lift.max(-1, keepdims=True), 1e-3)
        # soft circular hue histogram of the ball pixels
        hue, sat = _hue(x)
        hw = sat * wgt                                                 # [n, f, h, w]
        hist = np.zeros((n, _HUE_BINS))
        for j in range(_HUE_BINS):  # triangular kernels on the hue circle, one bin at a time
            dist = np.abs(hue - j / _HUE_BINS)
            dist = np.minimum(dist, 1.0 - dist) * _HUE_BINS
            hist[:, j] = (np.clip(1.0 - dist, 0.0, None) * hw).sum(axis=(1, 2, 3))
        hist = hist / np.maximum(hist.sum(-1, keepdims=True), 1e-6)
        # background noise (non-ball pixels) and neighbour differences
        resid = (x - bg_rgb[:, :, None, None, :]) * (1.0 - wgt[..., None])
        cnt = np.maximum((1.0 - wgt).sum(axis=(1, 2, 3)) * 3.0, 1.0)
        noise = np.sqrt((resid ** 2).sum(axis=(1, 2, 3, 4)) / cnt)
        hdiff = np.abs(np.diff(x, axis=3)).mean(axis=(1, 2, 3, 4)) if w > 1 else np.zeros(n)
        # ball position, as a fraction of the frame (pixel centres)
        rows = (np.arange(h, dtype=np.float32) + 0.5) / h
        cols = (np.arange(w, dtype=np.float32) + 0.5) / w
        cy = np.where(has, (wgt * rows[:, None]).sum(axis=(2, 3)) / norm, np.nan)
        cx = np.where(has, (wgt * cols[None, :]).sum(axis=(2, 3)) / norm, np.nan)
        pos = np.stack([self._position(cy[i], cx[i]) for i in range(n)])
        # frame-difference energy
        if f > 1:
            rms = np.sqrt(((x[:, 1:] - x[:, :-1]) ** 2).mean(axis=(2, 3, 4)))
            motion = np.stack([_log(rms.mean(1)), rms.std(1) / np.maximum(rms.mean(1), _EPS)],
                              axis=1)
        else:
            motion = np.zeros((n, 2))
        hasf = has.astype(np.float64)
        nvis = np.maximum(hasf.sum(1), 1.0)
        mean_colour = (colour * hasf[..., None]).sum(1) / nvis[:, None]
        std_colour = np.sqrt((((colour - mean_colour[:, None]) ** 2) * hasf[..., None]).sum(1)
                             / nvis[:, None])
        mean_chroma = (chroma * hasf[..., None]).sum(1) / nvis[:, None]
        frac = area / (h * w)
        feats = [mean_colour, std_colour, mean_chroma, hist,
                 np.stack([frac.mean(1), frac.std(1), hasf.mean(1)], axis=1),
                 bg_rgb.mean(1), _log(np.stack([noise, hdiff], axis=1)), pos, motion]
        return np.concatenate([np.asarray(v, dtype=np.float64) for v in feats], axis=1)

    @staticmethod
    def _position(cy: np.ndarray, cx: np.ndarray) -> np.ndarray:
        """Centroid statistics of one clip, frames without a ball left out (0.5 if none)."""
        ok = np.isfinite(cy)
        if not ok.any():
            return np.array([0.5, 0.0, 0.5, 0.5, 0.5, 0.0, _log(0.0), _log(0.0), 0.0])
        y, xx = cy[ok], cx[ok]
        dy = np.abs(np.diff(y)).mean() if len(y) > 1 else 0.0
        dx = np.abs(np.diff(xx)).mean() if len(xx) > 1 else 0.0
        yf = np.where(ok, cy, -np.inf)  # a frame without a ball is never a contact
        contacts = 0
        for j in range(len(cy)):
            if not ok[j]:
                continue
            left = yf[j - 1] if j > 0 else -np.inf
            right = yf[j + 1] if j + 1 < len(cy) else -np.inf
            contacts += int(yf[j] > left and yf[j] >= right and (j > 0 or j + 1 < len(cy)))
        return np.array([y.mean(), y.std(), y.max(), y.min(), xx.mean(), xx.std(), _log(dy),
                         _log(dx), contacts / len(cy)])


# --------------------------------------------------------------------------- real data
class TorchScriptExtractor:
    """Features from a network the user exported to TorchScript (``torch.jit.save``).

    Only TorchScript archives are loaded (``torch.jit.load(path, map_location='cpu')``): no
    pickled Python objects, so no arbitrary code beyond the TorchScript graph. Export e.g.
    VGGish, PANNs or CLAP (audio) or I3D (video) with ``torch.jit.script`` or ``trace``.

    Expected module input, one batch at a time (``batch_size`` clips per forward call):

    - ``modality='audio'``: float32 waveform ``[N, samples]`` in [-1, 1] at the rate the
      module was trained for (``sample_rate``; taken from a ``sample_rate`` attribute of the
      module when not given). Call with ``sample_rate=`` to have clips at another rate
      resampled (``torchaudio.functional.resample``) first.
    - ``modality='video'``: float32 ``[N, F, 3, H, W]`` in [0, 1]. uint8 clips in the project
      layout ``[N, F, H, W, 3]`` (and float ``[N, F, H, W, 3]``) are converted to it.

    Output: ``[N, dim]`` (anything else raises, naming the path). ``dim`` is given, or read
    from an int ``dim`` attribute of the module, or fixed by the first call.
    """

    def __init__(self, path: str | Path, modality: str, dim: int | None = None, *,
                 batch_size: int = 64, sample_rate: int | None = None, device: str = "cpu"):
        if modality not in ("audio", "video"):
            raise ValueError(f"modality must be 'audio' or 'video', got {modality!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"feature extractor {self.path}: no such file"
                                    + (" (it is a folder)" if self.path.is_dir() else ""))
        try:
            module = torch.jit.load(str(self.path), map_location="cpu")
        except Exception as err:  # torch raises RuntimeError and others for non-archives
            first = str(err).split(". ")[0].splitlines()[0] if str(err) else ""
            raise ValueError(f"feature extractor {self.path} is not a TorchScript archive "
                             f"(a torch.save checkpoint or state dict is not enough: export "
                             f"the network with torch.jit.script or torch.jit.trace, then "
                             f"torch.jit.save): {type(err).__name__}: {first}") from err
        self.module = module.to(device).eval()
        self.device = device
        self.modality = modality
        self.batch_size = int(batch_size)
        attr = getattr(module, "dim", None)
        self.dim = int(dim) if dim is not None else (int(attr) if isinstance(attr, int) else None)
        rate = getattr(module, "sample_rate", None)
        self.sample_rate = sample_rate if sample_rate is not None else (
            int(rate) if isinstance(rate, int) else None)

    def _prepare(self, batch, sample_rate: int | None):
        x = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(np.asarray(batch))
        if self.modality == "audio":
            if x.ndim != 2:
                raise ValueError(f"feature extractor {self.path}: audio must be a waveform "
                                 f"[N, samples], got shape {tuple(x.shape)}")
            x = x.float()
            if sample_rate is not None and self.sample_rate is not None \
                    and sample_rate != self.sample_rate:
                x = torchaudio.functional.resample(x, sample_rate, self.sample_rate)
            return x
        if x.ndim != 5:
            raise ValueError(f"feature extractor {self.path}: video must be [N, F, 3, H, W] "
                             f"float in [0, 1] or uint8 [N, F, H, W, 3], got shape "
                             f"{tuple(x.shape)}")
        if x.dtype == torch.uint8:
            if x.shape[-1] != 3:
                raise ValueError(f"feature extractor {self.path}: uint8 video must be "
                                 f"[N, F, H, W, 3], got shape {tuple(x.shape)}")
            return x.permute(0, 1, 4, 2, 3).float() / 255.0
        x = x.float()
        if x.shape[2] != 3 and x.shape[-1] == 3:
            x = x.permute(0, 1, 4, 2, 3)
        if x.shape[2] != 3:
            raise ValueError(f"feature extractor {self.path}: video must be [N, F, 3, H, W], "
                             f"got shape {tuple(x.shape)}")
        return x

    def __call__(self, batch, sample_rate: int | None = None) -> np.ndarray:
        x = self._prepare(batch, sample_rate)
        outs = []
        with torch.inference_mode():
            for start in range(0, len(x), self.batch_size):
                part = x[start:start + self.batch_size]
                y = self.module(part.to(self.device))
                if not isinstance(y, torch.Tensor) or y.ndim != 2 or len(y) != len(part):
                    shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
                    raise ValueError(f"feature extractor {self.path} returned {shape} for a "
                                     f"batch of {len(part)}; it must return [N, dim]")
                if self.dim is None:
                    self.dim = int(y.shape[1])
                if y.shape[1] != self.dim:
                    raise ValueError(f"feature extractor {self.path} returned {y.shape[1]} "
                                     f"features per clip; expected dim = {self.dim}")
                outs.append(y.detach().double().cpu().numpy())
        return np.concatenate(outs) if outs else np.zeros((0, self.dim or 0))


__all__ = ["FeatureExtractor", "FrechetBiasWarning", "TorchScriptExtractor",
           "WorldAudioFeatures", "WorldVideoFeatures", "frechet_distance", "frechet_report",
           "trace_sqrt_product"]
