"""`acquire` with ``data.source: folder`` accounts for every entry of the folder: each file is
used (clips in ``index.json``), rejected by `extract_clips` with its reason (``rejects.json``),
or skipped by `acquire` with its reason (``skipped`` in ``manifest.json``); nothing is dropped
silently. The stages run in-process through click's CliRunner, as `dvc repro` runs them."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mmdisco.data.checks import REJECT_REASONS
from mmdisco.data.folder import SKIP_REASONS
from mmdisco.data.media import write_av
from support.project import ROOT, set_params

CLIP = {"seconds": 1.0, "hop_seconds": 1.0, "fps": 8, "size": 16, "sample_rate": 16000,
        "workers": 1, "file_timeout_s": 60.0, "max_reject_fraction": 0.5}


def _video(seconds: float = 2.0, fps: int = 8) -> np.ndarray:
    return np.full((round(seconds * fps), 32, 32, 3), 60, np.uint8)


def _audio(seconds: float = 2.0, sr: int = 16000) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def _run(work: Path, folder: Path, stages: tuple[str, ...] = ("acquire", "extract_clips"),
         extra: dict | None = None) -> dict:
    """Run the stages on ``folder`` inside ``work``; return their results and outputs."""
    from stages.acquire import main as acquire
    from stages.extract_clips import main as extract

    params = work / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    set_params(params, {"data.source": "folder", "data.folder": str(folder),
                        **{f"data.clip.{k}": v for k, v in CLIP.items()}, **(extra or {})})
    runner, got = CliRunner(), {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
        got["acquire"] = runner.invoke(acquire, ["--params", str(params),
                                                 "--out", str(work / "raw")])
        if "extract_clips" in stages and got["acquire"].exit_code == 0:
            got["extract_clips"] = runner.invoke(
                extract, ["--params", str(params), "--raw", str(work / "raw"),
                          "--out", str(work / "clips"), "--metrics", str(work / "m.json")])
    return got


def _entries(folder: Path) -> set[str]:
    """Every file under ``folder`` (recursively, hidden ones too) and every folder whose
    contents are not searched, as relative posix paths."""
    out = set()
    for top, dirs, files in os.walk(folder):
        base = Path(top).relative_to(folder)
        out |= {(base / f).as_posix() for f in files}
        out |= {(base / d).as_posix() for d in dirs if d.startswith(".")}
        dirs[:] = [d for d in dirs if not d.startswith(".")]
    return out


def test_every_file_is_used_rejected_or_skipped_with_a_reason(tmp_path):
    folder = tmp_path / "media"
    write_av(folder / "good.mp4", _video(), 8, _audio(), 16000)
    write_av(folder / "voice memos" / "memo.m4a", None, 8, _audio(), 16000)   # audio only
    (folder / "notes.txt").write_text("shot on the beach, 2024\n")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + bytes(64))
    (folder / ".cache").mkdir()
    (folder / ".cache" / "thumb.mp4").write_bytes(b"x")
    assert _entries(folder) == {"good.mp4", "voice memos/memo.m4a", "notes.txt", ".DS_Store",
                                ".cache"}

    work = tmp_path / "work"
    work.mkdir()
    res = _run(work, folder)
    acq, ext = res["acquire"], res["extract_clips"]
    assert acq.exit_code == 0, acq.output + repr(acq.exception)
    assert ext.exit_code == 0, ext.output + repr(ext.exception)

    manifest = json.loads((work / "raw" / "manifest.json").read_text())
    # no suffix filter: the audio-only .m4a goes on to extract_clips, which reads its content
    assert [f["name"] for f in manifest["files"]] == ["good.mp4", "voice memos/memo.m4a"]
    skipped = {r["name"]: r for r in manifest["skipped"]}
    assert {n: r["reason"] for n, r in skipped.items()} == {
        ".DS_Store": "hidden", ".cache": "hidden", "notes.txt": "not_media"}
    assert all(r["reason"] in SKIP_REASONS and r["detail"] for r in skipped.values())
    assert "text or document (.txt)" in skipped["notes.txt"]["detail"]
    assert "3 skipped (hidden 2, not_media 1)" in acq.output and "manifest.json" in acq.output

    index = json.loads((work / "clips" / "index.json").read_text())
    rejects = {r["source"]: r for r in json.loads((work / "clips" / "rejects.json").read_text())}
    assert list(index["sources"]) == ["good.mp4"] and index["num_clips"] == 2
    assert rejects["memo.m4a"]["reason"] == "no_video"
    assert "no video stream (audio only)" in rejects["memo.m4a"]["detail"]
    assert all(r["reason"] in REJECT_REASONS for r in rejects.values())
    assert "2 clips from 1 files, 1 rejected" in ext.output

    # every entry accounted for exactly once (clips and rejects are named by file name)
    by_name = {Path(f["name"]).name: f["name"] for f in manifest["files"]}
    used = {by_name[s] for s in index["sources"]}
    rejected = {by_name[s] for s in rejects}
    assert not used & rejected and not (used | rejected) & set(skipped)
    assert used | rejected | set(skipped) == _entries(folder)


def test_special_entries_are_skipped_without_being_opened(tmp_path):
    """A named pipe (opening it would block), a broken link, a link to a folder, an unfinished
    download and operating-system metadata are listed as skipped; a plain folder is searched."""
    folder = tmp_path / "media"
    write_av(folder / "a" / "b" / "deep.mkv", _video(), 8, _audio(), 16000)
    os.mkfifo(folder / "pipe.mp4")
    (folder / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")
    (folder / "elsewhere").symlink_to(tmp_path, target_is_directory=True)
    (folder / "big.mp4.part").write_bytes(b"\0\0\0\x18ftypisom")
    (folder / "Thumbs.db").write_bytes(bytes(16))
    (folder / "__MACOSX").mkdir()
    (folder / "__MACOSX" / "._deep.mkv").write_bytes(bytes(16))
    work = tmp_path / "work"
    work.mkdir()
    acq = _run(work, folder, stages=("acquire",))["acquire"]
    assert acq.exit_code == 0, acq.output + repr(acq.exception)
    manifest = json.loads((work / "raw" / "manifest.json").read_text())
    assert [f["name"] for f in manifest["files"]] == ["a/b/deep.mkv"]
    assert {r["name"]: r["reason"] for r in manifest["skipped"]} == {
        "pipe.mp4": "not_regular", "gone.mp4": "not_regular", "elsewhere": "not_regular",
        "big.mp4.part": "partial_download", "Thumbs.db": "system", "__MACOSX": "system"}
    assert "named pipe" in next(r["detail"] for r in manifest["skipped"]
                                if r["name"] == "pipe.mp4")


@pytest.mark.parametrize("content", ["empty", "no media"])
def test_no_media_fails_with_what_was_found(tmp_path, content):
    folder = tmp_path / "media"
    folder.mkdir()
    if content == "no media":
        (folder / "notes.txt").write_text("nothing here\n")
        (folder / ".DS_Store").write_bytes(bytes(8))
    work = tmp_path / "work"
    work.mkdir()
    acq = _run(work, folder)["acquire"]
    assert acq.exit_code == 1, acq.output
    msg = " ".join(acq.output.split())
    assert "data.folder: no media files found under" in msg and "Traceback" not in msg
    if content == "empty":
        assert "the folder is empty" in msg
    else:
        assert "all 2 entries are skipped (hidden 1, not_media 1)" in msg
        assert "'notes.txt': not audio/video: text or document (.txt)" in msg
    assert not (work / "raw").exists()


def test_captions_csv_reaches_every_clip_and_a_file_without_one_gets_the_empty_caption(tmp_path):
    folder = tmp_path / "media"
    (folder / "sub").mkdir(parents=True)
    for name in ("a.mp4", "sub/b.mkv", "c.mp4"):
        write_av(folder / name, _video(), 8, _audio(), 16000)
    csv = tmp_path / "captions.csv"
    csv.write_text('file,caption\na.mp4,"dog barking, outdoors"\nsub/b.mkv,church bells\n'
                   'gone.mp4,not in the folder\n')
    got = _run(tmp_path, folder, extra={"data.captions": str(csv)})
    assert got["acquire"].exit_code == 0, got["acquire"].output
    assert "1 without a caption" in got["acquire"].output and "1 CSV rows naming no listed file" \
        in got["acquire"].output
    manifest = json.loads((tmp_path / "raw" / "manifest.json").read_text())
    assert {f["name"]: f["caption"] for f in manifest["files"]} == {
        "a.mp4": "dog barking, outdoors", "sub/b.mkv": "church bells", "c.mp4": ""}
    assert got["extract_clips"].exit_code == 0, got["extract_clips"].output
    index = json.loads((tmp_path / "clips" / "index.json").read_text())
    assert {c["source"]: c["caption"] for c in index["clips"]} == {
        "a.mp4": "dog barking, outdoors", "b.mkv": "church bells", "c.mp4": ""}
    assert len(index["clips"]) == 6   # two 1-s windows of each 2-s file


@pytest.mark.parametrize("text, message", [
    ("name,text\na.mp4,x\n", "columns file,caption"),
    ("file,caption\n/abs/a.mp4,x\n", "row 2: file '/abs/a.mp4' must be a path relative"),
    ("file,caption\n../a.mp4,x\n", "without '..'"),
    ("file,caption\na.mp4,x\na.mp4,y\n", "row 3: 'a.mp4' has two different captions"),
])
def test_a_bad_captions_csv_fails_before_any_work_naming_the_row(tmp_path, text, message):
    folder = tmp_path / "media"
    folder.mkdir()
    write_av(folder / "a.mp4", _video(), 8, _audio(), 16000)
    csv = tmp_path / "captions.csv"
    csv.write_text(text)
    got = _run(tmp_path, folder, stages=("acquire",), extra={"data.captions": str(csv)})
    assert got["acquire"].exit_code != 0 and message in got["acquire"].output
    assert "data.captions" in got["acquire"].output and not (tmp_path / "raw").exists()
