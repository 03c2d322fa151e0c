"""Write and probe audio-video media files with PyAV.

Sync matters more than anything here: every audio frame is given explicit pts (in samples,
time base 1/sample_rate), so the AAC encoder's priming delay lands on negative timestamps and
the mp4 muxer writes an edit list. Readers that honour it (decord, ffmpeg) then return the
first written sample at t = 0. Without explicit pts the audio comes back 1,024 samples late.
"""
from __future__ import annotations

import os
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from einops import rearrange

_AUDIO_CHUNK = 1024  # samples per frame handed to the encoder (AAC's frame size)


class MediaError(RuntimeError):
    """A media file cannot be written or opened; the message names the file."""


# --------------------------------------------------------------------------- checks
def _check_video(path: Path, video: np.ndarray, fps: float, pix_fmt: str) -> None:
    """Raise a clear error for a video array that cannot be encoded."""
    if not isinstance(video, np.ndarray) or video.dtype != np.uint8:
        raise MediaError(f"{path}: video must be a uint8 numpy array [F, H, W, 3], "
                         f"got {getattr(video, 'dtype', type(video).__name__)}")
    if video.ndim != 4 or video.shape[-1] != 3 or min(video.shape[:3]) < 1:
        raise MediaError(f"{path}: video must have shape [F, H, W, 3] (RGB), got "
                         f"{tuple(video.shape)}")
    if not fps > 0:
        raise MediaError(f"{path}: fps must be > 0, got {fps}")
    _, h, w, _ = video.shape
    if pix_fmt in ("yuv420p", "yuvj420p", "nv12") and (h % 2 or w % 2):
        raise MediaError(f"{path}: {pix_fmt} needs an even height and width, got {h}×{w}; "
                         f"crop or pad the frames, or pass pix_fmt='yuv444p'")


def _as_channels(path: Path, audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Return float32 audio as [C, L], raising a clear error for bad input."""
    if not isinstance(audio, np.ndarray) or audio.dtype != np.float32:
        raise MediaError(f"{path}: audio must be a float32 numpy array [L] or [C, L], "
                         f"got {getattr(audio, 'dtype', type(audio).__name__)}")
    if audio.ndim == 1:
        audio = rearrange(audio, "l -> 1 l")
    if audio.ndim != 2 or audio.shape[0] not in (1, 2) or audio.shape[1] < 1:
        raise MediaError(f"{path}: audio must have shape [L] (mono) or [C, L] with C = 1 or 2, "
                         f"got {tuple(audio.shape)}")
    if not np.isfinite(audio).all():
        raise MediaError(f"{path}: audio holds NaN or infinite values")
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise MediaError(f"{path}: sample_rate must be a positive whole number, got {sample_rate}")
    return np.ascontiguousarray(np.clip(audio, -1.0, 1.0))


# --------------------------------------------------------------------------- writing
def _encode_video(out: Any, stream: Any, video: np.ndarray) -> None:
    """Encode RGB frames with pts = frame index (time base 1/fps)."""
    time_base = 1 / stream.codec_context.framerate
    for i, image in enumerate(video):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.pts = i
        frame.time_base = time_base  # explicit, so that pts counts frames
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


def _encode_audio(out: Any, stream: Any, audio: np.ndarray, sample_rate: int) -> None:
    """Encode [C, L] float audio with explicit pts in samples, so the edit list is written."""
    layout = "mono" if audio.shape[0] == 1 else "stereo"
    for start in range(0, audio.shape[1], _AUDIO_CHUNK):
        chunk = np.ascontiguousarray(audio[:, start:start + _AUDIO_CHUNK])
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
        frame.sample_rate = sample_rate
        frame.pts = start
        frame.time_base = Fraction(1, sample_rate)
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


def _default_video_options(video_codec: str, crf: int) -> dict[str, str]:
    """Encoder options that keep quality fixed and the output byte-for-byte reproducible."""
    if video_codec == "libx264":
        # mbtree=0: with macroblock-tree rate control this libx264 build (AVX-512 code paths)
        # gave different bytes from run to run for the same frames, even single-threaded.
        return {"crf": str(crf), "x264-params": "mbtree=0"}
    if video_codec == "libx265":
        return {"crf": str(crf)}
    return {}


def _open_streams(out: Any, video: np.ndarray | None, fps: float, audio: np.ndarray | None,
                  sample_rate: int, video_codec: str, audio_codec: str, pix_fmt: str,
                  crf: int, video_options: dict | None,
                  audio_options: dict | None) -> tuple[Any, Any]:
    """Add the video and audio streams that the arrays call for."""
    vstream = astream = None
    if video is not None:
        vstream = out.add_stream(video_codec, rate=Fraction(fps).limit_denominator(100_000))
        vstream.height, vstream.width = video.shape[1:3]
        vstream.pix_fmt = pix_fmt
        vstream.codec_context.thread_count = 1  # output must not depend on the core count
        vstream.options = {**_default_video_options(video_codec, crf), **(video_options or {})}
    if audio is not None:
        astream = out.add_stream(audio_codec, rate=sample_rate)
        astream.layout = "mono" if audio.shape[0] == 1 else "stereo"
        astream.options = dict(audio_options or {})
    return vstream, astream


def write_av(path: str | Path, video: np.ndarray | None, fps: float, audio: np.ndarray | None,
             sample_rate: int, *, video_codec: str = "libx264", audio_codec: str = "aac",
             pix_fmt: str = "yuv420p", crf: int = 18, container: str | None = None,
             video_options: dict[str, str] | None = None,
             audio_options: dict[str, str] | None = None) -> None:
    """Atomically write RGB video uint8 [F, H, W, 3] and audio float32 [L] or [C, L] to ``path``.

    Either stream may be None (not both). ``container`` is an FFmpeg format name (default:
    guessed from the extension); ``*_options`` are FFmpeg encoder options, e.g.
    ``{"preset": "veryfast"}`` for libx264 or ``{"aac_coder": "fast"}`` for aac.
    """
    path = Path(path)
    if video is None and audio is None:
        raise MediaError(f"{path}: nothing to write; give video, audio or both")
    if video is not None:
        _check_video(path, video, fps, pix_fmt)
    if audio is not None:
        audio = _as_channels(path, audio, sample_rate)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with av.open(str(tmp), mode="w", format=container) as out:
            vstream, astream = _open_streams(out, video, fps, audio, sample_rate, video_codec,
                                             audio_codec, pix_fmt, crf, video_options,
                                             audio_options)
            if vstream is not None:
                _encode_video(out, vstream, video)
            if astream is not None:
                _encode_audio(out, astream, audio, int(sample_rate))
        os.replace(tmp, path)
    except (av.FFmpegError, ValueError) as e:  # ValueError: unknown codec or container name
        raise MediaError(f"{path}: FFmpeg could not write the file ({e}); check the codec "
                         f"names ({video_codec}, {audio_codec}) and the container "
                         f"({container or 'guessed from ' + repr(path.suffix)})") from e
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- probing
def _seconds(value: int | None, time_base: Fraction | None) -> float | None:
    """Convert a stream timestamp to seconds (None when unknown)."""
    if value is None or time_base is None:
        return None
    return float(value * time_base)


def describe_video(stream: Any, container_s: float | None) -> dict:
    """Describe a video stream: rate, frame count, size, start, duration and codec."""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    duration = _seconds(stream.duration, stream.time_base) or container_s
    return {"fps": float(rate) if rate else None,
            "frames": int(stream.frames) or None,
            "width": stream.codec_context.width,
            "height": stream.codec_context.height,
            "start_time_s": _seconds(stream.start_time, stream.time_base) or 0.0,
            "duration_s": duration,
            "codec": stream.codec_context.name}


def describe_audio(stream: Any, container_s: float | None) -> dict:
    """Describe an audio stream: rate, channels, start, duration and codec."""
    duration = _seconds(stream.duration, stream.time_base) or container_s
    return {"sample_rate": stream.codec_context.sample_rate,
            "channels": stream.codec_context.channels,
            "start_time_s": _seconds(stream.start_time, stream.time_base) or 0.0,
            "duration_s": duration,
            "codec": stream.codec_context.name}


def probe(path: str | Path) -> dict:
    """Describe the first video and audio streams of a media file (None for a missing one)."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: no such file")
    try:
        with av.open(str(path)) as src:
            container_s = src.duration / av.time_base if src.duration else None
            video = describe_video(src.streams.video[0], container_s) if src.streams.video else None
            audio = describe_audio(src.streams.audio[0], container_s) if src.streams.audio else None
    except av.FFmpegError as e:
        raise MediaError(f"{path}: cannot open as a media container ({e}); the file is "
                         f"damaged or not audio/video") from e
    return {"has_video": video is not None, "has_audio": audio is not None,
            "video": video, "audio": audio}
