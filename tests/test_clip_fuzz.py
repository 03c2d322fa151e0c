"""Fuzzing the clip reader: valid files with random byte flips, overwritten blocks and
truncations (seeded) go through ``extract_clips``; the run must not crash, and every file must
come out either used (well-formed clips) or rejected with a named reason."""
from __future__ import annotations

import json
import re
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from media_corpus import CFG, _usable  # noqa: E402

from mmdisco.data.checks import REJECT_REASONS  # noqa: E402
from mmdisco.data.clips import extract_clips  # noqa: E402
from mmdisco.data.shards import load_clips  # noqa: E402

SEED = 20250101
VARIANTS = 40
BASES = {  # name -> writer options: three demuxers (mov, matroska, avi) and their codecs
    "base.mp4": {"fps": 24, "sr": 44100, "layout": "stereo"},
    "base.webm": {"fps": 30, "sr": 48000, "vcodec": "libvpx-vp9", "acodec": "libopus",
                  "vopts": {"deadline": "realtime", "cpu-used": "8"}},
    "base.avi": {"fps": 25, "sr": 44100, "vcodec": "mpeg4", "acodec": "libmp3lame"},
}


def mutate(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """One random corruption of ``data`` and a description of it."""
    buf = bytearray(data)
    kind = rng.choice(["flip", "flip_head", "block", "truncate", "flip_truncate"])
    if kind in ("flip", "flip_truncate"):
        n = int(rng.integers(1, 40))
        for pos in rng.integers(0, len(buf), n):
            buf[pos] ^= 1 << int(rng.integers(8))
        what = f"{n} bit flips"
    if kind == "flip_head":   # the container header and first packets
        n = int(rng.integers(1, 8))
        for pos in rng.integers(0, min(len(buf), 2048), n):
            buf[pos] = int(rng.integers(256))
        what = f"{n} bytes replaced in the first 2 kB"
    if kind == "block":
        size = int(rng.integers(16, 1024))
        pos = int(rng.integers(0, len(buf) - size))
        buf[pos:pos + size] = rng.bytes(size) if rng.random() < 0.5 else bytes(size)
        what = f"{size} bytes overwritten at {pos}"
    if kind in ("truncate", "flip_truncate"):
        cut = int(rng.integers(1, len(buf)))
        del buf[cut:]
        what = ("" if kind == "truncate" else what + ", ") + f"cut at {cut} of {len(data)} bytes"
    return bytes(buf), what


def make_variants(folder: Path, count: int, seed: int) -> dict[str, str]:
    """The valid bases and ``count`` corrupted copies in ``folder``: {name: description}."""
    for name, options in BASES.items():
        _usable(folder / name, seconds=2.2, **options)
    rng = np.random.default_rng(seed)
    made = {name: "valid" for name in BASES}
    for i in range(count):
        base = list(BASES)[i % len(BASES)]
        data, what = mutate((folder / base).read_bytes(), rng)
        name = f"fuzz_{i:03d}{Path(base).suffix}"
        (folder / name).write_bytes(data)
        made[name] = f"{base}: {what}"
    return made


def test_fuzzed_files_are_used_or_rejected(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    made = make_variants(media, VARIANTS, SEED)
    cfg = replace(CFG, file_timeout_s=20.0)
    summary = extract_clips([media / n for n in made], tmp_path / "clips", cfg)

    video, audio, index = load_clips(tmp_path / "clips")  # checks shards against the index
    rejects = json.loads((tmp_path / "clips" / "rejects.json").read_text())
    used, rejected = set(index["sources"]), [r["source"] for r in rejects]
    assert len(rejected) == len(set(rejected)) and not used & set(rejected)
    assert used | set(rejected) == set(made), "files missing from index.json + rejects.json"
    assert summary["files"] == len(made) and summary["used_files"] == len(used)
    assert set(BASES) <= used                              # the originals are fine
    for r in rejects:
        assert r["reason"] in REJECT_REASONS and r["detail"], r
        assert str(media) not in r["detail"]
        assert not re.search(r"\[\d\d:\d\d:\d\d\]", r["detail"]), r  # no log clock times
    assert np.isfinite(audio.numpy()).all() and np.abs(audio.numpy()).max() <= 1.5
    assert video.shape[1:] == (CFG.num_frames, CFG.size, CFG.size, 3)
    # a corrupted copy never yields more clips than its 2.2 s original holds
    per_file = Counter(c["source"] for c in index["clips"])
    assert max(per_file.values()) <= 2
    print("fuzz outcomes:", dict(Counter(
        ["used"] * (len(used) - len(BASES)) + [r["reason"] for r in rejects])))


if __name__ == "__main__":   # a longer run: python tests/test_clip_fuzz.py N SEED
    import shutil
    import tempfile

    n, seed = int(sys.argv[1]), int(sys.argv[2])
    root = Path(tempfile.mkdtemp())
    made = make_variants(root, n, seed)
    s = extract_clips([root / k for k in made], root / "clips", replace(CFG, file_timeout_s=20))
    rejects = json.loads((root / "clips" / "rejects.json").read_text())
    for r in rejects:
        print(r["source"], made[r["source"]], "->", r["reason"], r["detail"][:160])
    print(s)
    shutil.rmtree(root)
