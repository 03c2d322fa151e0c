"""A clips folder: shards of clips (``shard_00000.safetensors``, ... of ``shard_size`` rows,
video uint8 [n, F, H, W, 3] and audio float32 [n, L]) and ``index.json``, which gives each
clip's id, source, start, shard and row with the clip settings; ``load_clips`` reads it back.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from mmdisco.config import ClipConfig
from mmdisco.io import child_path, load_tensors, read_json, save_tensors, write_json

INDEX_KEYS = ("id", "source", "start_s", "shard", "row")   # of every clip entry in the index


class ShardWriter:
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


def write_index(folder: Path, cfg: ClipConfig, shards: list[str], sources: dict[str, dict],
                clips: list[dict]) -> None:
    """``folder/index.json``: the clip settings (all but ``workers``, which cannot change the
    clips), the shard names, what was read from each source file, and every clip's entry."""
    write_json(folder / "index.json", {
        "num_clips": len(clips), "fps": cfg.fps, "size": cfg.size,
        "sample_rate": cfg.sample_rate, "num_frames": cfg.num_frames,
        "num_samples": cfg.num_samples, "shards": shards,
        "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "workers"},
        "sources": sources, "clips": clips})


def load_clips(clips_dir: str | Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Video uint8 [N, F, H, W, 3], audio float32 [N, L] and the index of a clips folder."""
    clips_dir = Path(clips_dir)
    if not clips_dir.is_dir():
        raise FileNotFoundError(f"clips folder {clips_dir} is missing; extract the clips into "
                                f"it first")
    index_path = clips_dir / "index.json"
    if not index_path.is_file():
        raise FileNotFoundError(f"{index_path} is missing: {clips_dir} is incomplete; delete it "
                                f"and extract the clips again")
    index = read_json(index_path)
    names = index.get("shards") or sorted({f"shard_{c['shard']:05d}.safetensors"
                                           for c in index["clips"]})
    videos, audios = [], []
    for name in names:
        child_path(clips_dir, name, index_path)   # a tampered index cannot read elsewhere
        if not (clips_dir / name).is_file():
            raise FileNotFoundError(f"{clips_dir / name} is missing: {clips_dir} is incomplete; "
                                    f"delete it and extract the clips again")
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
                         f"inconsistent: delete it and extract the clips again")
    return video, audio, index
