"""Decode a file's video to clip frames: uint8 [F, size, size, 3] at the clip frame rate.

Video is decoded by decord at its native size, then centre-cropped to a square and resized
with torch (decord's own resizing is broken for widths that are not a multiple of 32). Frame
k of the result is the source frame on screen at video time k / fps, chosen from decord's
frame timestamps, so any source frame rate is resampled without drift. Every decoded batch is
checked (3 channels, the native size probed by PyAV); a file decord mangles or cannot open is
decoded again with PyAV, frame by frame in order. decord is not used at all for containers
without a frame index (MPEG-TS/PS, FLV, Ogg, ...): it seeks by timestamp and returns frames
from the wrong time there. The display rotation (a display matrix, e.g. from phones) is
applied: decord applies it itself, PyAV frames are turned with np.rot90.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

# av before decord: PyAV's libvpx encoders fail to open in a process that loaded decord first.
import av
import decord
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from mmdisco.config import ClipConfig
from mmdisco.data.checks import (MediaRejected, check_bad_packets, decord_message,
                                 decoded_frames, video_stream)

log = logging.getLogger(__name__)

_TIME_EPS = 1e-3      # s: slack on frame timestamps (Matroska stores milliseconds)
_DECODE_CHUNK = 64    # frames decoded and resized at a time
_DECORD_FORMATS = {"mov", "mp4", "matroska", "webm", "avi"}  # demuxers with a frame index


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


def _pyav_video(path: Path, vinfo: dict, rotation: int, cfg: ClipConfig,
                max_seconds: float | None) -> tuple[np.ndarray, float]:
    """Decode every frame in order with PyAV (times relative to the stream start), turn it
    upright, then resample."""
    images, starts = [], []
    limit = None if max_seconds is None else max_seconds + 1.0
    counts = {"packets": 0, "bad": 0}
    with av.open(str(path)) as src:
        stream = video_stream(src)
        stream.thread_count = 1
        for frame in decoded_frames(src, stream, counts):
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
    check_bad_packets("video", counts)
    if not images:
        raise ValueError("PyAV decoded no video frames")
    starts_arr = np.asarray(starts)
    order = np.argsort(starts_arr, kind="stable")
    end = _end_time(starts_arr[order], 1.0 / (vinfo["fps"] or 25.0))
    idx = order[_source_frames(starts_arr[order], end, cfg.fps, max_seconds)]
    return np.stack(images)[idx], end


def _decord_seeks_reliably(container_format: str) -> bool:
    """decord seeks by timestamp through the container's frame index; formats without one
    (MPEG-TS/PS, FLV, Ogg, ...) come back with frames from the wrong time."""
    return bool(set(container_format.split(",")) & _DECORD_FORMATS)


def read_video(path: Path, pinfo: dict, scan: dict, cfg: ClipConfig,
               max_seconds: float | None) -> tuple[np.ndarray, float, str]:
    """Frames [F, size, size, 3] at cfg.fps, video duration, and the decoder that worked
    (``pinfo`` from ``probe_streams``, ``scan`` from ``scan_packets``)."""
    vinfo, rotation = pinfo["video"], scan["rotation"]
    if _decord_seeks_reliably(scan["format"]):
        try:
            frames, end = _decord_video(path, vinfo, rotation, cfg, max_seconds)
            return frames, end, "decord"
        except Exception as e:  # decord raises its own error types; PyAV decides below
            first = f"decord: {decord_message(e)}"
    else:
        first = f"decord not used for the {scan['format']} format, which has no frame index"
    try:
        frames, end = _pyav_video(path, vinfo, rotation, cfg, max_seconds)
    except Exception as second:
        raise MediaRejected(path, "decode_error", f"video does not decode ({first}; "
                                                  f"PyAV: {second})") from None
    log.debug("%s: %s; decoded with PyAV", path, first)
    return frames, end, "pyav"
