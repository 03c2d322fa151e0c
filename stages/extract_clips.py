"""Stage `extract_clips`: decode every media file, cut fixed-length synchronised clips.

Unusable files are rejected with a reason (`rejects.json`); the stage fails only when nothing
usable is left or the rejected fraction passes `data.clip.max_reject_fraction`.
"""
from __future__ import annotations

from pathlib import Path

import click

from mmdisco import tracking
from mmdisco.config import to_dict
from mmdisco.data.clips import extract_clips
from mmdisco.data.manifest import StaleManifest, manifest_files
from mmdisco.io import write_json
from stages.common import load, params_option, user_errors


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
    params = load(params_path)
    try:
        files, labels = manifest_files(raw, params.data)
    except StaleManifest as e:
        raise StaleManifest(f"{e} (rerun `acquire`: dvc repro -f -s acquire)") from None
    summary = extract_clips(files, out, params.data.clip, labels=labels)
    write_json(metrics_path, summary)
    click.echo(f"extract_clips: {summary['clips']} clips from {summary['used_files']} files, "
               f"{summary['rejected_files']} rejected, in {summary['seconds']:.1f} s -> {out}")
    with tracking.stage_run("extract_clips", {"data.clip": to_dict(params.data.clip)}):
        tracking.log_metrics(summary)
        tracking.log_artifact(out / "rejects.json")
