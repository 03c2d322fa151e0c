"""Stage `extract_clips`: decode every media file, cut fixed-length synchronised clips.

Unusable files are rejected with a reason (`rejects.json`); the stage fails only when nothing
usable is left or the rejected fraction passes `data.clip.max_reject_fraction`.
"""
from __future__ import annotations

from pathlib import Path

import click

from mmdisco import tracking
from mmdisco.config import to_dict
from mmdisco.io import read_json, write_json
from stages.common import load, params_option, user_errors


def manifest_files(raw: Path) -> tuple[list[Path], dict[str, dict] | None]:
    """Absolute media paths listed by ``raw/manifest.json`` and per-file labels, if any."""
    manifest = read_json(raw / "manifest.json")
    root = Path(manifest["root"]) if manifest.get("root") else raw.resolve()
    files = []
    for entry in manifest["files"]:
        path = (root / entry["name"]).resolve()
        if not path.is_relative_to(root.resolve()):
            raise ValueError(f"{raw / 'manifest.json'}: entry {entry['name']!r} leaves {root}")
        files.append(path)
    labels = None
    if manifest.get("labels"):
        records = read_json(raw / manifest["labels"])
        labels = {r["file"]: {k: v for k, v in r.items() if k != "file"} for r in records}
    return files, labels


@click.command("extract-clips")
@params_option
@click.option("--raw", type=click.Path(file_okay=False, path_type=Path), default="data/raw",
              show_default=True, help="output of `acquire`")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default="data/clips",
              show_default=True, help="folder for clip shards, index.json, rejects.json")
@click.option("--metrics", "metrics_path", type=click.Path(dir_okay=False, path_type=Path),
              default="metrics/extract.json", show_default=True)
@user_errors
def main(params_path: Path, raw: Path, out: Path, metrics_path: Path) -> None:
    """Cut fixed-length audio-video clips (data.clip.*) out of the acquired media."""
    from mmdisco.data.clips import extract_clips

    params = load(params_path)
    files, labels = manifest_files(raw)
    summary = extract_clips(files, out, params.data.clip, labels=labels)
    write_json(metrics_path, summary)
    click.echo(f"extract_clips: {summary['clips']} clips from {summary['used_files']} files, "
               f"{summary['rejected_files']} rejected, in {summary['seconds']:.1f} s -> {out}")
    with tracking.stage_run("extract_clips", {"data.clip": to_dict(params.data.clip)}):
        tracking.log_metrics(summary)
        import mlflow
        mlflow.log_artifact(str(out / "rejects.json"))
