"""Cut fixed-length, synchronised audio-video clips from media files.

Reading (``read_media``)
  Video is decoded by decord at its native size, then centre-cropped to a square and resized
  with torch (decord's own resizing is broken for widths that are not a multiple of 32). Frame
  k of the result is the source frame on screen at video time k / fps, chosen from decord's
  frame timestamps, so any source frame rate is resampled without drift. Every decoded batch is
  checked (3 channels, the native size probed by PyAV); a file decord mangles or cannot open is
  decoded again with PyAV, frame by frame in order. decord is not used at all for containers
  without a frame index (MPEG-TS/PS, FLV, Ogg, ...): it seeks by timestamp and returns frames
  from the wrong time there. The display rotation (a display matrix, e.g. from phones) is
  applied: decord applies it itself, PyAV frames are turned with np.rot90.
  Audio is streamed through PyAV (decord is the fallback): mixed to mono and resampled to the
  clip rate frame by frame, so memory follows the clips, not the source; decoding stops where
  the clips stop. A packet that does not decode is skipped (its time stays silent); more than
  ``_MAX_BAD_PACKETS`` of them reject the file as "decode_error".
  Nothing is read past ``_horizon``: 1 s after the video ends (by its packets or its header,
  the earlier), so a damaged timestamp far ahead cannot make hours of output.

Sync: audio sample 0 is placed at video time 0 (the video stream's first frame).
  1. PyAV's decoders apply mp4/mov edit lists and the ``skip_samples`` of Matroska/WebM
     streams (AAC codec delay, Opus pre-skip); the first decoded frame's timestamp says where
     the audio starts. (The decord fallback applies edit lists but not ``skip_samples``: those
     samples are dropped here, read from PyAV's demuxer without decoding.)
  2. Each audio frame plays at its own timestamp: where the timestamps jump by more than
     ``_AUDIO_JUMP_S`` (a gap, an overlap, a fragmented mp4, a damaged packet) silence is
     inserted or samples dropped, as a player would (decord would just concatenate the samples).
  3. The audio and video streams may start at different times: a positive audio offset
     (audio starts later) prepends silence, a negative one drops samples.

Checks: before decoding, one PyAV demux pass (decoding only the first video frame, for its
  rotation) rejects a file whose packets stop before the duration its header declares
  ("truncated"), whose only picture is a cover (attached_pic: "no_video"), or whose video or
  audio stream has no packets ("no_video", "no_audio"); a file that does not open is
  "truncated" when it starts with a container signature, else "not_media"; a folder is
  "not_media". Every reject detail says what is wrong and what to do.

Extraction (``extract_clips``)
  Files are read by a small pool of worker processes (forkserver: a script calling it needs
  the ``if __name__ == "__main__":`` guard), one file per task; a file that takes longer than
  ``file_timeout_s`` has its worker killed and replaced. Results are written in sorted file
  order, so they do not depend on the number of workers, into one folder, atomically: shards
  of clips (safetensors), ``index.json`` and ``rejects.json``. Every unusable file is rejected
  with a named reason (``REJECT_REASONS``); a failed run writes only ``<out>.rejects.json``.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import multiprocessing as mp
import os
import re
import stat
import struct
import time
from collections import Counter, deque
from multiprocessing.connection import wait as wait_ready
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from einops import rearrange

from mmdisco.config import ClipConfig
from mmdisco.data.media import MediaError, _video_info, probe
from mmdisco.io import (atomic_path, child_path, load_tensors, read_json, save_tensors,
                        write_json)

log = logging.getLogger(__name__)

# Named reasons a file is rejected (keys of ``reject_reasons`` in the summary).
REJECT_REASONS = ("not_found", "zero_bytes", "not_media", "truncated", "no_video", "no_audio",
                  "too_short", "decode_error", "timeout")
_TIME_EPS = 1e-3      # s: slack on frame timestamps (Matroska stores milliseconds)
_DECODE_CHUNK = 64    # frames decoded and resized at a time
_TRUNCATION_TOL_S = 0.1  # s: packets may stop this much before the declared duration
_AUDIO_JUMP_S = 0.01  # s: audio timestamps that jump further are followed (gap or overlap)
_MAX_BAD_PACKETS = 0.05  # fraction of a stream's packets that may fail to decode (skipped)
_DECORD_FORMATS = {"mov", "mp4", "matroska", "webm", "avi"}  # demuxers with a frame index
_INDEX_KEYS = ("id", "source", "start_s", "shard", "row")


class ClipExtractionError(RuntimeError):
    """Too few usable files: no clip at all, or more rejects than ``max_reject_fraction``."""


class MediaRejected(RuntimeError):
    """A media file cannot give clips; ``reason`` is one of ``REJECT_REASONS``."""

    def __init__(self, path: str | Path, reason: str, detail: str):
        super().__init__(f"{path}: {reason}: {detail}")
        self.path, self.reason, self.detail = str(path), reason, detail


# --------------------------------------------------------------------------- file checks
def _has_container_signature(path: Path) -> bool:
    """True when the first bytes look like a known media container (mp4/mov, mkv/webm, ...)."""
    with open(path, "rb") as f:
        head = f.read(12)
    return (head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip")
            or head[:4] in (b"\x1a\x45\xdf\xa3", b"RIFF", b"OggS", b"FLV\x01")
            or head[:3] == b"ID3")


def _check_file(path: Path) -> None:
    """Reject a missing, empty or folder path before any decoder sees it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MediaRejected(path, "not_found", "no such file: it was moved or deleted after "
                                               "`acquire` listed it; rerun `acquire`") from None
    if stat.S_ISDIR(st.st_mode):
        raise MediaRejected(path, "not_media", "a folder, not a media file; rename it or "
                                               "move it out of the media folder")
    if stat.S_ISREG(st.st_mode) and st.st_size == 0:
        raise MediaRejected(path, "zero_bytes", "the file is empty (0 bytes); copy or "
                                                "download it again")


def _ffmpeg_cause(e: Exception) -> str:
    """FFmpeg's own words for why a file did not open (without the file's path)."""
    cause = e.__cause__
    return (getattr(cause, "strerror", None) or str(e)) if cause is not None else str(e)


def _probe(path: Path) -> dict:
    """Probe the streams with PyAV; a file that does not open is truncated or not media."""
    try:
        return probe(path)
    except MediaError as e:
        cause = _ffmpeg_cause(e)
        if _has_container_signature(path):
            raise MediaRejected(path, "truncated", f"it starts like a media container but does "
                                f"not open (FFmpeg: {cause}): it is cut short or damaged; "
                                f"download or copy it again") from None
        raise MediaRejected(path, "not_media", f"not an audio/video file (FFmpeg: {cause}); "
                                               f"remove it from the media folder") from None
    except Exception as e:  # PyAV opened it but cannot describe a stream (a damaged header)
        raise MediaRejected(path, "decode_error", f"its streams cannot be described "
                            f"({type(e).__name__}: {e}): the header is damaged or names a "
                            f"codec FFmpeg lacks; re-encode it or download it again") from None


def _video_stream(src: Any) -> Any:
    """The first video stream that is not a still cover picture (attached_pic), or None."""
    for stream in src.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    return None


def _skip_samples(packet: Any) -> int:
    """Leading samples FFmpeg skips after decoding ``packet`` (its skip_samples side data)."""
    if not packet.has_sidedata("skip_samples"):
        return 0
    data = bytes(packet.get_sidedata("skip_samples"))
    return struct.unpack("<I", data[:4])[0] if len(data) >= 4 else 0


def _first_rotation(stream: Any, packet: Any) -> int | None:
    """Display rotation of the first frame ``packet`` completes (None: no frame yet)."""
    try:
        frames = stream.codec_context.decode(packet)
    except av.FFmpegError:
        return None
    if not frames:
        return None
    # PyAV: counter-clockwise degrees from the display matrix; decord applies the same turn.
    return (round(frames[0].rotation / 90) % 4) * 90


def _scan_packets(path: Path) -> dict:
    """Demux once: the video stream (cover pictures skipped), each stream's declared and actual
    end and packet count, the container format, the video's display rotation (its first frame
    is decoded), and decord's extra leading audio samples (skip_samples on a first audio
    packet that is not discarded)."""
    try:
        with av.open(str(path)) as src:
            video = _video_stream(src)
            audio = src.streams.audio[0] if src.streams.audio else None
            streams = [st for st in (video, audio) if st is not None]
            ends = {st.index: -math.inf for st in streams}
            counts = {st.index: 0 for st in streams}
            skip = rotation = None
            if video is not None:
                video.codec_context.thread_count = 1
            for packet in src.demux(streams):
                if packet.pts is None or not packet.size:
                    continue
                i = packet.stream.index
                counts[i] += 1
                ends[i] = max(ends[i], float((packet.pts + (packet.duration or 0))
                                             * packet.time_base))
                if audio is not None and i == audio.index and skip is None:
                    skip = 0 if packet.is_discard else _skip_samples(packet)
                if video is not None and i == video.index and rotation is None:
                    rotation = _first_rotation(video, packet)
                    if rotation is None and counts[i] >= 64:
                        rotation = 0
            extents = [_extent(st, ends[st.index]) for st in streams]
            container_s = src.duration / av.time_base if src.duration else None
            container_end = (None if not src.duration else
                             ((src.start_time or 0) + src.duration) / av.time_base)
            first_video = src.streams.video[0] if src.streams.video else None
            video_info = (_video_info(video, container_s)
                          if video is not None and video is not first_video else None)
            scan = {"extents": extents, "container_end": container_end,
                    "audio_skip": skip or 0, "format": src.format.name,
                    "rotation": rotation or 0, "video_info": video_info,
                    "cover_art": first_video is not None and video is None,
                    "video_packets": counts[video.index] if video is not None else 0,
                    "audio_packets": counts[audio.index] if audio is not None else 0}
    except av.FFmpegError as e:
        raise MediaRejected(path, "truncated", f"reading its packets failed (FFmpeg: "
                                               f"{getattr(e, 'strerror', None) or e}): it is "
                                               f"cut short or damaged; download or copy it "
                                               f"again") from None
    return scan


def _extent(stream: Any, end: float) -> dict:
    """A stream's type, declared end (None when unknown), packet end and allowed shortfall."""
    declared = (None if stream.duration is None or stream.time_base is None
                else float(((stream.start_time or 0) + stream.duration) * stream.time_base))
    rate = stream.average_rate if stream.type == "video" else None
    return {"type": stream.type, "declared": declared, "end": end,
            "tol": _TRUNCATION_TOL_S + (1.5 / float(rate) if rate else 0.0)}


def _check_streams(path: Path, scan: dict) -> None:
    """Reject a file whose only picture is a cover, or whose audio or video has no packets."""
    if scan["cover_art"]:
        raise MediaRejected(path, "no_video", "the only picture is a still cover picture "
                                              "(attached_pic), not a video stream; the "
                                              "pipeline needs video with sound")
    if scan["video_packets"] == 0:
        raise MediaRejected(path, "no_video", "the video stream holds no frames (it is "
                                              "declared but has no packets)")
    if scan["audio_packets"] == 0:
        raise MediaRejected(path, "no_audio", "the audio stream holds no samples (it is "
                                              "declared but has no packets)")


def _check_complete(path: Path, scan: dict) -> None:
    """Reject as truncated a file whose packets stop before the duration its header declares.

    A stream with its own declared duration (mp4/mov) is checked against it; otherwise
    (Matroska) at least one stream must reach the container's duration.
    """
    extents, container_end = scan["extents"], scan["container_end"]
    short = [f"{x['type']} data ends at {x['end']:.2f} s of {x['declared']:.2f} s"
             for x in extents if x["declared"] is not None and x["end"] < x["declared"] - x["tol"]]
    if not short and container_end is not None and extents and all(
            x["end"] < container_end - x["tol"] for x in extents):
        short.append(f"data ends at {max(x['end'] for x in extents):.2f} s of "
                     f"{container_end:.2f} s")
    if short:
        raise MediaRejected(path, "truncated", "; ".join(short) + " declared in its header: "
                            "the file is cut short; download or copy it again")


# --------------------------------------------------------------------------- video
def _source_frames(starts: np.ndarray, end_s: float, fps: int, max_seconds: float | None
                   ) -> np.ndarray:
    """Index of the source frame on screen at each output time k / fps (sorted ``starts``)."""
    count = math.floor((end_s + _TIME_EPS) * fps)
    if max_seconds is not None:
        count = min(count, math.ceil(max_seconds * fps - 1e-9))
    times = np.arange(max(count, 0)) / fps
    idx = np.searchsorted(starts, times + _TIME_EPS, side="right") - 1
    return np.clip(idx, 0, len(starts) - 1)


def _end_time(starts: np.ndarray, default_period: float = 0.0) -> float:
    """When the last frame stops showing: its start plus the typical frame period."""
    period = float(np.median(np.diff(starts))) if len(starts) > 1 else default_period
    return float(starts[-1]) + period


def square_resize(frames: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop uint8 [N, H, W, 3] frames to a square and resize to [N, size, size, 3]."""
    x = rearrange(torch.from_numpy(np.ascontiguousarray(frames)), "n h w c -> n c h w").float()
    h, w = x.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = x[..., top:top + side, left:left + side]
    if side > size:
        x = F.interpolate(x, size=(size, size), mode="area")
    elif side < size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.round().clamp_(0, 255).to(torch.uint8)
    return rearrange(x, "n c h w -> n h w c").numpy()


def _decord_video(path: Path, vinfo: dict, rotation: int, cfg: ClipConfig,
                  max_seconds: float | None) -> tuple[np.ndarray, float]:
    """Decode with decord at native size (decord applies the display rotation); raise
    ValueError on a wrongly shaped batch."""
    import decord
    vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    n = len(vr)
    if n == 0:
        raise ValueError("decord found no video frames")
    ts = np.asarray(vr.get_frame_timestamp(list(range(n))), dtype=np.float64).reshape(n, 2)
    order = np.argsort(ts[:, 0], kind="stable")
    end = max(float(ts[:, 1].max()), _end_time(ts[order, 0]))
    idx = order[_source_frames(ts[order, 0], end, cfg.fps, max_seconds)]
    h, w = vinfo["height"], vinfo["width"]
    expected = (w, h, 3) if rotation in (90, 270) else (h, w, 3)
    uniq, inverse = np.unique(idx, return_inverse=True)
    chunks = []
    for s in range(0, len(uniq), _DECODE_CHUNK):
        batch = vr.get_batch(uniq[s:s + _DECODE_CHUNK].tolist()).asnumpy()
        if batch.shape[1:] != expected or batch.dtype != np.uint8:
            raise ValueError(f"decord returned frames of shape {batch.shape[1:]} "
                             f"{batch.dtype}, expected {expected} uint8")
        chunks.append(square_resize(batch, cfg.size))
    frames = np.concatenate(chunks) if chunks else np.zeros((0, cfg.size, cfg.size, 3), np.uint8)
    return frames[inverse], end


def _decoded(src: Any, stream: Any, counts: dict) -> Any:
    """The frames of ``stream`` in order. A packet that does not decode is skipped and counted
    (``counts["bad"]`` of ``counts["packets"]``), as FFmpeg's own tools do."""
    for packet in src.demux(stream):
        counts["packets"] += packet.size > 0
        try:
            frames = packet.decode()
        except av.FFmpegError:
            counts["bad"] += packet.size > 0
            continue
        yield from frames


class _DamagedStream(ValueError):
    """Too many packets of a stream do not decode (another decoder would not do better)."""


def _check_bad_packets(kind: str, counts: dict) -> None:
    """Give up on a stream when more than _MAX_BAD_PACKETS of its packets do not decode."""
    if counts["bad"] > _MAX_BAD_PACKETS * max(counts["packets"], 1):
        raise _DamagedStream(f"{counts['bad']} of {counts['packets']} {kind} packets do "
                             f"not decode: the {kind} data is damaged")


def _pyav_video(path: Path, vinfo: dict, rotation: int, cfg: ClipConfig,
                max_seconds: float | None) -> tuple[np.ndarray, float]:
    """Decode every frame in order with PyAV (times relative to the stream start), turn it
    upright, then resample."""
    images, starts = [], []
    limit = None if max_seconds is None else max_seconds + 1.0
    counts = {"packets": 0, "bad": 0}
    with av.open(str(path)) as src:
        stream = _video_stream(src)
        stream.thread_count = 1
        for frame in _decoded(src, stream, counts):
            if frame.time is None:
                continue
            t = float(frame.time) - vinfo["start_time_s"]
            if limit is not None and t > limit:
                break
            starts.append(t)
            image = frame.to_ndarray(format="rgb24")
            if rotation:
                image = np.rot90(image, rotation // 90)
            images.append(square_resize(image[None], cfg.size)[0])
    _check_bad_packets("video", counts)
    if not images:
        raise ValueError("PyAV decoded no video frames")
    starts_arr = np.asarray(starts)
    order = np.argsort(starts_arr, kind="stable")
    end = _end_time(starts_arr[order], 1.0 / (vinfo["fps"] or 25.0))
    idx = order[_source_frames(starts_arr[order], end, cfg.fps, max_seconds)]
    return np.stack(images)[idx], end


def _decord_message(e: Exception) -> str:
    """decord's error without its log prefixes ("[12:34:56] /src/....cc:123: "): the reject
    details must not change from run to run."""
    return re.sub(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ", "", str(e)).strip()


def _decord_seeks_reliably(container_format: str) -> bool:
    """decord seeks by timestamp through the container's frame index; formats without one
    (MPEG-TS/PS, FLV, Ogg, ...) come back with frames from the wrong time."""
    return bool(set(container_format.split(",")) & _DECORD_FORMATS)


def _read_video(path: Path, pinfo: dict, scan: dict, cfg: ClipConfig,
                max_seconds: float | None) -> tuple[np.ndarray, float, str]:
    """Frames [F, size, size, 3] at cfg.fps, video duration, and the decoder that worked."""
    vinfo, rotation = pinfo["video"], scan["rotation"]
    if _decord_seeks_reliably(scan["format"]):
        try:
            frames, end = _decord_video(path, vinfo, rotation, cfg, max_seconds)
            return frames, end, "decord"
        except Exception as e:  # decord raises its own error types; PyAV decides below
            first = f"decord: {_decord_message(e)}"
    else:
        first = f"decord not used for the {scan['format']} format, which has no frame index"
    try:
        frames, end = _pyav_video(path, vinfo, rotation, cfg, max_seconds)
    except Exception as second:
        raise MediaRejected(path, "decode_error", f"video does not decode ({first}; "
                                                  f"PyAV: {second})") from None
    log.debug("%s: %s; decoded with PyAV", path, first)
    return frames, end, "pyav"


# --------------------------------------------------------------------------- audio
def _pyav_audio(path: Path, sample_rate: int, until_s: float | None
                ) -> tuple[np.ndarray, float, dict]:
    """Mono float32 audio at ``sample_rate``, streamed through PyAV so that memory follows
    the output, and the time of its first sample. Where the frames' timestamps jump (gaps,
    overlaps, a packet that does not decode) silence is inserted or audio dropped so that each
    frame plays at its own time. Frames after ``until_s`` (file time) are skipped, and decoding
    stops once 50 in a row lie there."""
    to_mono = av.AudioResampler(format="fltp", layout="mono")
    to_rate = av.AudioResampler(format="fltp", layout="mono", rate=sample_rate)
    chunks: list[np.ndarray] = []
    first, native, placed, retimed, beyond = None, None, 0, 0, 0
    counts = {"packets": 0, "bad": 0}

    def emit(x: np.ndarray) -> None:
        frame = av.AudioFrame.from_ndarray(x[None], format="fltp", layout="mono")
        frame.sample_rate = native
        chunks.extend(f.to_ndarray()[0] for f in to_rate.resample(frame))

    with av.open(str(path)) as src:
        stream = src.streams.audio[0]
        stream.thread_count = 1
        for frame in _decoded(src, stream, counts):
            if native is None:
                native = frame.sample_rate
            elif frame.sample_rate != native:
                raise ValueError(f"the sample rate changes from {native} to "
                                 f"{frame.sample_rate} Hz inside the stream")
            x = np.concatenate([f.to_ndarray()[0] for f in to_mono.resample(frame)] or
                               [np.zeros(0, np.float32)])
            if frame.time is not None:
                if first is None:
                    first = float(frame.time)
                elif until_s is not None and frame.time > until_s:
                    beyond += 1   # one damaged timestamp, or really the end: 50 in a row
                    if beyond >= 50:
                        break
                    continue
                beyond = 0
                shift = round((float(frame.time) - first) * native) - placed
                if abs(shift) > _AUDIO_JUMP_S * native:
                    retimed += abs(shift)
                    if shift > 0:
                        emit(np.zeros(shift, np.float32))
                        placed += shift
                    else:
                        x = x[-shift:]
            if len(x):
                emit(np.ascontiguousarray(x, np.float32))
                placed += len(x)
        if native is not None:
            chunks.extend(f.to_ndarray()[0] for f in to_rate.resample(None))
    _check_bad_packets("audio", counts)
    if not chunks:
        raise ValueError("PyAV decoded no audio")
    return np.concatenate(chunks).astype(np.float32, copy=False), first or 0.0, {
        "audio_retimed_s": round(retimed / native, 6), "audio_bad_packets": counts["bad"]}


def _decord_audio(path: Path, skip: int) -> np.ndarray:
    """Mono float32 audio at the native rate, less the ``skip`` leading samples decord kept."""
    import decord
    reader = decord.AudioReader(str(path), ctx=decord.cpu(0), sample_rate=-1, mono=True)
    # decord 0.6.0 decodes the whole stream into ``_array`` [C, L]; its public slicing builds a
    # per-sample index list (about 10 ms per 2 s of audio), so read the array when it is there.
    array = getattr(reader, "_array", None)
    x = np.asarray(array if isinstance(array, np.ndarray) else reader[:].asnumpy(), np.float32)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"decord returned audio of shape {x.shape}")
    return x.mean(axis=0)[skip:]


def _shift(audio: torch.Tensor, offset_s: float, sample_rate: int) -> torch.Tensor:
    """Place audio that starts offset_s after video time 0: pad (offset > 0) or trim (< 0)."""
    n = round(offset_s * sample_rate)
    if n > 0:
        return torch.cat([audio.new_zeros(n), audio])
    return audio[-n:]


def _read_audio(path: Path, pinfo: dict, skip: int, cfg: ClipConfig,
                max_seconds: float | None) -> tuple[np.ndarray, dict]:
    """Mono float32 audio at cfg.sample_rate aligned to video time 0, and what was done."""
    ainfo, vstart = pinfo["audio"], pinfo["video"]["start_time_s"]
    until = None if max_seconds is None else vstart + max_seconds + 1.0
    repairs = {"audio_retimed_s": 0.0, "audio_bad_packets": 0}
    try:
        x, astart, repairs = _pyav_audio(path, cfg.sample_rate, until)
        wave, decoder = torch.from_numpy(x), "pyav"
    except _DamagedStream as e:  # decord would stop at the first bad packet: no fallback
        raise MediaRejected(path, "decode_error", f"{e}; re-encode it or download it "
                                                  f"again") from None
    except Exception as first:
        try:
            x, astart, decoder = _decord_audio(path, skip), ainfo["start_time_s"], "decord"
        except Exception as second:
            raise MediaRejected(path, "decode_error", f"audio does not decode (PyAV: {first}; "
                                                      f"decord: {_decord_message(second)})"
                                ) from None
        log.debug("%s: PyAV failed on the audio (%s); decoded with decord", path, first)
        wave = torch.from_numpy(np.ascontiguousarray(x))
        native = int(ainfo["sample_rate"])
        if native != cfg.sample_rate:
            wave = torchaudio.functional.resample(wave, native, cfg.sample_rate)
    if not torch.isfinite(wave).all():
        raise MediaRejected(path, "decode_error", "decoded audio holds NaN or infinite values")
    wave = _shift(wave, astart - vstart, cfg.sample_rate)
    return wave.numpy().astype(np.float32, copy=False), {
        "audio_decoder": decoder, "audio_offset_s": astart - vstart,
        "audio_skipped_samples": skip, **repairs}


def _horizon(scan: dict, video_start: float) -> float | None:
    """Video time past which nothing is read: 1 s after the video ends by its packets, or by
    its header when that is earlier, so that a timestamp far ahead (a damaged packet) cannot
    make hours of held frames or inserted silence."""
    video = next(x for x in scan["extents"] if x["type"] == "video")
    ends = [e for e in (video["end"], video["declared"], scan["container_end"])
            if e is not None and math.isfinite(e)]
    return min(ends) - video_start + 1.0 if ends else None


# --------------------------------------------------------------------------- public API
def read_media(path: str | Path, cfg: ClipConfig, *, max_seconds: float | None = None
               ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Frames uint8 [F, size, size, 3] at cfg.fps, mono audio float32 [L] at cfg.sample_rate.

    Both start at video time 0 (see the module notes on sync). ``max_seconds`` stops reading
    after that much video (and nothing is read past ``_horizon`` in any case). Raises
    MediaRejected with a named reason for an unusable file.
    """
    path = Path(path)
    _check_file(path)
    pinfo = _probe(path)
    if not pinfo["has_video"]:
        raise MediaRejected(path, "no_video", "the file has no video stream (audio only); the "
                                              "pipeline needs video with sound")
    if not pinfo["has_audio"]:
        raise MediaRejected(path, "no_audio", "the file has no audio stream (a silent video); "
                                              "the pipeline needs video with sound")
    scan = _scan_packets(path)
    _check_streams(path, scan)
    if scan["video_info"] is not None:  # a cover picture came first: describe the video
        pinfo = {**pinfo, "video": scan["video_info"]}
    _check_complete(path, scan)
    horizon = _horizon(scan, pinfo["video"]["start_time_s"])
    if max_seconds is None or (horizon is not None and horizon < max_seconds):
        max_seconds = horizon
    frames, video_s, video_decoder = _read_video(path, pinfo, scan, cfg, max_seconds)
    audio, audio_info = _read_audio(path, pinfo, scan["audio_skip"], cfg, max_seconds)
    if max_seconds is not None:
        audio = audio[:math.ceil(max_seconds * cfg.sample_rate)]
    v, a = pinfo["video"], pinfo["audio"]
    info = {"source_fps": v["fps"], "width": v["width"], "height": v["height"],
            "rotation": scan["rotation"], "container": scan["format"],
            "video_codec": v["codec"], "video_start_s": v["start_time_s"],
            "video_duration_s": video_s, "video_decoder": video_decoder,
            "source_sample_rate": a["sample_rate"], "channels": a["channels"],
            "audio_codec": a["codec"], "audio_start_s": a["start_time_s"],
            "audio_duration_s": len(audio) / cfg.sample_rate, **audio_info}
    return frames, audio, info


def cut_windows(frames: np.ndarray, audio: np.ndarray, cfg: ClipConfig
                ) -> list[tuple[float, np.ndarray, np.ndarray]]:
    """Windows (start_s, video [F, H, W, 3], audio [L]) fully covered by both modalities.

    Starts lie on the frame grid (round(i · hop · fps) / fps) so audio and video stay aligned.
    """
    nf, ns = cfg.num_frames, cfg.num_samples
    windows: list[tuple[float, np.ndarray, np.ndarray]] = []
    last_k0, i = -1, 0
    while cfg.max_windows_per_file <= 0 or len(windows) < cfg.max_windows_per_file:
        k0 = round(i * cfg.hop_seconds * cfg.fps)
        i += 1
        if k0 == last_k0:  # a hop shorter than a frame: never the same window twice
            continue
        start_s, last_k0 = k0 / cfg.fps, k0
        s0 = round(start_s * cfg.sample_rate)
        if k0 + nf > len(frames) or s0 + ns > len(audio):
            break
        windows.append((start_s, frames[k0:k0 + nf], audio[s0:s0 + ns]))
    return windows


def _needed_seconds(cfg: ClipConfig) -> float | None:
    """Video time that the allowed windows can reach (None: the whole file)."""
    if cfg.max_windows_per_file <= 0:
        return None
    last = round((cfg.max_windows_per_file - 1) * cfg.hop_seconds * cfg.fps) / cfg.fps
    return last + cfg.seconds


def _process_file(path: str, cfg: ClipConfig) -> dict:
    """Read and window one file: {"ok": True, "windows", "info"} or a reject record."""
    try:
        frames, audio, info = read_media(path, cfg, max_seconds=_needed_seconds(cfg))
        windows = cut_windows(frames, audio, cfg)
        if not windows:
            raise MediaRejected(path, "too_short", f"{len(frames) / cfg.fps:.2f} s of video and "
                                f"{len(audio) / cfg.sample_rate:.2f} s of audio; a clip needs "
                                f"{cfg.seconds} s of both (data.clip.seconds)")
        return {"ok": True, "windows": windows, "info": info}
    except MediaRejected as e:
        reason, detail = e.reason, e.detail
    except Exception as e:  # any other decoder failure rejects the file, never the run
        reason, detail = "decode_error", f"{type(e).__name__}: {e}"
    # Name the file, not its path: outputs must not depend on where the data lies.
    return {"ok": False, "reason": reason, "detail": detail.replace(str(path), Path(path).name)}


# --------------------------------------------------------------------------- worker pool
def _worker_loop(conn: Any, cfg: ClipConfig) -> None:
    """Worker process: announce readiness, then answer (index, path) tasks until None."""
    torch.set_num_threads(1)
    conn.send(("ready", None))
    while True:
        task = conn.recv()
        if task is None:
            return
        i, path = task
        conn.send((i, _process_file(path, cfg)))


class _Worker:
    """One worker process with its pipe, current task and deadline."""

    def __init__(self, ctx: Any, cfg: ClipConfig):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_loop, args=(child, cfg), daemon=True)
        self.proc.start()
        child.close()
        self.ready, self.task, self.deadline = False, None, math.inf

    def submit(self, i: int, path: Path, timeout_s: float) -> None:
        self.conn.send((i, str(path)))
        self.task, self.deadline = i, time.monotonic() + timeout_s

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
        else:
            try:
                self.conn.send(None)
            except OSError:
                self.proc.kill()
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


def _pool_context() -> Any:
    """A forkserver context that preloads this module (cheap restarts, no forked threads)."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


def _run_pool(files: list[Path], cfg: ClipConfig):
    """Yield (index, result) in input order; a hung file's worker is killed and replaced."""
    ctx = _pool_context()
    if not files:
        return
    workers = [_Worker(ctx, cfg) for _ in range(min(cfg.workers, len(files)))]
    todo = deque(enumerate(files))
    done: dict[int, dict] = {}
    next_out = 0
    try:
        while next_out < len(files):
            for w in workers:
                if w.ready and w.task is None and todo:
                    w.submit(*todo.popleft(), cfg.file_timeout_s)
            busy = min((w.deadline for w in workers), default=math.inf)
            wait_s = None if busy == math.inf else max(0.0, busy - time.monotonic())
            ready = wait_ready([w.conn for w in workers] + [w.proc.sentinel for w in workers],
                               timeout=wait_s)
            for j, w in enumerate(workers):
                result = _collect(w, ready)
                if result is None:
                    continue
                if result == "restart":
                    if not w.ready:
                        raise ClipExtractionError(
                            "a decoding worker process failed to start; a script that calls "
                            "extract_clips must do so under `if __name__ == '__main__':` "
                            "(the forkserver workers re-import the main module)")
                    if w.task is not None:
                        done[w.task] = _worker_lost(w, cfg)
                    w.stop(kill=True)
                    workers[j] = _Worker(ctx, cfg)
                    continue
                done[result[0]] = result[1]
            while next_out in done:
                yield next_out, done.pop(next_out)
                next_out += 1
    finally:
        for w in workers:
            w.stop(kill=w.task is not None)


def _collect(w: _Worker, ready: list) -> Any:
    """A finished (index, result), "restart" for a hung or dead worker, or None."""
    if w.conn in ready:
        try:
            msg = w.conn.recv()
        except (EOFError, OSError):
            return "restart"
        if msg[0] == "ready":
            w.ready = True
            return None
        w.task, w.deadline = None, math.inf
        return msg
    if w.proc.sentinel in ready or time.monotonic() >= w.deadline:
        return "restart"
    return None


def _worker_lost(w: _Worker, cfg: ClipConfig) -> dict:
    """The reject record for the file a worker was on when it hung or died."""
    if w.proc.is_alive() and time.monotonic() >= w.deadline:
        return {"ok": False, "reason": "timeout",
                "detail": f"took longer than file_timeout_s = {cfg.file_timeout_s} s (hung or "
                          f"slow to decode); raise data.clip.file_timeout_s if it is just long"}
    return {"ok": False, "reason": "decode_error",
            "detail": f"the decoding process died (exit code {w.proc.exitcode}): the decoder "
                      f"crashed or ran out of memory on this file; re-encode it"}


# --------------------------------------------------------------------------- labels & writing
def _clip_labels(label: dict, start_s: float, cfg: ClipConfig) -> dict:
    """A file's labels for one clip: contact_times become the clip's contact_frames."""
    out = {k: copy.deepcopy(v) for k, v in label.items()
           if k not in ("contact_times", "contact_frames")}
    if "contact_times" in label:
        ks = {math.floor((float(t) - start_s) * cfg.fps + 0.5) for t in label["contact_times"]}
        out["contact_frames"] = sorted(k for k in ks if 0 <= k < cfg.num_frames)
    return out


def _check_inputs(files: list[Path], labels: dict[str, dict] | None) -> list[Path]:
    """Files sorted by name; names must be unique and labels must not shadow index keys."""
    files = sorted((Path(f) for f in files), key=lambda p: (p.name, str(p)))
    dupes = sorted(n for n, c in Counter(p.name for p in files).items() if c > 1)
    if dupes:
        raise ValueError(f"media file names must be unique (clips are named by file): "
                         f"{', '.join(dupes)} occur more than once; rename them")
    for name, label in (labels or {}).items():
        if not isinstance(label, dict):
            raise ValueError(f"labels['{name}'] must be a dict, got {type(label).__name__}")
        bad = sorted(set(label) & set(_INDEX_KEYS))
        if bad:
            raise ValueError(f"labels['{name}'] uses reserved key(s) {', '.join(bad)}; "
                             f"rename them")
    return files


class _ShardWriter:
    """Buffers clips in order and writes shard_00000.safetensors, ... of shard_size rows."""

    def __init__(self, folder: Path, shard_size: int):
        self.folder, self.shard_size = folder, shard_size
        self.video: list[np.ndarray] = []
        self.audio: list[np.ndarray] = []
        self.shards: list[str] = []

    def add(self, video: np.ndarray, audio: np.ndarray) -> tuple[int, int]:
        """Queue one clip; return its (shard, row)."""
        where = (len(self.shards), len(self.video))
        self.video.append(video)
        self.audio.append(audio)
        if len(self.video) == self.shard_size:
            self.flush()
        return where

    def flush(self) -> None:
        if not self.video:
            return
        name = f"shard_{len(self.shards):05d}.safetensors"
        save_tensors(self.folder / name, {"video": torch.from_numpy(np.stack(self.video)),
                                          "audio": torch.from_numpy(np.stack(self.audio))})
        self.shards.append(name)
        self.video, self.audio = [], []


def _rejects_path(out_dir: Path) -> Path:
    return out_dir.with_name(out_dir.name + ".rejects.json")


def _check_rejects(n_files: int, n_clips: int, rejects: list[dict], cfg: ClipConfig,
                   out_dir: Path) -> None:
    """Raise ClipExtractionError (after saving the rejects beside out_dir) when too few work."""
    frac = len(rejects) / max(n_files, 1)
    if n_clips > 0 and frac <= cfg.max_reject_fraction:
        return
    where = _rejects_path(out_dir)
    write_json(where, rejects)
    counts = dict(Counter(r["reason"] for r in rejects))
    head = (f"no usable clip in {n_files} file(s)" if n_clips == 0 else
            f"{len(rejects)} of {n_files} files rejected ({frac:.0%}), more than "
            f"max_reject_fraction = {cfg.max_reject_fraction}")
    raise ClipExtractionError(f"{head}; reasons {counts}; every rejected file and its reason is "
                              f"in {where}; nothing was written to {out_dir}")


def _add_windows(source: str, windows: list, shards: _ShardWriter, label: dict,
                 cfg: ClipConfig) -> list[dict]:
    """Queue one file's windows into the shards; return their index entries."""
    entries = []
    for w, (start_s, video, audio) in enumerate(windows):
        shard, row = shards.add(video, audio)
        entries.append({"id": f"{source}#{w:04d}", "source": source, "start_s": start_s,
                        "shard": shard, "row": row, **_clip_labels(label, start_s, cfg)})
    return entries


def extract_clips(files: list[Path], out_dir: Path, cfg: ClipConfig, *,
                  labels: dict[str, dict] | None = None) -> dict:
    """Cut clips from ``files`` into ``out_dir`` (shards, index.json, rejects.json), atomically.

    Returns {files, used_files, rejected_files, clips, reject_reasons, seconds}.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    files = _check_inputs(list(files), labels)
    labels = labels or {}
    entries: list[dict] = []
    rejects: list[dict] = []
    sources: dict[str, dict] = {}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        shards = _ShardWriter(tmp, cfg.shard_size)
        with contextlib.closing(_run_pool(files, cfg)) as results:
            for i, result in results:
                source = files[i].name
                if result["ok"]:
                    sources[source] = result["info"]
                    entries += _add_windows(source, result["windows"], shards,
                                            labels.get(source, {}), cfg)
                else:
                    rejects.append({"source": source, "reason": result["reason"],
                                    "detail": result["detail"]})
                    log.info("rejected %s: %s (%s)", source, result["reason"], result["detail"])
        shards.flush()
        _check_rejects(len(files), len(entries), rejects, cfg, out_dir)
        write_json(tmp / "index.json", {
            "num_clips": len(entries), "fps": cfg.fps, "size": cfg.size,
            "sample_rate": cfg.sample_rate, "num_frames": cfg.num_frames,
            "num_samples": cfg.num_samples, "shards": shards.shards,
            "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "workers"},
            "sources": sources, "clips": entries})
        write_json(tmp / "rejects.json", rejects)
    _rejects_path(out_dir).unlink(missing_ok=True)
    summary = {"files": len(files), "used_files": len(sources), "rejected_files": len(rejects),
               "clips": len(entries), "reject_reasons": dict(Counter(r["reason"] for r in rejects)),
               "seconds": time.perf_counter() - t0}
    log.info("extracted %d clips from %d of %d files in %.1f s", summary["clips"], len(sources),
             len(files), summary["seconds"])
    return summary


def load_clips(clips_dir: str | Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Video uint8 [N, F, H, W, 3], audio float32 [N, L] and the index of a clips folder."""
    clips_dir = Path(clips_dir)
    if not clips_dir.is_dir():
        raise FileNotFoundError(f"clips folder {clips_dir} is missing; run the clip extraction "
                                f"stage first (`dvc repro extract_clips`)")
    index_path = clips_dir / "index.json"
    if not index_path.is_file():
        raise FileNotFoundError(f"{index_path} is missing: {clips_dir} is incomplete; delete it "
                                f"and rerun the clip extraction stage")
    index = read_json(index_path)
    names = index.get("shards") or sorted({f"shard_{c['shard']:05d}.safetensors"
                                           for c in index["clips"]})
    videos, audios = [], []
    for name in names:
        child_path(clips_dir, name, index_path)   # a tampered index cannot read elsewhere
        if not (clips_dir / name).is_file():
            raise FileNotFoundError(f"{clips_dir / name} is missing: {clips_dir} is incomplete; "
                                    f"delete it and rerun the clip extraction stage")
        shard = load_tensors(clips_dir / name)
        videos.append(shard["video"])
        audios.append(shard["audio"])
    video = torch.cat(videos) if videos else torch.zeros(
        0, index["num_frames"], index["size"], index["size"], 3, dtype=torch.uint8)
    audio = torch.cat(audios) if audios else torch.zeros(0, index["num_samples"])
    expected = (index["num_clips"], index["num_frames"], index["size"], index["size"], 3)
    if tuple(video.shape) != expected or tuple(audio.shape) != expected[:1] + (
            index["num_samples"],):
        raise ValueError(f"{clips_dir}: shards hold video {tuple(video.shape)} and audio "
                         f"{tuple(audio.shape)}, but index.json says {expected}; the folder is "
                         f"inconsistent: delete it and rerun the clip extraction stage")
    return video, audio, index
