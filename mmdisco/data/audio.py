"""Decode a file's audio to clip audio: mono float32 at the clip rate, in sync with the video.

Audio is streamed through PyAV (decord is the fallback): mixed to mono and resampled to the
clip rate frame by frame, so memory follows the clips, not the source; decoding stops where
the clips stop. A packet that does not decode is skipped (its time stays silent); more than
``checks._MAX_BAD_PACKETS`` of them reject the file as "decode_error".

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
"""
from __future__ import annotations

import logging
from pathlib import Path

# av before decord: PyAV's libvpx encoders fail to open in a process that loaded decord first.
import av
import decord
import numpy as np
import torch
import torchaudio

from mmdisco.config import ClipConfig
from mmdisco.data.checks import (DamagedStream, MediaRejected, check_bad_packets,
                                 decord_message, decoded_frames)

log = logging.getLogger(__name__)

_AUDIO_JUMP_S = 0.01  # s: audio timestamps that jump further are followed (gap or overlap)


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
        for frame in decoded_frames(src, stream, counts):
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
    check_bad_packets("audio", counts)
    if not chunks:
        raise ValueError("PyAV decoded no audio")
    return np.concatenate(chunks).astype(np.float32, copy=False), first or 0.0, {
        "audio_retimed_s": round(retimed / native, 6), "audio_bad_packets": counts["bad"]}


def _decord_audio(path: Path, skip: int) -> np.ndarray:
    """Mono float32 audio at the native rate, less the ``skip`` leading samples decord kept."""
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


def read_audio(path: Path, pinfo: dict, skip: int, cfg: ClipConfig,
               max_seconds: float | None) -> tuple[np.ndarray, dict]:
    """Mono float32 audio at cfg.sample_rate aligned to video time 0, and what was done
    (``pinfo`` from ``probe_streams``, ``skip`` the leading samples decord would keep)."""
    ainfo, vstart = pinfo["audio"], pinfo["video"]["start_time_s"]
    until = None if max_seconds is None else vstart + max_seconds + 1.0
    repairs = {"audio_retimed_s": 0.0, "audio_bad_packets": 0}
    try:
        x, astart, repairs = _pyav_audio(path, cfg.sample_rate, until)
        wave, decoder = torch.from_numpy(x), "pyav"
    except DamagedStream as e:  # decord would stop at the first bad packet: no fallback
        raise MediaRejected(path, "decode_error", f"{e}; re-encode it or download it "
                                                  f"again") from None
    except Exception as first:
        try:
            x, astart, decoder = _decord_audio(path, skip), ainfo["start_time_s"], "decord"
        except Exception as second:
            raise MediaRejected(path, "decode_error", f"audio does not decode (PyAV: {first}; "
                                                      f"decord: {decord_message(second)})"
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
