"""Stage `acquire`: produce the raw media files the pipeline starts from.

`data.source: synth` renders the embedded bouncing-ball world to mp4 files (H.264 + AAC) with a
ground-truth record per file; `data.source: folder` records the user's folder of media files in
a manifest with checksums (the files stay where they are).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import click

from mmdisco import tracking
from mmdisco.config import to_dict
from mmdisco.io import atomic_path, write_json
from stages.common import Timer, load, params_option, stage_seed, user_errors

MEDIA_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts",
                  ".flv", ".ogv", ".3gp", ".wmv"}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest_for(root: Path, names: list[str]) -> list[dict]:
    return [{"name": n, "size": (root / n).stat().st_size, "sha256": sha256(root / n)}
            for n in names]


def scan_folder(folder: Path) -> list[str]:
    """Media files under ``folder`` (recursively), as sorted relative paths."""
    names = [p.relative_to(folder).as_posix() for p in folder.rglob("*")
             if p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES]
    return sorted(names)


@click.command("acquire")
@params_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default="data/raw",
              show_default=True, help="folder for media files and manifest.json")
@user_errors
def main(params_path: Path, out: Path) -> None:
    """Render the synthetic world, or record a folder of media files (data.source)."""
    from mmdisco.data.synth import render_world

    params = load(params_path)
    data, timer = params.data, Timer()
    if data.source == "folder":
        folder = Path(data.folder).expanduser().resolve()
        if not folder.is_dir():
            raise click.ClickException(f"data.folder: '{data.folder}' is not a folder; create it "
                                       f"or point data.folder at your media files")
        names = scan_folder(folder)
        if not names:
            raise click.ClickException(f"data.folder: no media files ({', '.join(sorted(MEDIA_SUFFIXES))})"
                                       f" found under {folder}")
        with atomic_path(out) as tmp:
            tmp.mkdir()
            write_json(tmp / "manifest.json", {"source": "folder", "root": str(folder),
                                               "files": manifest_for(folder, names)})
    else:
        with atomic_path(out) as tmp:
            render_world(tmp, data.synth, seed=stage_seed(params.seed, "acquire"),
                         workers=data.clip.workers)
            names = sorted(p.name for p in tmp.glob("*.mp4"))
            write_json(tmp / "manifest.json", {"source": "synth", "root": None,
                                               "labels": "truth.json",
                                               "files": manifest_for(tmp, names)})
    summary = {"files": len(names), "seconds": timer.seconds}
    click.echo(f"acquire: {len(names)} files from {data.source} in {summary['seconds']} s -> {out}")
    with tracking.stage_run("acquire", {"seed": params.seed, "data": to_dict(data)}):
        tracking.log_metrics(summary)
