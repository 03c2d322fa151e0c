"""Stage `acquire`: produce the raw media files the pipeline starts from.

`data.source: synth` renders the embedded bouncing-ball world to mp4 files (H.264 + AAC) with a
ground-truth record per file; `data.source: folder` records the user's folder of media files in
a manifest with checksums (the files stay where they are).

Every entry under ``data.folder`` (searched recursively) is accounted for in the manifest:
``files`` lists what `extract_clips` will read, ``skipped`` lists the rest, each with its reason
(``mmdisco.data.folder``). Whether a file holds usable video with sound is decided from its
content by `extract_clips`, which rejects an unusable one with its reason in ``rejects.json``;
skipped entries do not count towards ``data.clip.max_reject_fraction``.
"""
from __future__ import annotations

from pathlib import Path

import click

from mmdisco import tracking
from mmdisco.config import Params, to_dict
from mmdisco.data.folder import FolderError, skip_counts
from mmdisco.data.manifest import MANIFEST
from mmdisco.data.sources import Recorded, record_folder, record_synth
from mmdisco.seeds import stage_seed
from stages.common import Timer, load, params_option, user_errors


def _record(params: Params, out: Path) -> Recorded:
    data = params.data
    if data.source != "folder":
        return record_synth(out, data.synth, seed=stage_seed(params.seed, "acquire"),
                            workers=data.clip.workers)
    try:
        return record_folder(out, data)
    except FolderError as e:    # the user's folder or CSV: one line naming what to fix
        raise click.ClickException(str(e)) from None


def _report(source: str, got: Recorded, seconds: float, out: Path) -> str:
    line = f"acquire: {len(got.names)} files from {source} in {seconds} s -> {out}"
    if got.skipped:
        line += (f"; {len(got.skipped)} skipped ({skip_counts(got.skipped)}), each with its "
                 f"reason under \"skipped\" in {out / MANIFEST}")
    counts = got.captions
    if counts.get("uncaptioned") or counts.get("captions_unmatched"):
        line += (f"; captions: {counts['captioned']} files captioned, {counts['uncaptioned']} "
                 f"without a caption (given the empty caption), {counts['captions_unmatched']} "
                 f"CSV rows naming no listed file")
    return line


@click.command("acquire")
@params_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default="data/raw",
              show_default=True, help="folder for media files and manifest.json")
@user_errors
def main(params_path: Path, out: Path) -> None:
    """Render the synthetic world, or record a folder of media files (data.source)."""
    params = load(params_path)
    timer = Timer()
    got = _record(params, out)
    summary = {"files": len(got.names), "skipped": len(got.skipped), **got.captions,
               "seconds": timer.seconds}
    click.echo(_report(params.data.source, got, summary["seconds"], out))
    with tracking.stage_run("acquire", {"seed": params.seed, "data": to_dict(params.data)}):
        tracking.log_metrics(summary)
