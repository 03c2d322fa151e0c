"""List a user's folder of media files for clip extraction, without opening any of them.

Every entry under the folder (searched recursively) is accounted for: ``scan_folder`` returns
the files to list and the skip records of the rest, each ``{"name", "reason", "detail"}``
(``reason`` one of ``SKIP_REASONS``). There is no allow-list of media suffixes: whether a
file holds usable video with sound is decided from its content by clip extraction, which
rejects an unusable one (audio only, silent video, damaged, not media at all) with its
reason. Only what is not media by its kind or name is set aside here: hidden and
operating-system files and folders, anything that is not a regular file (a named pipe would
block its reader), files that cannot be read, unfinished downloads, and files whose suffix
says text, document, image, subtitle, archive or code (``NOT_MEDIA_SUFFIXES``).

Captions come from a CSV with columns ``file,caption`` (``read_captions``).
"""
from __future__ import annotations

import csv
import os
import stat
from collections import Counter
from pathlib import Path

# Why a folder entry is not listed for clip extraction (the "reason" of a skipped entry).
SKIP_REASONS = ("hidden", "system", "not_regular", "unreadable", "partial_download",
                "not_media")

# Suffixes of files that never hold video with sound, by kind. Anything else (including
# audio-only suffixes such as .m4a or .mp3, and no suffix at all) goes to clip extraction,
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


class FolderError(ValueError):
    """The media folder or its captions CSV cannot be used as they are; the message says
    what to fix."""


def skip_record(name: str, reason: str, detail: str) -> dict:
    return {"name": name, "reason": reason, "detail": detail}


def _file_kind(mode: int) -> str:
    return ("a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a file")


def _classify_folder(rel: str, name: str, path: str) -> dict | None:
    """The skip record of a sub-folder that is not searched, or None to search it."""
    if os.path.islink(path):
        return skip_record(rel, "not_regular", "a link to a folder: links to folders are not "
                                               "followed; move or copy the media files in "
                                               "instead")
    if name.startswith("."):
        return skip_record(rel, "hidden", "a hidden folder (its name starts with '.'): not "
                                          "searched")
    if name.lower() in SYSTEM_FOLDERS:
        return skip_record(rel, "system", "an operating-system or NAS metadata folder: not "
                                          "searched")
    return None


def _classify_file(rel: str, name: str, path: str) -> dict | None:
    """The skip record of a file clip extraction should not see, or None to list it."""
    if name.startswith("."):
        return skip_record(rel, "hidden", "a hidden file (its name starts with '.'), e.g. macOS "
                                          ".DS_Store or ._ metadata")
    if name.lower() in SYSTEM_FILES:
        return skip_record(rel, "system", "operating-system metadata (thumbnail cache or folder "
                                          "settings)")
    try:
        mode = os.stat(path).st_mode          # follows a link to a file
    except FileNotFoundError:
        return skip_record(rel, "not_regular", "a broken link: its target does not exist")
    except OSError as e:
        return skip_record(rel, "unreadable", f"cannot be read ({e.strerror}); fix its "
                                              f"permissions")
    if not stat.S_ISREG(mode):
        return skip_record(rel, "not_regular", f"{_file_kind(mode)}, not a regular file: it is "
                                               f"not opened (reading it could block)")
    suffix = os.path.splitext(name)[1].lower()
    if suffix in PARTIAL_SUFFIXES:
        return skip_record(rel, "partial_download", f"an unfinished download ({suffix}): let "
                                                    f"it finish (or rename it), then rerun "
                                                    f"`acquire`")
    if suffix in NOT_MEDIA_SUFFIXES:
        return skip_record(rel, "not_media", f"not audio/video: {NOT_MEDIA_SUFFIXES[suffix]} "
                                             f"({suffix})")
    return None


def scan_folder(folder: Path) -> tuple[list[str], list[dict]]:
    """Every entry under ``folder`` (recursively): the files to list for clip extraction and
    the skip records of the rest, both sorted by relative path (posix)."""
    names: list[str] = []
    skipped: list[dict] = []

    def unreadable(e: OSError) -> None:
        rel = Path(e.filename).relative_to(folder).as_posix() if e.filename else "."
        skipped.append(skip_record(rel, "unreadable", f"a folder that cannot be listed "
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


def skip_counts(skipped: list[dict]) -> str:
    """"hidden 2, not_media 1": how many entries were skipped for each reason."""
    counts = Counter(r["reason"] for r in skipped)
    return ", ".join(f"{reason} {counts[reason]}" for reason in SKIP_REASONS if counts[reason])


def read_captions(csv_path: Path, folder: Path) -> dict[str, str]:
    """``{relative posix path: caption}`` from a CSV with columns ``file,caption`` (``file``
    relative to ``folder``). A malformed file raises FolderError naming the file and the row."""
    if not csv_path.is_file():
        raise FolderError(f"data.captions: '{csv_path}' is not a file; point it at a CSV "
                          f"with columns file,caption (or set it to null)")
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = {"file", "caption"} - set(reader.fieldnames or [])
        if missing:
            raise FolderError(
                f"data.captions: {csv_path} has columns {reader.fieldnames}; it needs a header "
                f"row with the columns file,caption (missing: {', '.join(sorted(missing))})")
        captions: dict[str, str] = {}
        for row_no, row in enumerate(reader, start=2):
            name, caption = (row.get("file") or "").strip(), (row.get("caption") or "").strip()
            rel = Path(name)
            if not name or rel.is_absolute() or ".." in rel.parts:
                raise FolderError(
                    f"data.captions: {csv_path} row {row_no}: file {name!r} must be a path "
                    f"relative to data.folder ({folder}), without '..'")
            key = rel.as_posix()
            if key in captions and captions[key] != caption:
                raise FolderError(f"data.captions: {csv_path} row {row_no}: '{key}' "
                                  f"has two different captions; keep one")
            captions[key] = caption
    return captions


def caption_files(files: list[dict], captions: dict[str, str]) -> dict[str, int]:
    """Add ``caption`` to each manifest entry (the empty caption when the CSV has none for it);
    counts of captioned files, uncaptioned files and CSV rows naming no listed file."""
    names = {f["name"] for f in files}
    for f in files:
        f["caption"] = captions.get(f["name"], "")
    return {"captioned": sum(1 for f in files if f["caption"]),
            "uncaptioned": sum(1 for f in files if not f["caption"]),
            "captions_unmatched": sum(1 for k in captions if k not in names)}
