"""Screen a media file before and while it is decoded: every way it can fail to give clips has
a named reason (``REJECT_REASONS``), carried by ``MediaRejected``.

Before decoding, one PyAV demux pass (``scan_packets``, decoding only the first video frame,
for its rotation) rejects a file whose packets stop before the duration its header declares
("truncated"), whose only picture is a cover (attached_pic: "no_video"), or whose video or
audio stream has no packets ("no_video", "no_audio"); a file that does not open is
"truncated" when it starts with a container signature, else "not_media"; a folder is
"not_media". While decoding, a stream with more than ``_MAX_BAD_PACKETS`` of its packets
undecodable is given up (``DamagedStream``). Every reject detail says what is wrong and what
to do.
"""
from __future__ import annotations

import math
import os
import re
import stat
import struct
from pathlib import Path
from typing import Any

import av

from mmdisco.data.media import MediaError, describe_video, probe

# Named reasons a file is rejected (keys of ``reject_reasons`` in the summary).
REJECT_REASONS = ("not_found", "zero_bytes", "not_media", "truncated", "no_video", "no_audio",
                  "too_short", "decode_error", "timeout")
_TRUNCATION_TOL_S = 0.1  # s: packets may stop this much before the declared duration
_MAX_BAD_PACKETS = 0.05  # fraction of a stream's packets that may fail to decode (skipped)


class MediaRejected(RuntimeError):
    """A media file cannot give clips; ``reason`` is one of ``REJECT_REASONS``."""

    def __init__(self, path: str | Path, reason: str, detail: str):
        super().__init__(f"{path}: {reason}: {detail}")
        self.path, self.reason, self.detail = str(path), reason, detail


# --------------------------------------------------------------------------- before opening
def _has_container_signature(path: Path) -> bool:
    """True when the first bytes look like a known media container (mp4/mov, mkv/webm, ...)."""
    with open(path, "rb") as f:
        head = f.read(12)
    return (head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip")
            or head[:4] in (b"\x1a\x45\xdf\xa3", b"RIFF", b"OggS", b"FLV\x01")
            or head[:3] == b"ID3")


def check_file(path: Path) -> None:
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


def probe_streams(path: Path) -> dict:
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


# --------------------------------------------------------------------------- the demux pass
def video_stream(src: Any) -> Any:
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


def scan_packets(path: Path) -> dict:
    """Demux once: the video stream (cover pictures skipped), each stream's declared and actual
    end and packet count, the container format, the video's display rotation (its first frame
    is decoded), and decord's extra leading audio samples (skip_samples on a first audio
    packet that is not discarded)."""
    try:
        with av.open(str(path)) as src:
            video = video_stream(src)
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
            video_info = (describe_video(video, container_s)
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


def check_streams(path: Path, scan: dict) -> None:
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


def check_complete(path: Path, scan: dict) -> None:
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


def horizon(scan: dict, video_start: float) -> float | None:
    """Video time past which nothing is read: 1 s after the video ends by its packets, or by
    its header when that is earlier, so that a timestamp far ahead (a damaged packet) cannot
    make hours of held frames or inserted silence."""
    video = next(x for x in scan["extents"] if x["type"] == "video")
    ends = [e for e in (video["end"], video["declared"], scan["container_end"])
            if e is not None and math.isfinite(e)]
    return min(ends) - video_start + 1.0 if ends else None


# --------------------------------------------------------------------------- while decoding
def decoded_frames(src: Any, stream: Any, counts: dict) -> Any:
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


class DamagedStream(ValueError):
    """Too many packets of a stream do not decode (another decoder would not do better)."""


def check_bad_packets(kind: str, counts: dict) -> None:
    """Give up on a stream when more than _MAX_BAD_PACKETS of its packets do not decode."""
    if counts["bad"] > _MAX_BAD_PACKETS * max(counts["packets"], 1):
        raise DamagedStream(f"{counts['bad']} of {counts['packets']} {kind} packets do "
                            f"not decode: the {kind} data is damaged")


def decord_message(e: Exception) -> str:
    """decord's error without its log prefixes ("[12:34:56] /src/....cc:123: "): the reject
    details must not change from run to run."""
    return re.sub(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ", "", str(e)).strip()
