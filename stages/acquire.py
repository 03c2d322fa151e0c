"""Stage `acquire`: produce the raw media files the pipeline starts from.

`data.source: synth` renders the embedded bouncing-ball world to mp4 files (H.264 + AAC) with a
ground-truth record per file; `data.source: folder` records the user's folder of media files in
a manifest with checksums (the files stay where they are).

Every entry under ``data.folder`` (searched recursively) is accounted for in the manifest:
``files`` lists what `extract_clips` will read, ``skipped`` lists the rest, each as
``{"name", "reason", "detail"}`` (``reason`` one of ``SKIP_REASONS``). There is no allow-list
of media suffixes: whether a file holds usable video with sound is decided from its content
by `extract_clips`, which rejects an unusable one (audio only, silent video, damaged, not
media at all) with its reason in ``rejects.json``. `acquire` only sets aside what is not
media by its kind or name, without opening it: hidden and operating-system files and folders,
anything that is not a regular file (a named pipe would block its reader), files it cannot
read, unfinished downloads, and files whose suffix says text, document, image, subtitle,
archive or code (``NOT_MEDIA_SUFFIXES``). Those do not count towards
``data.clip.max_reject_fraction``.
"""
from __future__ import annotations

import hashlib
import os
import stat
from collections import Counter
from pathlib import Path

import click

from mmdisco import tracking
from mmdisco.config import to_dict
from mmdisco.io import atomic_path, write_json
from mmdisco.seeds import stage_seed
from stages.common import Timer, load, params_option, user_errors

# Why a folder entry is not listed for `extract_clips` (the "reason" of a skipped entry).
SKIP_REASONS = ("hidden", "system", "not_regular", "unreadable", "partial_download",
                "not_media")

# Suffixes of files that never hold video with sound, by kind. Anything else (including
# audio-only suffixes such as .m4a or .mp3, and no suffix at all) goes to `extract_clips`,
# which decides from the content.
NOT_MEDIA_SUFFIXES = {
    suffix: kind
    for kind, suffixes in {
        "text or document": (".txt", ".md", ".rst", ".csv", ".tsv", ".json", ".jsonl", ".yaml",
                             ".yml", ".toml", ".ini", ".cfg", ".xml", ".html", ".htm", ".log",
                             ".nfo", ".pdf", ".doc", ".docx", ".odt", ".rtf", ".xls", ".xlsx",
                             ".ods", ".ppt", ".pptx", ".key", ".pages", ".numbers"),
        "subtitles or sidecar data": (".srt", ".vtt", ".ass", ".ssa", ".sbv", ".lrc", ".xmp",
                                      ".aae", ".thm", ".md5", ".sha1", ".sha256", ".sfv",
                                      ".torrent", ".dvc"),
        "still image": (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp",
                        ".heic", ".heif", ".avif", ".svg", ".ico", ".psd", ".dng", ".cr2",
                        ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2"),
        "archive": (".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".zst", ".7z", ".rar"),
        "code or data": (".py", ".ipynb", ".sh", ".bat", ".ps1", ".exe", ".dll", ".so",
                         ".dylib", ".pkl", ".pt", ".pth", ".ckpt", ".npy", ".npz",
                         ".safetensors", ".h5", ".db", ".sqlite"),
    }.items()
    for suffix in suffixes
}
PARTIAL_SUFFIXES = {".part", ".partial", ".crdownload", ".download", ".opdownload"}
# Metadata that operating systems and NAS boxes leave in folders (compared in lower case).
SYSTEM_FILES = {"thumbs.db", "ehthumbs.db", "ehthumbs_vista.db", "desktop.ini", "icon\r"}
SYSTEM_FOLDERS = {"__macosx", "@eadir", "#recycle", "$recycle.bin", "system volume information",
                  "lost+found"}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest_for(root: Path, names: list[str]) -> list[dict]:
    return [{"name": n, "size": (root / n).stat().st_size, "sha256": sha256(root / n)}
            for n in names]


def _skip(name: str, reason: str, detail: str) -> dict:
    return {"name": name, "reason": reason, "detail": detail}


def _file_kind(mode: int) -> str:
    return ("a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a file")


def _classify_folder(rel: str, name: str, path: str) -> dict | None:
    """The skip record of a sub-folder that is not searched, or None to search it."""
    if os.path.islink(path):
        return _skip(rel, "not_regular", "a link to a folder: links to folders are not "
                                         "followed; move or copy the media files in instead")
    if name.startswith("."):
        return _skip(rel, "hidden", "a hidden folder (its name starts with '.'): not searched")
    if name.lower() in SYSTEM_FOLDERS:
        return _skip(rel, "system", "an operating-system or NAS metadata folder: not searched")
    return None


def _classify_file(rel: str, name: str, path: str) -> dict | None:
    """The skip record of a file `extract_clips` should not see, or None to list it."""
    if name.startswith("."):
        return _skip(rel, "hidden", "a hidden file (its name starts with '.'), e.g. macOS "
                                    ".DS_Store or ._ metadata")
    if name.lower() in SYSTEM_FILES:
        return _skip(rel, "system", "operating-system metadata (thumbnail cache or folder "
                                    "settings)")
    try:
        mode = os.stat(path).st_mode          # follows a link to a file
    except FileNotFoundError:
        return _skip(rel, "not_regular", "a broken link: its target does not exist")
    except OSError as e:
        return _skip(rel, "unreadable", f"cannot be read ({e.strerror}); fix its permissions")
    if not stat.S_ISREG(mode):
        return _skip(rel, "not_regular", f"{_file_kind(mode)}, not a regular file: it is not "
                                         f"opened (reading it could block)")
    suffix = os.path.splitext(name)[1].lower()
    if suffix in PARTIAL_SUFFIXES:
        return _skip(rel, "partial_download", f"an unfinished download ({suffix}): let it "
                                              f"finish (or rename it), then rerun `acquire`")
    if suffix in NOT_MEDIA_SUFFIXES:
        return _skip(rel, "not_media", f"not audio/video: {NOT_MEDIA_SUFFIXES[suffix]} "
                                       f"({suffix})")
    return None


def scan_folder(folder: Path) -> tuple[list[str], list[dict]]:
    """Every entry under ``folder`` (recursively): the files to list for `extract_clips` and
    the skip records of the rest, both sorted by relative path (posix)."""
    names: list[str] = []
    skipped: list[dict] = []

    def unreadable(e: OSError) -> None:
        rel = Path(e.filename).relative_to(folder).as_posix() if e.filename else "."
        skipped.append(_skip(rel, "unreadable", f"a folder that cannot be listed "
                                                f"({e.strerror}); fix its permissions"))

    for top, dirs, files in os.walk(folder, onerror=unreadable, followlinks=False):
        base = Path(top).relative_to(folder)
        keep = []
        for d in dirs:
            record = _classify_folder((base / d).as_posix(), d, os.path.join(top, d))
            if record is None:
                keep.append(d)
            else:
                skipped.append(record)
        dirs[:] = keep                          # os.walk descends only into these
        for f in files:
            rel = (base / f).as_posix()
            record = _classify_file(rel, f, os.path.join(top, f))
            if record is None:
                names.append(rel)
            else:
                skipped.append(record)
    return sorted(names), sorted(skipped, key=lambda r: r["name"])


def _hash_listed(folder: Path, names: list[str], skipped: list[dict]) -> list[dict]:
    """Manifest entries of ``names``; a file that fails to read is moved to ``skipped``."""
    entries = []
    for name in names:
        try:
            entries.append(manifest_for(folder, [name])[0])
        except OSError as e:
            skipped.append(_skip(name, "unreadable", f"cannot be read ({e.strerror or e}); "
                                                     f"fix its permissions or copy it again"))
    skipped.sort(key=lambda r: r["name"])
    return entries


def read_captions(csv_path: Path, folder: Path) -> dict[str, str]:
    """``{relative posix path: caption}`` from a CSV with columns ``file,caption`` (``file``
    relative to ``folder``). A malformed file fails here, naming the file and the row."""
    import csv

    if not csv_path.is_file():
        raise click.ClickException(f"data.captions: '{csv_path}' is not a file; point it at a CSV "
                                   f"with columns file,caption (or set it to null)")
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = {"file", "caption"} - set(reader.fieldnames or [])
        if missing:
            raise click.ClickException(
                f"data.captions: {csv_path} has columns {reader.fieldnames}; it needs a header "
                f"row with the columns file,caption (missing: {', '.join(sorted(missing))})")
        captions: dict[str, str] = {}
        for row_no, row in enumerate(reader, start=2):
            name, caption = (row.get("file") or "").strip(), (row.get("caption") or "").strip()
            rel = Path(name)
            if not name or rel.is_absolute() or ".." in rel.parts:
                raise click.ClickException(
                    f"data.captions: {csv_path} row {row_no}: file {name!r} must be a path "
                    f"relative to data.folder ({folder}), without '..'")
            key = rel.as_posix()
            if key in captions and captions[key] != caption:
                raise click.ClickException(f"data.captions: {csv_path} row {row_no}: '{key}' "
                                           f"has two different captions; keep one")
            captions[key] = caption
    return captions


def _caption_files(files: list[dict], captions: dict[str, str]) -> dict[str, int]:
    """Add ``caption`` to each manifest entry (the empty caption when the CSV has none for it);
    counts of captioned files, uncaptioned files and CSV rows naming no listed file."""
    names = {f["name"] for f in files}
    for f in files:
        f["caption"] = captions.get(f["name"], "")
    return {"captioned": sum(1 for f in files if f["caption"]),
            "uncaptioned": sum(1 for f in files if not f["caption"]),
            "captions_unmatched": sum(1 for k in captions if k not in names)}


def _skip_counts(skipped: list[dict]) -> str:
    counts = Counter(r["reason"] for r in skipped)
    return ", ".join(f"{reason} {counts[reason]}" for reason in SKIP_REASONS if counts[reason])


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
    skipped: list[dict] = []
    counts: dict[str, int] = {}
    if data.source == "folder":
        folder = Path(data.folder).expanduser().resolve()
        if not folder.is_dir():
            raise click.ClickException(f"data.folder: '{data.folder}' is not a folder; create it "
                                       f"or point data.folder at your media files")
        captions = read_captions(Path(data.captions).expanduser(), folder) if data.captions \
            else None
        names, skipped = scan_folder(folder)
        files = _hash_listed(folder, names, skipped)
        if not files:
            found = (f"all {len(skipped)} entries are skipped ({_skip_counts(skipped)}), e.g. "
                     + "; ".join(f"'{r['name']}': {r['detail']}" for r in skipped[:3])
                     if skipped else "the folder is empty")
            raise click.ClickException(f"data.folder: no media files found under {folder}: "
                                       f"{found}; put your video files (with sound) there")
        names = [f["name"] for f in files]
        if captions is not None:
            counts = _caption_files(files, captions)
        with atomic_path(out) as tmp:
            tmp.mkdir()
            write_json(tmp / "manifest.json", {"source": "folder", "root": str(folder),
                                               "files": files, "skipped": skipped})
    else:
        with atomic_path(out) as tmp:
            render_world(tmp, data.synth, seed=stage_seed(params.seed, "acquire"),
                         workers=data.clip.workers)
            names = sorted(p.name for p in tmp.glob("*.mp4"))
            write_json(tmp / "manifest.json", {"source": "synth", "root": None,
                                               "labels": "truth.json",
                                               "files": manifest_for(tmp, names)})
    summary = {"files": len(names), "skipped": len(skipped), **counts, "seconds": timer.seconds}
    line = f"acquire: {len(names)} files from {data.source} in {summary['seconds']} s -> {out}"
    if skipped:
        line += (f"; {len(skipped)} skipped ({_skip_counts(skipped)}), each with its reason "
                 f"under \"skipped\" in {out / 'manifest.json'}")
    if counts.get("uncaptioned") or counts.get("captions_unmatched"):
        line += (f"; captions: {counts['captioned']} files captioned, {counts['uncaptioned']} "
                 f"without a caption (given the empty caption), {counts['captions_unmatched']} "
                 f"CSV rows naming no listed file")
    click.echo(line)
    with tracking.stage_run("acquire", {"seed": params.seed, "data": to_dict(data)}):
        tracking.log_metrics(summary)
