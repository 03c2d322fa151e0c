"""Captioned media files in a folder: what a user's real dataset looks like to the pipeline
(a coloured square that drops, a tone on each landing, a captions CSV)."""
from __future__ import annotations

import csv

import numpy as np

from mmdisco.data.media import write_av

FPS, SIZE, RATE = 25, 16, 8000      # clips of 0.64 s: 16 frames of 16×16 and 5120 samples
COLOURS = {"red": (230, 40, 40), "green": (40, 220, 60), "blue": (50, 60, 230),
           "yellow": (230, 220, 40)}


def media_folder(root, n: int = 8):
    """``n`` files of 1.28 s (two clips each): a coloured square that drops and a tone on each
    landing; a captions CSV for all but the last file (which gets the empty caption)."""
    root.mkdir()
    rows = []
    for i in range(n):
        name, colour = list(COLOURS.items())[i % 4]
        frames = np.full((32, 32, 32, 3), 20, np.uint8)
        for f in range(32):
            y = 4 + (f * 3) % 20
            frames[f, y:y + 8, 12:20] = colour
        t = np.arange(int(1.28 * 16000)) / 16000
        tone = 0.4 * np.sin(2 * np.pi * (300 + 200 * (i % 4)) * t) * (np.mod(t, 0.27) < 0.08)
        write_av(root / f"clip{i}.mp4", frames, FPS, tone.astype(np.float32), 16000)
        if i < n - 1:
            rows.append({"file": f"clip{i}.mp4", "caption": f"a {name} square with a tone"})
    with open(root.parent / "captions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    return root, root.parent / "captions.csv"
