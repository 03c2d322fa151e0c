"""Read ``manifest.json`` back: the media paths to cut clips from and their per-file labels.

A manifest (written by ``mmdisco.data.sources``) is ``{"source", "root", "files": [{"name",
"size", "sha256"[, "caption"]}, ...]}``, plus ``"labels"`` (a file of per-file records beside
it) for the rendered world and ``"skipped"`` for a folder. ``root`` is the media folder
(None: the manifest's own folder).
"""
from __future__ import annotations

from pathlib import Path

from mmdisco.config import DataConfig
from mmdisco.io import child_path, read_json

MANIFEST = "manifest.json"


class StaleManifest(ValueError):
    """A manifest that does not describe the media the params name: make it again."""


def _check_root(raw: Path, root: Path, data: DataConfig) -> None:
    """The manifest's media folder must be the one the params name: ``raw`` itself (synth) or
    ``data.folder`` (folder source)."""
    source = raw / MANIFEST
    folder = data.source == "folder" and data.folder
    if folder and not Path(data.folder).expanduser().is_dir():
        raise StaleManifest(f"data.folder: '{data.folder}' is not a folder; point data.folder "
                            f"at your media files, then record them again")
    expected = Path(data.folder).expanduser().resolve() if folder else raw.resolve()
    if root != expected:
        want = (f"data.folder ({data.folder!r})" if folder
                else f"{raw} itself (data.source: {data.source})")
        raise StaleManifest(f"{source}: it lists media under {str(root)!r}, but params say "
                            f"{want}; the manifest is stale or was edited: make it again")


def manifest_files(raw: Path, data: DataConfig | None = None
                   ) -> tuple[list[Path], dict[str, dict] | None]:
    """Absolute media paths listed by ``raw/manifest.json`` and per-file labels, if any.

    Names in the manifest must stay inside their folder (no absolute path, no ``..``), and the
    folder itself is ``raw`` (synth) or ``data.folder`` (folder source), so a tampered manifest
    cannot make the caller read files elsewhere. StaleManifest when it does not match ``data``.
    """
    source = raw / MANIFEST
    manifest = read_json(source)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        raise StaleManifest(f"{source} has no 'files' list; make the manifest again")
    root = Path(manifest["root"]) if manifest.get("root") else raw.resolve()
    if data is not None:
        _check_root(raw, root, data)
    files = [child_path(root, entry.get("name") if isinstance(entry, dict) else entry, source)
             for entry in manifest["files"]]
    labels = None
    if manifest.get("labels"):
        records = read_json(child_path(raw, manifest["labels"], source))
        labels = {r["file"]: {k: v for k, v in r.items() if k != "file"} for r in records}
    captioned = {Path(e["name"]).name: e["caption"] for e in manifest["files"]
                 if isinstance(e, dict) and "caption" in e}
    if captioned:   # a folder's captions CSV, recorded per file
        labels = labels or {}
        for name, caption in captioned.items():
            labels.setdefault(name, {})["caption"] = caption
    return files, labels
