"""Cut fixed-length, synchronised audio-video clips from media files.

Reading (``read_media``)
  Video is decoded by decord at its native size, then centre-cropped to a square and resized
  with torch (decord's own resizing is broken for widths that are not a multiple of 32). Frame
  k of the result is the source frame on screen at video time k / fps, chosen from decord's
  frame timestamps, so any source frame rate is resampled without drift. Every decoded batch is
  checked (3 channels, the native size probed by PyAV); a file decord mangles or cannot open is
  decoded again with PyAV.
  Audio is decoded by decord at its native rate, mixed to mono, and resampled with torchaudio.

Sync: audio sample 0 is placed at video time 0 (the video stream's first frame).
  1. decord applies mp4/mov edit lists (the encoder priming packets are dropped), but not the
     ``skip_samples`` that newer FFmpeg demuxers attach to the first packet of Matroska/WebM
     streams (AAC codec delay, Opus pre-skip): those samples are dropped here, read from PyAV's
     demuxer (without decoding).
  2. The audio and video streams may start at different times (probe's ``start_time_s``):
     a positive audio offset (audio starts later) prepends silence, a negative one drops samples.

Checks: before decoding, one PyAV demux pass (no decoding) rejects a file whose packets stop
  before the duration its header declares ("truncated"); a file that does not open is
  "truncated" when it starts with a container signature, else "not_media".

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
from mmdisco.data.media import MediaError, probe
from mmdisco.io import atomic_path, load_tensors, read_json, save_tensors, write_json

log = logging.getLogger(__name__)

# Named reasons a file is rejected (keys of ``reject_reasons`` in the summary).
REJECT_REASONS = ("not_found", "zero_bytes", "not_media", "truncated", "no_video", "no_audio",
                  "too_short", "decode_error", "timeout")
_TIME_EPS = 1e-3      # s: slack on frame timestamps (Matroska stores milliseconds)
_DECODE_CHUNK = 64    # frames decoded and resized at a time
_TRUNCATION_TOL_S = 0.1  # s: packets may stop this much before the declared duration
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
    """Reject a missing or empty regular file before any decoder sees it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MediaRejected(path, "not_found", "no such file") from None
    if stat.S_ISREG(st.st_mode) and st.st_size == 0:
        raise MediaRejected(path, "zero_bytes", "the file is empty")


def _probe(path: Path) -> dict:
    """Probe the streams with PyAV; a file that does not open is truncated or not media."""
    try:
        return probe(path)
    except MediaError as e:
        if _has_container_signature(path):
            raise MediaRejected(path, "truncated", f"a media container that does not open ({e})")
        raise MediaRejected(path, "not_media", f"not an audio/video file ({e})") from None


def _skip_samples(packet: Any) -> int:
    """Leading samples FFmpeg skips after decoding ``packet`` (its skip_samples side data)."""
    if not packet.has_sidedata("skip_samples"):
        return 0
    data = bytes(packet.get_sidedata("skip_samples"))
    return struct.unpack("<I", data[:4])[0] if len(data) >= 4 else 0


def _scan_packets(path: Path) -> dict:
    """Demux (no decoding) once: each stream's declared and actual end, and decord's extra
    leading audio samples (skip_samples on a first audio packet that is not discarded)."""
    try:
        with av.open(str(path)) as src:
            streams = [st for st in src.streams if st.type in ("video", "audio")]
            audio = src.streams.audio[0].index if src.streams.audio else None
            ends = {st.index: -math.inf for st in streams}
            skip = None
            for packet in src.demux(streams):
                if packet.pts is None or not packet.size:
                    continue
                i = packet.stream.index
                ends[i] = max(ends[i], float((packet.pts + (packet.duration or 0))
                                             * packet.time_base))
                if i == audio and skip is None:
                    skip = 0 if packet.is_discard else _skip_samples(packet)
            extents = [_extent(st, ends[st.index]) for st in streams]
            container_end = (None if not src.duration else
                             ((src.start_time or 0) + src.duration) / av.time_base)
    except av.FFmpegError as e:
        raise MediaRejected(path, "truncated", f"reading its packets failed ({e})") from None
    return {"extents": extents, "container_end": container_end, "audio_skip": skip or 0}


def _extent(stream: Any, end: float) -> dict:
    """A stream's type, declared end (None when unknown), packet end and allowed shortfall."""
    declared = (None if stream.duration is None or stream.time_base is None
                else float(((stream.start_time or 0) + stream.duration) * stream.time_base))
    rate = stream.average_rate if stream.type == "video" else None
    return {"type": stream.type, "declared": declared, "end": end,
            "tol": _TRUNCATION_TOL_S + (1.5 / float(rate) if rate else 0.0)}


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
        raise MediaRejected(path, "truncated", "; ".join(short))


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


def _decord_video(path: Path, vinfo: dict, cfg: ClipConfig, max_seconds: float | None
                  ) -> tuple[np.ndarray, float]:
    """Decode with decord at native size; raise ValueError on a wrongly shaped batch."""
    import decord
    vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    n = len(vr)
    if n == 0:
        raise ValueError("decord found no video frames")
    ts = np.asarray(vr.get_frame_timestamp(list(range(n))), dtype=np.float64).reshape(n, 2)
    order = np.argsort(ts[:, 0], kind="stable")
    end = max(float(ts[:, 1].max()), _end_time(ts[order, 0]))
    idx = order[_source_frames(ts[order, 0], end, cfg.fps, max_seconds)]
    expected = (vinfo["height"], vinfo["width"], 3)
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


def _pyav_video(path: Path, vinfo: dict, cfg: ClipConfig, max_seconds: float | None
                ) -> tuple[np.ndarray, float]:
    """Decode every frame with PyAV (times relative to the stream start), then resample."""
    images, starts = [], []
    limit = None if max_seconds is None else max_seconds + 1.0
    with av.open(str(path)) as src:
        stream = src.streams.video[0]
        stream.thread_count = 1
        for frame in src.decode(stream):
            if frame.time is None:
                continue
            t = float(frame.time) - vinfo["start_time_s"]
            if limit is not None and t > limit:
                break
            starts.append(t)
            images.append(square_resize(frame.to_ndarray(format="rgb24")[None], cfg.size)[0])
    if not images:
        raise ValueError("PyAV decoded no video frames")
    starts_arr = np.asarray(starts)
    order = np.argsort(starts_arr, kind="stable")
    end = _end_time(starts_arr[order], 1.0 / (vinfo["fps"] or 25.0))
    idx = order[_source_frames(starts_arr[order], end, cfg.fps, max_seconds)]
    return np.stack(images)[idx], end


def _read_video(path: Path, pinfo: dict, cfg: ClipConfig, max_seconds: float | None
                ) -> tuple[np.ndarray, float, str]:
    """Frames [F, size, size, 3] at cfg.fps, video duration, and the decoder that worked."""
    vinfo = pinfo["video"]
    try:
        frames, end = _decord_video(path, vinfo, cfg, max_seconds)
        return frames, end, "decord"
    except Exception as first:  # decord raises its own error types; PyAV decides below
        try:
            frames, end = _pyav_video(path, vinfo, cfg, max_seconds)
        except Exception as second:
            raise MediaRejected(path, "decode_error", f"video does not decode (decord: {first}; "
                                                      f"PyAV: {second})") from None
        log.debug("%s: decord failed (%s); decoded with PyAV", path, first)
        return frames, end, "pyav"


# --------------------------------------------------------------------------- audio
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


def _pyav_audio(path: Path, sample_rate: int) -> tuple[np.ndarray, float]:
    """Mono float32 audio decoded by PyAV, and the time of its first sample."""
    resampler = av.AudioResampler(format="fltp", layout="mono", rate=sample_rate)
    chunks, first = [], None
    with av.open(str(path)) as src:
        for frame in src.decode(audio=0):
            if first is None and frame.time is not None:
                first = float(frame.time)
            chunks.extend(f.to_ndarray()[0] for f in resampler.resample(frame))
        chunks.extend(f.to_ndarray()[0] for f in resampler.resample(None))
    if not chunks:
        raise ValueError("PyAV decoded no audio")
    return np.concatenate(chunks).astype(np.float32), first or 0.0


def _shift(audio: torch.Tensor, offset_s: float, sample_rate: int) -> torch.Tensor:
    """Place audio that starts offset_s after video time 0: pad (offset > 0) or trim (< 0)."""
    n = round(offset_s * sample_rate)
    if n > 0:
        return torch.cat([audio.new_zeros(n), audio])
    return audio[-n:]


def _read_audio(path: Path, pinfo: dict, skip: int, cfg: ClipConfig
                ) -> tuple[np.ndarray, dict]:
    """Mono float32 audio at cfg.sample_rate aligned to video time 0, and what was done."""
    ainfo, vstart = pinfo["audio"], pinfo["video"]["start_time_s"]
    native = int(ainfo["sample_rate"])
    try:
        x, astart, decoder = _decord_audio(path, skip), ainfo["start_time_s"], "decord"
    except Exception as first:
        try:
            x, astart = _pyav_audio(path, native)
            decoder = "pyav"
        except Exception as second:
            raise MediaRejected(path, "decode_error", f"audio does not decode (decord: {first}; "
                                                      f"PyAV: {second})") from None
    if not np.isfinite(x).all():
        raise MediaRejected(path, "decode_error", "decoded audio holds NaN or infinite values")
    wave = torch.from_numpy(np.ascontiguousarray(x))
    if native != cfg.sample_rate:
        wave = torchaudio.functional.resample(wave, native, cfg.sample_rate)
    wave = _shift(wave, astart - vstart, cfg.sample_rate)
    return wave.numpy().astype(np.float32, copy=False), {
        "audio_decoder": decoder, "audio_offset_s": astart - vstart,
        "audio_skipped_samples": skip if decoder == "decord" else 0}


# --------------------------------------------------------------------------- public API
def read_media(path: str | Path, cfg: ClipConfig, *, max_seconds: float | None = None
               ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Frames uint8 [F, size, size, 3] at cfg.fps, mono audio float32 [L] at cfg.sample_rate.

    Both start at video time 0 (see the module notes on sync). ``max_seconds`` stops reading
    after that much video. Raises MediaRejected with a named reason for an unusable file.
    """
    path = Path(path)
    _check_file(path)
    pinfo = _probe(path)
    if not pinfo["has_video"]:
        raise MediaRejected(path, "no_video", "the file has no video stream")
    if not pinfo["has_audio"]:
        raise MediaRejected(path, "no_audio", "the file has no audio stream")
    scan = _scan_packets(path)
    _check_complete(path, scan)
    frames, video_s, video_decoder = _read_video(path, pinfo, cfg, max_seconds)
    audio, audio_info = _read_audio(path, pinfo, scan["audio_skip"], cfg)
    if max_seconds is not None:
        audio = audio[:math.ceil(max_seconds * cfg.sample_rate)]
    v, a = pinfo["video"], pinfo["audio"]
    info = {"source_fps": v["fps"], "width": v["width"], "height": v["height"],
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
                                f"{cfg.seconds} s of both")
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
                "detail": f"took longer than file_timeout_s = {cfg.file_timeout_s} s"}
    return {"ok": False, "reason": "decode_error",
            "detail": f"the decoding process died (exit code {w.proc.exitcode})"}


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
