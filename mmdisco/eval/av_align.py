"""AV-Align: how well the peaks of motion in a video line up with the onsets in its sound.

AV-Align (Yariv et al., AAAI 2024) is the intersection over union of the audio onsets and the
video peaks (local maxima of optical-flow magnitude), an onset matching a peak less than a
frame away. ``method="reference"`` (the default) follows the authors' published code (their
TempoTokens ``av_align.py``) step by step, so that scores compare with published ones; the
fixture in tests/fixtures/av_align holds that code's scores. ``method="flux"`` is a variant
with its own spectral-flux onset detector, kept because it does not depend on librosa's frame
grid. docs/evaluation.md restates both methods and what was measured on them.

``av_align`` scores arrays, ``av_align_file`` a media file (video decoded one frame at a time,
only two frames held), ``av_align_files`` a list of files with their mean (and a shuffled
chance level); ``mmdisco av-align FILE...`` prints the scores.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import av
import click
import cv2
import numpy as np
from scipy.signal import find_peaks

from mmdisco.eval.metrics import shuffle_pairs

METHODS = ("reference", "flux")
# Farneback parameters of the published metric (OpenCV's calcOpticalFlowFarneback).
FARNEBACK = {"pyr_scale": 0.5, "levels": 3, "winsize": 15, "iterations": 3, "poly_n": 5,
             "poly_sigma": 1.2, "flags": 0}
REFERENCE_SAMPLE_RATE = 22050  # librosa.load's default rate, at which the reference finds onsets
REFERENCE_HOP = 512            # librosa's default onset hop (samples at 22.05 kHz: 23 ms)
MIN_FLOW_PEAK = 0.1            # the reference ignores motion peaks below this (pixels/frame)
_GREY = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 luma weights (RGB order)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown AV-Align method {method!r}; known: {', '.join(METHODS)}")


# --------------------------------------------------------------------------- video
def _to_uint8(frame: np.ndarray, is_uint8: bool, value_range: tuple[float, float]) -> np.ndarray:
    """One frame (RGB or grey) as uint8, float values scaled from ``value_range``."""
    if is_uint8:
        return frame
    lo, hi = value_range
    return np.clip(np.round((frame.astype(np.float64) - lo) * (255.0 / (hi - lo))), 0, 255
                   ).astype(np.uint8)


def _grey_frames(frames: np.ndarray, value_range: tuple[float, float], method: str = "flux"
                 ) -> Iterator[np.ndarray]:
    """Grey uint8 frames [H, W], one at a time, from RGB [F, H, W, 3] or grey [F, H, W].

    ``method="reference"`` converts with OpenCV (``cvtColor``, fixed-point BT.601, as the
    reference does on the frames OpenCV decodes); ``"flux"`` with float BT.601 weights.
    """
    x = np.asarray(frames)
    if not (x.ndim == 4 and x.shape[-1] == 3) and x.ndim != 3:
        raise ValueError(f"frames must have shape [F, H, W, 3] (RGB) or [F, H, W] (grey), "
                         f"got {tuple(x.shape)}")
    if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"frames must be uint8 or float, got {x.dtype}")
    lo, hi = value_range
    if not hi > lo:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
    is_uint8 = x.dtype == np.uint8
    if method == "reference":
        for frame in x:
            image = np.ascontiguousarray(_to_uint8(frame, is_uint8, value_range))
            yield cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
        return
    for frame in x:
        grey = frame.astype(np.float64) @ _GREY if frame.ndim == 3 else frame.astype(np.float64)
        if not is_uint8:
            grey = (grey - lo) * (255.0 / (hi - lo))
        yield np.clip(np.round(grey), 0, 255).astype(np.uint8)


def _motion_of(greys: Iterable[np.ndarray], farneback: dict | None) -> tuple[np.ndarray, int]:
    """Mean Farneback flow magnitude of each transition of a stream of grey uint8 frames, and
    the number of frames (only two frames are held at a time)."""
    p = {**FARNEBACK, **(farneback or {})}
    unknown = set(p) - set(FARNEBACK)
    if unknown:
        raise ValueError(f"unknown Farneback parameters {sorted(unknown)}; known: "
                         f"{sorted(FARNEBACK)}")
    motion: list[float] = []
    prev, count = None, 0
    for grey in greys:
        if prev is not None:
            if grey.shape != prev.shape:
                raise ValueError(f"frame {count} is {grey.shape[1]}x{grey.shape[0]}, the one "
                                 f"before {prev.shape[1]}x{prev.shape[0]}")
            flow = cv2.calcOpticalFlowFarneback(prev, grey, None, p["pyr_scale"], p["levels"],
                                                p["winsize"], p["iterations"], p["poly_n"],
                                                p["poly_sigma"], p["flags"])
            # float32 magnitudes averaged in double, as the reference does
            motion.append(float(cv2.mean(cv2.magnitude(flow[..., 0], flow[..., 1]))[0]))
        prev, count = grey, count + 1
    return np.asarray(motion, dtype=np.float64), count


def video_motion(frames: np.ndarray, *, method: str = "reference",
                 value_range: tuple[float, float] = (0.0, 1.0), farneback: dict | None = None
                 ) -> np.ndarray:
    """Mean Farneback flow magnitude of each frame transition, float64 [F - 1] (pixels/frame).

    ``frames``: RGB [F, H, W, 3] or grey [F, H, W]; uint8 as is, float scaled from
    ``value_range`` (default [0, 1]; pass (-1, 1) for frames scaled to [-1, 1]). ``method``
    picks the grey conversion (see ``_grey_frames``). ``farneback`` overrides entries of
    ``FARNEBACK``. Element i is the motion from frame i to i+1.
    """
    _check_method(method)
    return _motion_of(_grey_frames(frames, value_range, method), farneback)[0]


def video_peaks(motion: Sequence[float], *, method: str = "reference") -> np.ndarray:
    """Frames where motion peaks, int64 [P]: transition i (frame i -> i+1) is reported at i + 1.

    The first and last transitions are never peaks. ``"reference"``: a peak is strictly above
    both neighbouring transitions and at least ``MIN_FLOW_PEAK``; a flat top never peaks.
    ``"flux"``: strictly above both neighbours at any level; a flat top counts once, at its
    (left-)middle, as in ``scipy.signal.find_peaks``.
    """
    _check_method(method)
    x = np.asarray(motion, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"motion must be a 1-D curve, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("motion holds NaN or infinite values")
    if method == "flux":
        peaks, _ = find_peaks(x)
    else:
        mid = x[1:-1]
        peaks = np.flatnonzero((x[:-2] < mid) & (mid > x[2:]) & (mid >= MIN_FLOW_PEAK)) + 1
    return (peaks + 1).astype(np.int64)


# --------------------------------------------------------------------------- audio
def _mel_filters(n_fft: int, sample_rate: int, n_mels: int) -> np.ndarray:
    """Triangular mel filters [M, n_fft // 2 + 1] on the HTK mel scale, empty bands dropped."""
    def mel(hz):
        return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)

    def hz(m):
        return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)

    bins = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    edges = hz(np.linspace(0.0, mel(sample_rate / 2.0), n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rise = (bins[None] - lo) / np.maximum(mid - lo, 1e-12)
    fall = (hi - bins[None]) / np.maximum(hi - mid, 1e-12)
    filters = np.clip(np.minimum(rise, fall), 0.0, None)
    return filters[filters.sum(axis=1) > 0]


def _check_wave(wave: np.ndarray, sample_rate: float) -> np.ndarray:
    """A wave [L] or [C, L] checked for shape, finite values and rate, as float64."""
    x = np.asarray(wave, dtype=np.float64)
    if x.ndim not in (1, 2):
        raise ValueError(f"wave must have shape [L] or [C, L], got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("wave holds NaN or infinite values")
    if not sample_rate > 0:
        raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
    return x


def onset_strength(wave: np.ndarray, sample_rate: int, *, window_s: float = 0.032,
                   hop_s: float = 0.008, n_mels: int = 40, compression: float = 30.0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The variant's spectral-flux onset strength [T] of a mono (or [C, L], averaged) wave, and
    its times (s).

    See docs/evaluation.md; an input shorter than a window and a hop gives empty arrays.
    """
    x = _check_wave(wave, sample_rate)
    if x.ndim == 2:
        x = x.mean(axis=0)
    n_fft = max(16, round(window_s * sample_rate))
    hop = max(1, round(hop_s * sample_rate))
    if len(x) < n_fft + hop:
        return np.zeros(0), np.zeros(0)
    peak = np.abs(x).max()
    x = x / peak if peak > 0 else x
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    magnitude = np.abs(np.fft.rfft(frames * window, axis=1)) * (2.0 / window.sum())
    bands = magnitude @ _mel_filters(n_fft, sample_rate, n_mels).T            # [T, M]
    level = np.log1p(compression * bands)
    flux = np.maximum(np.diff(level, axis=0), 0.0).mean(axis=1)               # frames 1..T-1
    times = (np.arange(1, len(level)) * hop + 0.75 * n_fft) / sample_rate
    return flux, times


def pick_onsets(strength: np.ndarray, frame_rate: float, *, pre_max_s: float = 0.03,
                pre_avg_s: float = 0.10, post_avg_s: float = 0.10, wait_s: float = 0.03,
                delta: float = 0.07) -> np.ndarray:
    """Indices of onsets in an onset-strength curve sampled at ``frame_rate`` (librosa's rule)."""
    x = np.asarray(strength, dtype=np.float64)
    if x.size == 0 or not x.max() > x.min():
        return np.zeros(0, dtype=np.int64)
    x = (x - x.min()) / (x.max() - x.min())
    pre_max, pre_avg = round(pre_max_s * frame_rate), round(pre_avg_s * frame_rate)
    post_avg, wait = round(post_avg_s * frame_rate), round(wait_s * frame_rate)
    cumsum = np.concatenate([[0.0], np.cumsum(x)])
    onsets: list[int] = []
    for n in range(len(x)):
        if x[n] < x[max(0, n - pre_max):n + 1].max():
            continue
        a, b = max(0, n - pre_avg), min(len(x), n + post_avg + 1)
        if x[n] < (cumsum[b] - cumsum[a]) / (b - a) + delta:
            continue
        if onsets and n - onsets[-1] <= wait:
            continue
        onsets.append(n)
    return np.asarray(onsets, dtype=np.int64)


def reference_onset_times(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """The reference's onset times in seconds, float64 [N], in time order.

    The wave (float32 [L], or [C, L] mixed to mono by its channel mean) is resampled to
    22.05 kHz as ``librosa.load`` does (soxr, high quality), then ``librosa.onset``'s
    ``onset_strength`` and ``onset_detect`` run at their defaults; times are onset frames × 512
    / 22050.
    """
    import librosa  # imported here: its onset module takes a second or more to import

    y = _check_wave(wave, sample_rate).astype(np.float32)
    if y.shape[-1] == 0:
        return np.zeros(0)
    y = librosa.to_mono(y)
    y = librosa.resample(y, orig_sr=sample_rate, target_sr=REFERENCE_SAMPLE_RATE)
    envelope = librosa.onset.onset_strength(y=y, sr=REFERENCE_SAMPLE_RATE)
    frames = librosa.onset.onset_detect(onset_envelope=envelope, sr=REFERENCE_SAMPLE_RATE)
    return np.asarray(librosa.frames_to_time(frames, sr=REFERENCE_SAMPLE_RATE,
                                             hop_length=REFERENCE_HOP), dtype=np.float64)


def onset_times(wave: np.ndarray, sample_rate: int, *, method: str = "reference", **kwargs
                ) -> np.ndarray:
    """Onset times in seconds, float64 [N], in time order.

    ``"reference"``: ``reference_onset_times`` (no options). ``"flux"``: ``onset_strength``
    then ``pick_onsets``; ``kwargs`` go to them (window_s, hop_s, n_mels, compression;
    pre_max_s, pre_avg_s, post_avg_s, wait_s, delta).
    """
    _check_method(method)
    if method == "reference":
        if kwargs:
            raise ValueError(f"the reference onset detector takes no options, got "
                             f"{sorted(kwargs)}")
        return reference_onset_times(wave, sample_rate)
    strength_keys = ("window_s", "hop_s", "n_mels", "compression")
    strength, times = onset_strength(wave, sample_rate,
                                     **{k: kwargs.pop(k) for k in strength_keys if k in kwargs})
    if times.size < 2:
        return np.zeros(0)
    frame_rate = 1.0 / (times[1] - times[0])
    return times[pick_onsets(strength, frame_rate, **kwargs)]


def audio_onsets(wave: np.ndarray, sample_rate: int, fps: float, *, method: str = "reference",
                 num_frames: int | None = None, **kwargs) -> np.ndarray:
    """Audio onsets as video frame indices round(t × fps), int64 [N], in time order.

    ``num_frames`` drops onsets past the last video frame; ``method`` and ``kwargs`` go to
    ``onset_times``.
    """
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    frames = np.round(onset_times(wave, sample_rate, method=method, **kwargs) * fps
                      ).astype(np.int64)
    if num_frames is not None:
        frames = frames[frames < num_frames]
    return frames


# --------------------------------------------------------------------------- score
def _iou(matches: int, num_audio: int, num_video: int, empty_score: float) -> dict:
    both_empty = not num_audio and not num_video
    score = float(empty_score) if both_empty else matches / (num_audio + num_video - matches)
    return {"score": score, "matches": int(matches), "audio_peaks": int(num_audio),
            "video_peaks": int(num_video), "both_empty": both_empty}


def av_align_score(audio_peaks: Sequence[int], video_peaks: Sequence[int], tolerance: int = 1,
                   reuse_video_peaks: bool = False, empty_score: float = 1.0) -> dict:
    """AV-Align of two lists of frame indices (the variant's matching): {score, matches,
    audio_peaks, video_peaks, both_empty}, where the peak entries are counts.

    An audio peak matches a video peak at most ``tolerance`` frames away; each video peak is
    matched at most once unless ``reuse_video_peaks``. See docs/evaluation.md.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    a = sorted(int(f) for f in audio_peaks)
    v = sorted(int(f) for f in video_peaks)
    if reuse_video_peaks:
        vv = np.asarray(v, dtype=np.int64)
        matches = sum(bool(vv.size) and bool((np.abs(vv - f) <= tolerance).any()) for f in a)
    else:
        i = j = matches = 0
        while i < len(a) and j < len(v):
            if v[j] < a[i] - tolerance:    # too early for this and every later audio peak
                j += 1
            elif v[j] > a[i] + tolerance:  # no video peak left near this audio peak
                i += 1
            else:
                matches, i, j = matches + 1, i + 1, j + 1
    return _iou(matches, len(a), len(v), empty_score)


def av_align_times(audio_times: Sequence[float], video_times: Sequence[float], fps: float, *,
                   tolerance: float = 1.0, reuse_video_peaks: bool = False,
                   empty_score: float = 1.0) -> dict:
    """AV-Align of peak times in seconds (the reference's matching): ``av_align_score``'s dict.

    Audio peaks in time order each take the earliest unused video peak v with
    v - w < t < v + w, w = ``tolerance`` / ``fps`` (strict; the reference's w is 1 / fps);
    this greedy matching is a maximum one. With ``reuse_video_peaks`` an audio peak matches
    when any video peak is that near.
    """
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    a = sorted(float(t) for t in audio_times)
    v = sorted(float(t) for t in video_times)
    w = tolerance / fps
    used = [False] * len(v)
    matches = 0
    for t in a:
        for j, peak in enumerate(v):
            if (reuse_video_peaks or not used[j]) and peak - w < t < peak + w:
                matches, used[j] = matches + 1, True
                break
    return _iou(matches, len(a), len(v), empty_score)


def _result(motion: np.ndarray, num_frames: int, wave: np.ndarray, sample_rate: int,
            fps: float, method: str, tolerance: int, reuse_video_peaks: bool,
            empty_score: float) -> dict:
    """The score dict of a motion curve and a wave, with the peaks as frames and times."""
    v = video_peaks(motion, method=method)
    v_times = v / fps  # frame index / fps, as the reference dates a flow peak
    a_times = onset_times(wave, sample_rate, method=method)
    a = np.round(a_times * fps).astype(np.int64)
    if method == "reference":
        out = av_align_times(a_times, v_times, fps, tolerance=tolerance,
                             reuse_video_peaks=reuse_video_peaks, empty_score=empty_score)
    else:
        keep = a < num_frames
        a_times, a = a_times[keep], a[keep]
        out = av_align_score(a, v, tolerance, reuse_video_peaks, empty_score)
    return {**out, "audio_frames": [int(f) for f in a], "video_frames": [int(f) for f in v],
            "audio_times": [float(t) for t in a_times],
            "video_times": [float(t) for t in v_times],
            "fps": float(fps), "num_frames": int(num_frames), "method": method}


def av_align(frames: np.ndarray, wave: np.ndarray, sample_rate: int, fps: float, *,
             method: str = "reference", tolerance: int = 1, reuse_video_peaks: bool = False,
             empty_score: float = 1.0, value_range: tuple[float, float] = (0.0, 1.0),
             farneback: dict | None = None) -> dict:
    """AV-Align of frames [F, H, W, 3] (RGB) at ``fps`` and the wave whose sample 0 is at
    frame 0.

    Returns ``av_align_score``'s dict plus the peaks as frames (``audio_frames``,
    ``video_frames``) and seconds (``audio_times``, ``video_times``), ``fps``, ``num_frames``
    and ``method``. Audio frames are round(t x fps); the reference keeps onsets past the last
    video frame, the variant drops them.
    """
    _check_method(method)
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    motion = video_motion(frames, method=method, value_range=value_range, farneback=farneback)
    return _result(motion, len(frames), wave, sample_rate, fps, method, tolerance,
                   reuse_video_peaks, empty_score)


# --------------------------------------------------------------------------- files
class AVAlignError(RuntimeError):
    """A file cannot be scored; the message names the file."""


def _check_streams(path: Path) -> None:
    """Raise AVAlignError unless ``path`` is a file with a video and an audio stream."""
    if not path.exists():
        raise AVAlignError(f"{path}: no such file")
    if not path.is_file():
        raise AVAlignError(f"{path}: not a regular file")
    with av.open(str(path)) as src:
        if not src.streams.video:
            raise AVAlignError(f"{path}: no video stream")
        if not src.streams.audio:
            raise AVAlignError(f"{path}: no audio stream")


def _file_motion(path: Path, farneback: dict | None) -> tuple[np.ndarray, int, float, float]:
    """Motion curve, frame count, frame rate and first frame time of a file's first video
    stream, decoded by PyAV one frame at a time at its native rate and size (the variant)."""
    with av.open(str(path)) as src:
        stream = src.streams.video[0]
        times: list[float] = []

        def greys():
            for frame in src.decode(stream):
                if frame.time is not None:
                    times.append(float(frame.time))
                yield next(_grey_frames(frame.to_ndarray(format="rgb24")[None], (0.0, 1.0),
                                         "flux"))

        motion, count = _motion_of(greys(), farneback)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if count < 1:
        raise AVAlignError(f"{path}: the video stream holds no frames")
    if rate:
        fps = float(rate)
    elif len(times) > 1:
        fps = 1.0 / float(np.median(np.diff(times)))
    else:
        raise AVAlignError(f"{path}: the video frame rate is unknown")
    return motion, count, fps, (min(times) if times else 0.0)


def _reference_file_motion(path: Path, farneback: dict | None) -> tuple[np.ndarray, int, float]:
    """Motion curve, frame count and frame rate of a file's video as the reference reads it:
    OpenCV decodes BGR frames (one at a time here) and reports the rate (CAP_PROP_FPS)."""
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise AVAlignError(f"{path}: OpenCV cannot open the video")
        fps = float(capture.get(cv2.CAP_PROP_FPS))

        def greys():
            while True:
                ok, frame = capture.read()
                if not ok:
                    return
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)

        motion, count = _motion_of(greys(), farneback)
    finally:
        capture.release()
    if count < 1:
        raise AVAlignError(f"{path}: the video stream holds no frames")
    if not fps > 0:
        raise AVAlignError(f"{path}: the video frame rate is unknown")
    return motion, count, fps


def _file_audio(path: Path, mono: bool = True) -> tuple[np.ndarray, int, float]:
    """Float32 audio of a file's first audio stream, [L] (``mono``: mixed by FFmpeg) or [C, L]
    (channels as decoded), its rate and its first sample time."""
    with av.open(str(path)) as src:
        stream = src.streams.audio[0]
        sample_rate = int(stream.codec_context.sample_rate)
        resampler = av.AudioResampler(format="fltp", layout="mono" if mono else None,
                                      rate=sample_rate)
        chunks, first = [], None
        for frame in src.decode(stream):
            if first is None and frame.time is not None:
                first = float(frame.time)
            chunks.extend(f.to_ndarray() for f in resampler.resample(frame))
        chunks.extend(f.to_ndarray() for f in resampler.resample(None))
    if not chunks:
        raise AVAlignError(f"{path}: the audio stream holds no samples")
    audio = np.concatenate(chunks, axis=1).astype(np.float32)
    return (audio[0] if mono else audio), sample_rate, first or 0.0


def av_align_file(path: str | Path, *, method: str = "reference", tolerance: int = 1,
                  reuse_video_peaks: bool = False, empty_score: float = 1.0,
                  farneback: dict | None = None) -> dict:
    """AV-Align of a media file with sound (any container FFmpeg opens): ``av_align``'s dict
    plus ``path``. Raises AVAlignError, naming the file, when it cannot be scored.

    ``"reference"``: video decoded by OpenCV at its native size, at the rate OpenCV reports;
    the first audio stream decoded by PyAV as it is (sample 0 at time 0, as a WAV extracted
    from the file holds it). ``"flux"``: video decoded by PyAV at its native rate and size;
    audio sample 0 placed at the first video frame's time (silence is prepended to audio that
    starts later, samples before it are dropped).
    """
    _check_method(method)
    path = Path(path)
    try:
        _check_streams(path)
        if method == "reference":
            motion, count, fps = _reference_file_motion(path, farneback)
            audio, sample_rate, _ = _file_audio(path, mono=False)
        else:
            motion, count, fps, video_start = _file_motion(path, farneback)
            audio, sample_rate, audio_start = _file_audio(path)
            offset = round((audio_start - video_start) * sample_rate)
            audio = (np.concatenate([np.zeros(offset, np.float32), audio]) if offset > 0
                     else audio[-offset:])
    except av.FFmpegError as e:
        raise AVAlignError(f"{path}: cannot decode as audio/video ({e})") from e
    out = _result(motion, count, audio, sample_rate, fps, method, tolerance, reuse_video_peaks,
                  empty_score)
    return {"path": str(path), **out}


def av_align_files(paths: Iterable[str | Path], *, method: str = "reference",
                   tolerance: int = 1, reuse_video_peaks: bool = False,
                   empty_score: float = 1.0, farneback: dict | None = None,
                   skip_errors: bool = False, shuffled_seed: int | None = None) -> dict:
    """AV-Align of each file and their mean: {method, mean, scores, files, errors}.

    ``files`` holds ``av_align_file``'s dict of each file scored and ``scores`` their scores,
    in the order given; ``mean`` is their mean (None when no file was scored). A file that
    cannot be scored raises AVAlignError, or with ``skip_errors`` is listed in ``errors`` as
    {path, error} and left out of the mean.

    ``shuffled_seed``: also score each file's sound against another file's video (a random
    derangement, ``mmdisco.eval.metrics.shuffle_pairs``, from the peaks already found: the
    same as scoring files remuxed so), as ``shuffled_scores`` and ``shuffled_mean``; a chance
    level to read ``mean`` against. Needs at least two files scored (else both are None).
    """
    _check_method(method)
    files: list[dict] = []
    errors: list[dict] = []
    for path in paths:
        try:
            files.append(av_align_file(path, method=method, tolerance=tolerance,
                                       reuse_video_peaks=reuse_video_peaks,
                                       empty_score=empty_score, farneback=farneback))
        except AVAlignError as e:
            if not skip_errors:
                raise
            errors.append({"path": str(path), "error": str(e)})
    scores = [r["score"] for r in files]
    out = {"method": method, "mean": float(np.mean(scores)) if scores else None,
           "scores": scores, "files": files, "errors": errors}
    if shuffled_seed is not None:
        shuffled = _shuffled_scores(files, shuffled_seed, method, tolerance, reuse_video_peaks,
                                    empty_score)
        out["shuffled_scores"] = shuffled
        out["shuffled_mean"] = float(np.mean(shuffled)) if shuffled else None
    return out


def _shuffled_scores(files: list[dict], seed: int, method: str, tolerance: int,
                     reuse_video_peaks: bool, empty_score: float) -> list[float]:
    """Score of file i's audio peaks against the video peaks of file perm[i] (at its rate)."""
    if len(files) < 2:
        return []
    scores = []
    for r, j in zip(files, shuffle_pairs(len(files), seed)):
        other = files[int(j)]
        if method == "reference":
            s = av_align_times(r["audio_times"], other["video_times"], other["fps"],
                               tolerance=tolerance, reuse_video_peaks=reuse_video_peaks,
                               empty_score=empty_score)
        else:
            audio = [f for f in r["audio_frames"] if f < other["num_frames"]]
            s = av_align_score(audio, other["video_frames"], tolerance, reuse_video_peaks,
                               empty_score)
        scores.append(s["score"])
    return scores


# --------------------------------------------------------------------------- command
@click.command("av-align")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="one JSON object per file")
@click.option("--method", type=click.Choice(METHODS), default="reference", show_default=True,
              help="reference: the published metric (librosa onsets, OpenCV video); flux: "
                   "the hand-written onset detector, frame-index matching")
@click.option("--reuse-video-peaks", is_flag=True,
              help="let one video peak match several audio peaks (some published copies)")
@click.option("--tolerance", type=click.IntRange(min=0), default=1, show_default=True,
              help="frames an audio peak may be from its video peak (reference: strictly less)")
def main(files: tuple[Path, ...], as_json: bool, method: str, reuse_video_peaks: bool,
         tolerance: int) -> None:
    """AV-Align of media files with sound: IoU of audio onsets and video motion peaks.

    Prints one line per file, then the mean when more than one file was scored (with --json:
    one object per file with path, method, score, audio_peaks, video_peaks, matches (counts),
    fps, num_frames, both_empty, and the peaks audio_frames, video_frames, audio_times and
    video_times). A file that cannot be scored is reported on stderr (with --json also as
    {"path", "error"} on stdout), the others are still scored, and the exit status is 1.
    """
    failed, scores = 0, []
    for path in files:
        try:
            r = av_align_file(path, method=method, tolerance=tolerance,
                              reuse_video_peaks=reuse_video_peaks)
        except (AVAlignError, ValueError, OSError) as e:
            failed += 1
            msg = str(e) if str(path) in str(e) else f"{path}: {e}"
            click.echo(f"av-align: error: {msg}", err=True)
            if as_json:
                click.echo(json.dumps({"path": str(path), "error": msg}))
            continue
        scores.append(r["score"])
        if as_json:
            keys = ("path", "method", "score", "audio_peaks", "video_peaks", "matches", "fps",
                    "num_frames", "both_empty", "audio_frames", "video_frames", "audio_times",
                    "video_times")
            click.echo(json.dumps({k: r[k] for k in keys}))
        else:
            click.echo(f"{r['path']}: AV-Align {r['score']:.3f} ({r['matches']} matches, "
                       f"{r['audio_peaks']} audio peaks, {r['video_peaks']} video peaks, "
                       f"{r['fps']:g} fps)")
    if not as_json and len(scores) > 1:
        click.echo(f"mean AV-Align over {len(scores)} files: {np.mean(scores):.3f} ({method})")
    if failed:
        raise click.exceptions.Exit(1)
