"""Cut fixed-length, synchronised audio-video clips from media files.

Reading (``read_media``): the file is screened first (``mmdisco.data.checks``), then its
video (``mmdisco.data.video``) and audio (``mmdisco.data.audio``) are decoded, both starting
at video time 0. Nothing is read past ``checks.horizon``: 1 s after the video ends (by its
packets or its header, the earlier), so a damaged timestamp far ahead cannot make hours of
output.

Extraction (``extract_clips``)
  Files are read by a small pool of worker processes (``mmdisco.data.pool``; a script
  calling it needs the ``if __name__ == "__main__":`` guard), one file per task; a file that
  takes longer than ``file_timeout_s`` has its worker killed and replaced. Results are written
  in sorted file order, so they do not depend on the number of workers, into one folder,
  atomically (``mmdisco.data.shards``): shards of clips (safetensors), ``index.json`` and
  ``rejects.json``. Every unusable file is rejected with a named reason (``REJECT_REASONS``);
  a failed run writes only ``<out>.rejects.json``.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np

from mmdisco.config import ClipConfig
from mmdisco.data.audio import read_audio
from mmdisco.data.checks import (MediaRejected, check_complete, check_file, check_streams,
                                 horizon, probe_streams, scan_packets)
from mmdisco.data.pool import WorkerLost, WorkerStartError, run_pool
from mmdisco.data.shards import INDEX_KEYS, ShardWriter, write_index
from mmdisco.data.video import read_video
from mmdisco.io import atomic_path, write_json

log = logging.getLogger(__name__)

# A label field "<x>_times" holds times in seconds of file time; each clip gets "<x>_frames"
# instead, the clip frames of the times inside it.
TIMES, FRAMES = "_times", "_frames"


class ClipExtractionError(RuntimeError):
    """Too few usable files: no clip at all, or more rejects than ``max_reject_fraction``."""


# --------------------------------------------------------------------------- one file
def read_media(path: str | Path, cfg: ClipConfig, *, max_seconds: float | None = None
               ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Frames uint8 [F, size, size, 3] at cfg.fps, mono audio float32 [L] at cfg.sample_rate.

    Both start at video time 0 (see ``mmdisco.data.audio`` on sync). ``max_seconds`` stops
    reading after that much video (and nothing is read past ``checks.horizon`` in any case).
    Raises MediaRejected with a named reason for an unusable file.
    """
    path = Path(path)
    check_file(path)
    pinfo = probe_streams(path)
    if not pinfo["has_video"]:
        raise MediaRejected(path, "no_video", "the file has no video stream (audio only); the "
                                              "pipeline needs video with sound")
    if not pinfo["has_audio"]:
        raise MediaRejected(path, "no_audio", "the file has no audio stream (a silent video); "
                                              "the pipeline needs video with sound")
    scan = scan_packets(path)
    check_streams(path, scan)
    if scan["video_info"] is not None:  # a cover picture came first: describe the video
        pinfo = {**pinfo, "video": scan["video_info"]}
    check_complete(path, scan)
    until = horizon(scan, pinfo["video"]["start_time_s"])
    if max_seconds is None or (until is not None and until < max_seconds):
        max_seconds = until
    frames, video_s, video_decoder = read_video(path, pinfo, scan, cfg, max_seconds)
    audio, audio_info = read_audio(path, pinfo, scan["audio_skip"], cfg, max_seconds)
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


def _lost_record(lost: WorkerLost, cfg: ClipConfig) -> dict:
    """The reject record of a file whose worker hung or died."""
    if lost.timed_out:
        return {"ok": False, "reason": "timeout",
                "detail": f"took longer than file_timeout_s = {cfg.file_timeout_s} s (hung or "
                          f"slow to decode); raise data.clip.file_timeout_s if it is just long"}
    return {"ok": False, "reason": "decode_error",
            "detail": f"the decoding process died (exit code {lost.exitcode}): the decoder "
                      f"crashed or ran out of memory on this file; re-encode it"}


def _file_results(files: list[Path], cfg: ClipConfig) -> Iterator[tuple[int, dict]]:
    """(index, _process_file's record) of every file in order, read by the worker pool."""
    results = run_pool(_process_file, [str(f) for f in files], (cfg,), workers=cfg.workers,
                       timeout_s=cfg.file_timeout_s)
    with contextlib.closing(results):
        try:
            for i, result in results:
                yield i, _lost_record(result, cfg) if isinstance(result, WorkerLost) else result
        except WorkerStartError:
            raise ClipExtractionError(
                "a decoding worker process failed to start; a script that calls "
                "extract_clips must do so under `if __name__ == '__main__':` "
                "(the forkserver workers re-import the main module)") from None


# --------------------------------------------------------------------------- many files
def _clip_labels(label: dict, start_s: float, cfg: ClipConfig) -> dict:
    """A file's labels for the clip at ``start_s``: each "<x>_times" field becomes the clip's
    "<x>_frames" (nearest clip frame of each time inside it, replacing a file's own
    "<x>_frames"); every other field is copied."""
    timed = [k[:-len(TIMES)] for k in label if k.endswith(TIMES)]
    windowed = {x + suffix for x in timed for suffix in (TIMES, FRAMES)}
    out = {k: copy.deepcopy(v) for k, v in label.items() if k not in windowed}
    for x in timed:
        ks = {math.floor((float(t) - start_s) * cfg.fps + 0.5) for t in label[x + TIMES]}
        out[x + FRAMES] = sorted(k for k in ks if 0 <= k < cfg.num_frames)
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
        bad = sorted(set(label) & set(INDEX_KEYS))
        if bad:
            raise ValueError(f"labels['{name}'] uses reserved key(s) {', '.join(bad)}; "
                             f"rename them")
    return files


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


def _add_windows(source: str, windows: list, shards: ShardWriter, label: dict,
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

    ``labels`` maps a file name to fields copied into each of its clips' index entries; a
    field named "<x>_times" (times in seconds) is windowed into the clip's "<x>_frames".
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
        shards = ShardWriter(tmp, cfg.shard_size)
        with contextlib.closing(_file_results(files, cfg)) as results:
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
        write_index(tmp, cfg, shards.shards, sources, entries)
        write_json(tmp / "rejects.json", rejects)
    _rejects_path(out_dir).unlink(missing_ok=True)
    summary = {"files": len(files), "used_files": len(sources), "rejected_files": len(rejects),
               "clips": len(entries), "reject_reasons": dict(Counter(r["reason"] for r in rejects)),
               "seconds": time.perf_counter() - t0}
    log.info("extracted %d clips from %d of %d files in %.1f s", summary["clips"], len(sources),
             len(files), summary["seconds"])
    return summary
