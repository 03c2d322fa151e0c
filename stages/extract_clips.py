"""Stage `extract_clips`: decode every media file, cut fixed-length synchronised clips.

Unusable files are rejected with a reason (`rejects.json`); the stage fails only when nothing
usable is left or the rejected fraction passes `data.clip.max_reject_fraction`.
"""
from __future__ import annotations

from pathlib import Path

import click

from mmdisco import tracking
from mmdisco.config import DataConfig, to_dict
from mmdisco.io import child_path, read_json, write_json
from stages.common import load, params_option, user_errors


def manifest_files(raw: Path, data: DataConfig | None = None
                   ) -> tuple[list[Path], dict[str, dict] | None]:
    """Absolute media paths listed by ``raw/manifest.json`` and per-file labels, if any.

    Names in the manifest must stay inside their folder (no absolute path, no ``..``), and the
    folder itself is ``raw`` (synth) or ``data.folder`` (folder source), so a tampered manifest
    cannot make the stage read files elsewhere.
    """
    source = raw / "manifest.json"
    manifest = read_json(source)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        raise ValueError(f"{source} has no 'files' list; rerun `acquire` (dvc repro -f -s acquire)")
    root = Path(manifest["root"]) if manifest.get("root") else raw.resolve()
    if data is not None:
        folder = data.source == "folder" and data.folder
        if folder and not Path(data.folder).expanduser().is_dir():
            raise ValueError(f"data.folder: '{data.folder}' is not a folder; point data.folder "
                             f"at your media files (then rerun `acquire`)")
        expected = Path(data.folder).expanduser().resolve() if folder else raw.resolve()
        if root != expected:
            want = (f"data.folder ({data.folder!r})" if folder
                    else f"{raw} itself (data.source: {data.source})")
            raise ValueError(f"{source}: it lists media under {str(root)!r}, but params say "
                             f"{want}; the manifest is stale or was edited: rerun `acquire` "
                             f"(dvc repro -f -s acquire)")
    files = [child_path(root, entry.get("name") if isinstance(entry, dict) else entry, source)
             for entry in manifest["files"]]
    labels = None
    if manifest.get("labels"):
        records = read_json(child_path(raw, manifest["labels"], source))
        labels = {r["file"]: {k: v for k, v in r.items() if k != "file"} for r in records}
    captioned = {Path(e["name"]).name: e["caption"] for e in manifest["files"]
                 if isinstance(e, dict) and "caption" in e}
    if captioned:   # a folder's captions CSV, recorded per file by `acquire`
        labels = labels or {}
        for name, caption in captioned.items():
            labels.setdefault(name, {})["caption"] = caption
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
    files, labels = manifest_files(raw, params.data)
    summary = extract_clips(files, out, params.data.clip, labels=labels)
    write_json(metrics_path, summary)
    click.echo(f"extract_clips: {summary['clips']} clips from {summary['used_files']} files, "
               f"{summary['rejected_files']} rejected, in {summary['seconds']:.1f} s -> {out}")
    with tracking.stage_run("extract_clips", {"data.clip": to_dict(params.data.clip)}):
        tracking.log_metrics(summary)
        import mlflow
        mlflow.log_artifact(str(out / "rejects.json"))
