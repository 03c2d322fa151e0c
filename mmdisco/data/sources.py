"""The media files the pipeline starts from, by ``data.source``, listed in ``manifest.json``
with each file's size and sha256 (``mmdisco.data.manifest`` reads it back).

``record_synth`` renders the embedded world into a folder (mp4 files and their ground truth,
``truth.json``); ``record_folder`` records a user's folder as it is (the files stay where they
are; every entry is listed or skipped with its reason, ``mmdisco.data.folder``), with each
file's caption when a captions CSV is given.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from mmdisco.config import DataConfig, SynthConfig
from mmdisco.checksums import sha256_file
from mmdisco.data.folder import (FolderError, caption_files, read_captions, scan_folder,
                                 skip_counts, skip_record)
from mmdisco.data.manifest import MANIFEST
from mmdisco.data.synth import render_world
from mmdisco.io import atomic_path, write_json


@dataclasses.dataclass
class Recorded:
    """What a manifest lists: file names, skipped entries and caption counts (folder only)."""

    names: list[str]
    skipped: list[dict] = dataclasses.field(default_factory=list)
    captions: dict[str, int] = dataclasses.field(default_factory=dict)


def file_entries(root: Path, names: list[str]) -> list[dict]:
    """Manifest entries ``{"name", "size", "sha256"}`` of files under ``root``."""
    return [{"name": n, "size": (root / n).stat().st_size, "sha256": sha256_file(root / n)}
            for n in names]


def _hash_listed(folder: Path, names: list[str], skipped: list[dict]) -> list[dict]:
    """Manifest entries of ``names``; a file that fails to read is moved to ``skipped``."""
    entries = []
    for name in names:
        try:
            entries.append(file_entries(folder, [name])[0])
        except OSError as e:
            skipped.append(skip_record(name, "unreadable", f"cannot be read ({e.strerror or e}); "
                                                           f"fix its permissions or copy it "
                                                           f"again"))
    skipped.sort(key=lambda r: r["name"])
    return entries


def record_synth(out: Path, cfg: SynthConfig, *, seed: int, workers: int) -> Recorded:
    """Render the world into ``out`` with its manifest, atomically."""
    with atomic_path(out) as tmp:
        render_world(tmp, cfg, seed=seed, workers=workers)
        names = sorted(p.name for p in tmp.glob("*.mp4"))
        write_json(tmp / MANIFEST, {"source": "synth", "root": None, "labels": "truth.json",
                                    "files": file_entries(tmp, names)})
    return Recorded(names)


def record_folder(out: Path, data: DataConfig) -> Recorded:
    """Write ``out/manifest.json`` for the media under ``data.folder`` (with the captions of
    ``data.captions``); FolderError when the folder or the CSV cannot be used."""
    folder = Path(data.folder).expanduser().resolve()
    if not folder.is_dir():
        raise FolderError(f"data.folder: '{data.folder}' is not a folder; create it or point "
                          f"data.folder at your media files")
    captions = read_captions(Path(data.captions).expanduser(), folder) if data.captions \
        else None
    names, skipped = scan_folder(folder)
    files = _hash_listed(folder, names, skipped)
    if not files:
        found = (f"all {len(skipped)} entries are skipped ({skip_counts(skipped)}), e.g. "
                 + "; ".join(f"'{r['name']}': {r['detail']}" for r in skipped[:3])
                 if skipped else "the folder is empty")
        raise FolderError(f"data.folder: no media files found under {folder}: {found}; put "
                          f"your video files (with sound) there")
    counts = caption_files(files, captions) if captions is not None else {}
    with atomic_path(out) as tmp:
        tmp.mkdir()
        write_json(tmp / MANIFEST, {"source": "folder", "root": str(folder), "files": files,
                                    "skipped": skipped})
    return Recorded([f["name"] for f in files], skipped, counts)
