"""Things to look at and listen to: contact sheets and mp4 files with sound."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from einops import rearrange, repeat
from PIL import Image

from mmdisco.data.media import write_av
from mmdisco.io import atomic_path


def upscale(video: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement of uint8 frames ``[..., H, W, 3]``."""
    return repeat(video, "... h w c -> ... (h a) (w b) c", a=factor, b=factor)


def spectrogram_image(mel_db: np.ndarray, width: int, height: int) -> np.ndarray:
    """A ``[height, width, 3]`` uint8 picture of a dB mel ``[T, M]`` (low pitch at the bottom)."""
    lo, hi = float(mel_db.min()), float(mel_db.max())
    x = (mel_db - lo) / max(hi - lo, 1e-6)
    img = np.flipud(rearrange(x, "t m -> m t"))
    rows = np.linspace(0, img.shape[0] - 1, height).round().astype(int)
    cols = np.linspace(0, img.shape[1] - 1, width).round().astype(int)
    grey = (img[rows][:, cols] * 255).astype(np.uint8)
    return np.stack([grey, (grey * 0.6).astype(np.uint8), (255 - grey) // 4], axis=-1)


def contact_sheet(videos: np.ndarray, mel_db: np.ndarray, *, scale: int = 4,
                  gap: int = 2) -> np.ndarray:
    """One row per pair: the frames side by side over the spectrogram of the same second."""
    n, f, h, w, _ = videos.shape
    frames = upscale(videos, scale)                          # [N, F, hS, wS, 3]
    strip_w = f * w * scale
    rows = []
    for i in range(n):
        strip = rearrange(frames[i], "f h w c -> h (f w) c")
        spec = spectrogram_image(mel_db[i], strip_w, h * scale)
        rows.append(np.concatenate([strip, spec, np.zeros((gap, strip_w, 3), np.uint8)]))
    return np.concatenate(rows)


def save_png(path: Path, image: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def write_pairs(folder: Path, videos: np.ndarray, audio: np.ndarray, *, fps: int,
                sample_rate: int, prefix: str, scale: int | None = None,
                names: list[str] | None = None) -> list[Path]:
    """Each pair as ``<prefix>_NNN.mp4``, or ``<prefix>_<names[i]>.mp4``; frames enlarged
    ``scale``× so a player shows them (default: to at least 128 pixels high, ×8 for 16)."""
    if scale is None:
        scale = max(1, 128 // int(videos.shape[-3])) if len(videos) else 1
    paths = []
    for i in range(len(videos)):
        path = folder / f"{prefix}_{names[i] if names is not None else f'{i:03d}'}.mp4"
        write_av(path, upscale(videos[i], scale), fps, audio[i], sample_rate)
        paths.append(path)
    return paths
