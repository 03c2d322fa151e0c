"""Fetch the public audio-video datasets of pretrained mode: resumable, verified, unpacked safely.

What is published where (checked when this was written; see ``docs/pretrained.md``):

- **Landscape** and **AIST++ (cropped)**, the two datasets of MM-Diffusion (Ruan et al., CVPR
  2023), are shared as archives in one Google Drive folder (``MM_DIFFUSION_DATASETS``) and a
  Baidu mirror; neither gives stable direct links nor checksums. The raw AIST++ videos are also
  served one file each by the AIST Dance Video Database (``AIST_VIDEO_URL``, list at
  ``AIST_VIDEO_LIST``; read its terms first, ``AIST_TERMS``).
- **VGGSound** (Chen et al., ICASSP 2020) is a CSV of YouTube ids, start times, labels and splits
  (``VGGSOUND_CSV``); each 10 s clip is cut from YouTube with ``yt-dlp`` (an optional extra:
  ``pip install 'mmdisco[vggsound]'``, plus ffmpeg on PATH).

Checksums are MANDATORY. No checksum of these files is published, so none is built in (a
made-up one would be worse than none): you list the files you fetch, with their URL and
sha256, in a manifest (JSON)::

    {"dataset": "landscape",
     "files": [{"name": "landscape.zip", "url": "https://...", "sha256": "<64 hex digits>"}]}

and every download is verified against it before anything is unpacked. To make a manifest for
files you trust (e.g. fetched once by hand and inspected), ``allow_unverified=True``
(``--record-checksums``) downloads entries whose sha256 is null, records the digests in
``<out>/manifest.recorded.json`` and warns: check them and keep that file.

Downloads resume (HTTP ``Range``) after a dropped connection, in this run (``retries``) or a
later one (the ``.part`` file is kept on a network error); a checksum mismatch deletes the
partial file and nothing is unpacked. Archives are unpacked into a staging folder beside the
target and moved into place only when every member passed: tar members through tarfile's
``data`` filter (no absolute paths, no ``..``, no links leaving the folder, no devices), zip
members checked so that no path leaves the folder, symlinks refused.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import http.client
import io
import json
import logging
import os
import re
import shutil
import socket
import stat
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable, Iterable

import click
from tqdm.auto import tqdm

from mmdisco.checksums import sha256_file

log = logging.getLogger(__name__)

MM_DIFFUSION_DATASETS = "https://drive.google.com/drive/folders/14A1zaQI5EfShlv3QirgCGeNFzZBzQ3lq"
LANDSCAPE_SOURCE = MM_DIFFUSION_DATASETS            # folder "landscape" (train/test videos)
AIST_CROP_SOURCE = MM_DIFFUSION_DATASETS            # folder "AIST++_crop"
AIST_VIDEO_URL = "https://aistdancedb.ongaaccel.jp/v1.0.0/video/10M/{name}.mp4"
AIST_VIDEO_LIST = "https://storage.googleapis.com/aist_plusplus_public/20121228/video_list.txt"
AIST_TERMS = "https://aistdancedb.ongaaccel.jp/terms_of_use/"
VGGSOUND_CSV = "https://www.robots.ox.ac.uk/~vgg/data/vggsound/vggsound.csv"

SOURCES = {
    "landscape": f"archives in {LANDSCAPE_SOURCE} (MM-Diffusion's Google Drive folder): download "
                 f"them, then list their direct URLs (or file:// paths) and sha256 in a manifest",
    "aist": f"AIST++_crop archives in {AIST_CROP_SOURCE}, or the raw videos one by one from "
            f"{AIST_VIDEO_URL} (names in {AIST_VIDEO_LIST}; terms: {AIST_TERMS}); "
            f"`aist-manifest` writes a manifest of the raw videos to fill in",
    "vggsound": f"{VGGSOUND_CSV} (YouTube id, start s, label, split), clips fetched with yt-dlp",
}
_SHA256 = re.compile(r"[0-9a-f]{64}")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip")


class DownloadError(RuntimeError):
    """A download failed for good (after its retries)."""


class ChecksumError(DownloadError):
    """The bytes received do not have the expected sha256."""


class UnsafeArchiveError(RuntimeError):
    """An archive member would land outside the target folder (or is a link or device)."""


class MissingDependency(RuntimeError):
    """An optional tool is needed (yt-dlp)."""


# --------------------------------------------------------------------------- download
def _check_sha(sha256: str | None, what: str) -> str:
    if sha256 is None or not _SHA256.fullmatch(str(sha256).lower()):
        raise ValueError(f"{what}: sha256 must be 64 hex digits, got {sha256!r}; no checksum is "
                         f"published for these files, so list the ones you verified in a "
                         f"manifest (or fetch with --record-checksums and check the result)")
    return str(sha256).lower()


def _content_range_start(value: str | None) -> int | None:
    m = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", (value or "").strip())
    return int(m.group(1)) if m else None


def download(url: str, dest: str | Path, sha256: str | None, *, retries: int = 5,
             timeout: float = 60.0, backoff: float = 1.0, chunk: int = 1 << 20,
             progress: bool = True) -> Path:
    """Fetch ``url`` to ``dest``, resuming with HTTP Range, verified against ``sha256``.

    ``dest`` appears only once complete and verified. ``sha256=None`` skips the check (only
    for ``fetch_manifest(..., allow_unverified=True)``, which records the digest).
    """
    dest = Path(dest)
    want = None if sha256 is None else _check_sha(sha256, url)
    if dest.is_file() and (want is None or sha256_file(dest) == want):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    attempt, last_error = 0, None
    while True:
        offset = part.stat().st_size if part.is_file() else 0
        try:
            if _fetch_once(url, part, offset, timeout=timeout, chunk=chunk, progress=progress):
                break
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError,
                socket.timeout, _Incomplete) as e:
            if isinstance(e, urllib.error.HTTPError) and e.code not in (408, 429, 500, 502, 503, 504):
                raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from e
            last_error = e
        attempt += 1
        if attempt > retries:
            raise DownloadError(f"{url}: gave up after {retries} retries ({last_error}); "
                                f"{part} is kept, run again to resume") from last_error
        log.warning("%s: %s; resuming (attempt %d of %d)", url, last_error, attempt, retries)
        time.sleep(backoff * attempt)
    if want is not None:
        got = sha256_file(part)
        if got != want:
            part.unlink()
            raise ChecksumError(f"{url}: sha256 {got} does not match the expected {want}; the "
                                f"file was deleted (corrupt, or a different file behind the URL)")
    os.replace(part, dest)
    return dest


class _Incomplete(Exception):
    """The connection ended before the announced length."""


def _fetch_once(url: str, part: Path, offset: int, *, timeout: float, chunk: int,
                progress: bool) -> bool:
    """Append the rest of ``url`` to ``part``; True when complete."""
    headers = {"User-Agent": "mmdisco-download"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:        # nothing left past offset: the part is complete
            return True
        raise
    with resp:
        if offset and resp.status == 206:
            start = _content_range_start(resp.headers.get("Content-Range"))
            if start != offset:
                raise DownloadError(f"{url}: asked for bytes from {offset}, the server sent "
                                    f"{resp.headers.get('Content-Range')!r}")
            mode = "ab"
        else:                               # 200: the server ignored the range, start over
            offset, mode = 0, "wb"
        length = resp.headers.get("Content-Length")
        expected = None if length is None else int(length)
        got = 0
        total = None if expected is None else offset + expected
        with open(part, mode) as f, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                         desc=Path(part).name[:-5], leave=False,
                                         disable=not progress) as bar:
            while True:
                try:
                    block = resp.read(chunk)
                except http.client.IncompleteRead as e:
                    f.write(e.partial)
                    raise _Incomplete(f"connection closed after {offset + got + len(e.partial)} bytes") from e
                if not block:
                    break
                f.write(block)
                got += len(block)
                bar.update(len(block))
        if expected is not None and got < expected:
            raise _Incomplete(f"connection closed after {offset + got} of {offset + expected} bytes")
    return True


# --------------------------------------------------------------------------- unpack
def _zip_is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _inside(root: Path, name: str) -> Path:
    if not name or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise UnsafeArchiveError(f"member {name!r} has an absolute path")
    path = (root / name).resolve()
    if path != root and root not in path.parents:
        raise UnsafeArchiveError(f"member {name!r} would be written outside {root}")
    return path


def safe_unpack(archive: str | Path, target: str | Path) -> list[str]:
    """Unpack a tar or zip archive into ``target``; all or nothing. Returns the member names."""
    archive, target = Path(archive), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent)).resolve()
    try:
        if tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                members = tf.getmembers()
                for m in members:           # check every member before writing any
                    _inside(staging, m.name)    # refuse absolute names (the filter would strip them)
                    try:
                        tarfile.data_filter(m, str(staging))
                    except tarfile.FilterError as e:
                        raise UnsafeArchiveError(f"{archive.name}: {e}") from e
                tf.extractall(staging, filter="data")
                names = [m.name for m in members]
        elif zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                infos = zf.infolist()
                for info in infos:
                    if _zip_is_symlink(info):
                        raise UnsafeArchiveError(f"{archive.name}: member {info.filename!r} is a "
                                                 f"symbolic link; refused")
                    _inside(staging, info.filename)
                for info in infos:
                    zf.extract(info, staging)
                names = [i.filename for i in infos]
        else:
            raise UnsafeArchiveError(f"{archive}: neither a tar nor a zip archive")
        target.mkdir(parents=True, exist_ok=True)
        for entry in staging.iterdir():
            dest = target / entry.name
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            elif dest.exists() or dest.is_symlink():
                dest.unlink()
            os.replace(entry, dest)
        return names
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------- manifests
@dataclasses.dataclass(frozen=True)
class ManifestFile:
    name: str
    url: str
    sha256: str | None
    unpack: bool


def read_manifest(path: str | Path) -> tuple[str, list[ManifestFile]]:
    """``(dataset, files)`` of a manifest; names must be plain file names."""
    raw = json.loads(Path(path).read_text())
    if not isinstance(raw, dict) or not isinstance(raw.get("files"), list) or not raw["files"]:
        raise ValueError(f"{path}: a manifest is {{\"dataset\": ..., \"files\": [{{\"name\", \"url\", "
                         f"\"sha256\"}}, ...]}} with at least one file")
    files = []
    for i, f in enumerate(raw["files"]):
        name, url = f.get("name"), f.get("url")
        if not name or Path(name).name != name or name in (".", ".."):
            raise ValueError(f"{path}: files[{i}].name must be a plain file name, got {name!r}")
        if not url or not str(url).startswith(("http://", "https://", "file://")):
            raise ValueError(f"{path}: files[{i}].url must be an http(s):// or file:// URL, got "
                             f"{url!r} (see `mmdisco download info`)")
        unpack = f.get("unpack", name.lower().endswith(ARCHIVE_SUFFIXES))
        files.append(ManifestFile(name, str(url), f.get("sha256"), bool(unpack)))
    return str(raw.get("dataset", "")), files


def fetch_manifest(manifest: str | Path, out: str | Path, *, allow_unverified: bool = False,
                   progress: bool = True, **download_kw) -> dict:
    """Download every file of ``manifest`` into ``out/archives`` (or ``out/files``), verify,
    and unpack archives into ``out/media/<name without suffix>``. Point ``data.folder`` at
    ``out/media`` (with ``data.source: folder``) to run the pipeline on them.
    """
    out = Path(out)
    dataset, files = read_manifest(manifest)
    missing = [f.name for f in files if f.sha256 is None]
    if missing and not allow_unverified:
        raise ValueError(f"{manifest}: no sha256 for {', '.join(missing[:5])}"
                         f"{' …' if len(missing) > 5 else ''}; checksums are mandatory (use "
                         f"--record-checksums only for files you trust, and check the record)")
    for f in files:
        if f.sha256 is not None:
            _check_sha(f.sha256, f"{manifest}: {f.name}")
    recorded = []
    for f in files:
        dest = out / ("archives" if f.unpack else "files") / f.name
        download(f.url, dest, f.sha256, progress=progress, **download_kw)
        digest = f.sha256 or sha256_file(dest)
        if f.sha256 is None:
            log.warning("%s: NOT verified; recorded sha256 %s (check it)", f.name, digest)
        recorded.append({"name": f.name, "url": f.url, "sha256": digest, "unpack": f.unpack,
                         "verified": f.sha256 is not None})
        if f.unpack:
            stem = next(f.name[: -len(s)] for s in ARCHIVE_SUFFIXES if f.name.lower().endswith(s))
            safe_unpack(dest, out / "media" / stem)
    if missing:
        (out / "manifest.recorded.json").write_text(json.dumps(
            {"dataset": dataset, "files": recorded}, indent=2) + "\n")
    return {"dataset": dataset, "files": recorded}


def aist_manifest(names: Iterable[str]) -> dict:
    """A manifest of raw AIST++ videos (sha256 to fill in: none is published)."""
    files = [{"name": f"{n}.mp4", "url": AIST_VIDEO_URL.format(name=n), "sha256": None,
              "unpack": False} for n in (s.strip() for s in names) if n]
    return {"dataset": "aist", "terms": AIST_TERMS, "files": files}


# --------------------------------------------------------------------------- VGGSound
@dataclasses.dataclass(frozen=True)
class VGGSoundClip:
    ytid: str
    start: int
    label: str
    split: str

    @property
    def name(self) -> str:
        return f"{self.ytid}_{self.start:06d}.mp4"


def read_vggsound_csv(path: str | Path, *, split: str | None = None,
                      labels: Iterable[str] | None = None, limit: int | None = None) -> list[VGGSoundClip]:
    """Rows of VGGSound's CSV (``ytid, start_seconds, label, split``; labels may hold commas)."""
    keep = None if labels is None else set(labels)
    clips = []
    with open(path, newline="") as f:
        for i, row in enumerate(csv.reader(f)):
            if not row or row[0].startswith("#"):
                continue
            if len(row) != 4:
                raise ValueError(f"{path}:{i + 1}: expected 4 fields (ytid, start, label, split), "
                                 f"got {len(row)}")
            ytid, start, label, sp = (c.strip() for c in row)
            if not re.fullmatch(r"[A-Za-z0-9_-]{11}", ytid):
                raise ValueError(f"{path}:{i + 1}: {ytid!r} is not a YouTube id")
            if (split is None or sp == split) and (keep is None or label in keep):
                clips.append(VGGSoundClip(ytid, int(float(start)), label, sp))
            if limit is not None and len(clips) >= limit:
                break
    return clips


def find_yt_dlp(executable: str | None = None) -> str:
    exe = executable or shutil.which("yt-dlp")
    if not exe:
        raise MissingDependency(
            "VGGSound clips are fetched from YouTube with yt-dlp, an optional extra: install it "
            "with `pip install 'mmdisco[vggsound]'` (or `pip install yt-dlp`), and put ffmpeg on "
            "PATH (yt-dlp uses it to cut the 10 s sections)")
    return exe


def write_captions(path: Path, captions: dict[str, str]) -> None:
    """A ``file,caption`` CSV (what ``data.captions`` reads), written atomically, sorted by file."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file", "caption"])
    for name in sorted(captions):
        writer.writerow([name, captions[name]])
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    os.replace(tmp, path)


def fetch_vggsound(csv_path: str | Path, out: str | Path, *, split: str | None = "test",
                   labels: Iterable[str] | None = None, limit: int | None = None,
                   seconds: int = 10, max_height: int = 360, yt_dlp: str | None = None,
                   timeout: float = 300.0, progress: bool = True,
                   run: Callable = subprocess.run) -> dict:
    """Cut each listed clip from YouTube into ``out/videos/<ytid>_<start>.mp4`` with yt-dlp.

    Files already there are kept (rerun to resume); clips that fail (removed, private,
    region-locked: many are) are listed in ``out/failed.json``; ``out/labels.json`` maps each
    file to its label, and ``out/captions.csv`` (columns ``file,caption``, paths relative to
    ``out/videos``: the ``data.captions`` of ``data.folder: out/videos``) gives each file its
    label as its caption (the text prompt of text-conditional sampling).
    """
    exe = find_yt_dlp(yt_dlp)
    clips = read_vggsound_csv(csv_path, split=split, labels=labels, limit=limit)
    videos = Path(out) / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    failed, have = {}, {}
    for clip in tqdm(clips, desc="vggsound", unit="clip", disable=not progress):
        dest = videos / clip.name
        if dest.is_file() and dest.stat().st_size > 0:
            have[clip.name] = clip.label
            continue
        tmp = videos / f".{clip.name}.part.mp4"
        cmd = [exe, "--quiet", "--no-warnings", "--no-playlist", "--no-part",
               "-f", f"bv*[height<={max_height}]+ba/b[height<={max_height}]",
               "--download-sections", f"*{clip.start}-{clip.start + seconds}",
               "--force-keyframes-at-cuts", "--merge-output-format", "mp4", "-o", str(tmp),
               f"https://www.youtube.com/watch?v={clip.ytid}"]
        try:
            res = run(cmd, capture_output=True, text=True, timeout=timeout)
            ok = res.returncode == 0 and tmp.is_file() and tmp.stat().st_size > 0
            reason = (res.stderr or res.stdout or "").strip()[-300:] or f"exit {res.returncode}"
        except subprocess.TimeoutExpired:
            ok, reason = False, f"timed out after {timeout} s"
        if ok:
            os.replace(tmp, dest)
            have[clip.name] = clip.label
        else:
            tmp.unlink(missing_ok=True)
            failed[clip.name] = reason
    (Path(out) / "labels.json").write_text(json.dumps(have, indent=1, sort_keys=True) + "\n")
    write_captions(Path(out) / "captions.csv", have)
    (Path(out) / "failed.json").write_text(json.dumps(failed, indent=1, sort_keys=True) + "\n")
    return {"requested": len(clips), "fetched": len(have), "failed": len(failed)}


# --------------------------------------------------------------------------- command line
_ERRORS = (DownloadError, UnsafeArchiveError, MissingDependency, ValueError, OSError)


def _user_errors(fn):
    """Expected failures (a bad checksum, a missing tool, an unreadable file) as one line."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except _ERRORS as e:
            raise click.ClickException(str(e)) from e
    return wrapper


@click.group("download")
def main() -> None:
    """Download, verify and unpack the datasets of the real setting (VGGSound, Landscape,
    AIST++) into a folder for data.source: folder."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")


@main.command("info")
def info() -> None:
    """Where each dataset is published."""
    for name, text in SOURCES.items():
        click.echo(f"{name}: {text}")


@main.command("fetch")
@click.argument("manifest", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--record-checksums", is_flag=True,
              help="accept entries without sha256 and record their digests (check them!)")
@_user_errors
def fetch(manifest: Path, out: Path, record_checksums: bool) -> None:
    """Download, verify and unpack the files of a manifest."""
    report = fetch_manifest(manifest, out, allow_unverified=record_checksums)
    click.echo(f"fetched {len(report['files'])} files -> {out}")


@main.command("aist-manifest")
@click.argument("video_list", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@_user_errors
def aist(video_list: Path, out: Path) -> None:
    """A manifest of raw AIST++ videos from a local copy of AIST's video list."""
    names = video_list.read_text().splitlines()
    out.write_text(json.dumps(aist_manifest(names), indent=1) + "\n")
    click.echo(f"{out}: {len(names)} videos; fill in sha256 (or fetch with --record-checksums)")


@main.command("vggsound")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="a local copy of " + VGGSOUND_CSV)
@click.option("--csv-url", default=None, help="fetch the CSV from here first (with --csv-sha256)")
@click.option("--csv-sha256", default=None)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--split", type=click.Choice(["train", "test", "all"]), default="test",
              show_default=True)
@click.option("--limit", type=int, default=None)
@click.option("--label", "labels", multiple=True, help="keep only this label (repeat)")
@_user_errors
def vggsound(csv_path: Path, csv_url: str | None, csv_sha256: str | None, out: Path, split: str,
             limit: int | None, labels: tuple[str, ...]) -> None:
    """Cut VGGSound clips from YouTube with yt-dlp; writes labels.json and captions.csv."""
    if csv_url:
        download(csv_url, csv_path, csv_sha256)
    report = fetch_vggsound(csv_path, out, split=None if split == "all" else split,
                            labels=list(labels) or None, limit=limit)
    click.echo(f"vggsound: {report['fetched']} of {report['requested']} clips "
               f"({report['failed']} failed, see failed.json) -> {out}")


if __name__ == "__main__":
    main()
