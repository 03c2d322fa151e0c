"""Dataset downloads against a real HTTP server on 127.0.0.1 (with Range support written here)."""
from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import sys
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mmdisco.data import download as dl
from mmdisco.data.folder import read_captions

FILES = {"a/x.txt": b"hello " * 1000, "a/b/y.bin": os.urandom(50_000)}


def make_tar(members: dict[str, bytes], *, symlink: tuple[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        if symlink:
            info = tarfile.TarInfo(symlink[0])
            info.type, info.linkname = tarfile.SYMTYPE, symlink[1]
            tf.addfile(info)
    return buf.getvalue()


def make_zip(members: dict[str, bytes], *, symlink: tuple[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink[0])
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, symlink[1])
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Server:
    """Serves ``files`` (path → bytes) with single-range ``bytes=N-`` support; each path in
    ``drop_once`` is cut off halfway (headers announce the full length) the first time."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.drop_once: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                outer.requests.append((self.path, rng))
                data = outer.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if rng:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if self.path in outer.drop_once:
                    outer.drop_once.discard(self.path)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server():
    s = Server()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def manifest(tmp_path, server, entries: list[tuple[str, bytes, str | None]]):
    files = []
    for name, data, digest in entries:
        server.files[f"/{name}"] = data
        files.append({"name": name, "url": server.url(f"/{name}"), "sha256": digest})
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"dataset": "test", "files": files}))
    return path


def tree(root) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")} if root.exists() else set()


def test_good_tar_and_zip_are_fetched_verified_and_unpacked(tmp_path, server):
    tar, zp = make_tar(FILES), make_zip(FILES)
    m = manifest(tmp_path, server, [("land.tar.gz", tar, sha(tar)), ("aist.zip", zp, sha(zp))])
    out = tmp_path / "out"
    report = dl.fetch_manifest(m, out, progress=False)
    assert all(f["verified"] for f in report["files"])
    for stem in ("land", "aist"):
        for name, data in FILES.items():
            assert (out / "media" / stem / name).read_bytes() == data
    assert not list(out.rglob("*.part")) and not list(out.glob(".unpack-*"))
    # a second run reuses the verified archives (no new requests) and unpacks again
    before = len(server.requests)
    dl.fetch_manifest(m, out, progress=False)
    assert len(server.requests) == before


@pytest.mark.parametrize("kind", ["tar-dotdot", "zip-dotdot", "tar-absolute", "tar-symlink",
                                  "zip-symlink"])
def test_malicious_archives_are_refused_and_write_nothing(tmp_path, server, kind):
    evil = {"tar-dotdot": lambda: make_tar({"ok.txt": b"1", "../../evil.txt": b"pwned"}),
            "zip-dotdot": lambda: make_zip({"ok.txt": b"1", "../../evil.txt": b"pwned"}),
            "tar-absolute": lambda: make_tar({"ok.txt": b"1", str(tmp_path / "evil.txt"): b"x"}),
            "tar-symlink": lambda: make_tar({"ok.txt": b"1"}, symlink=("link", "../../..")),
            "zip-symlink": lambda: make_zip({"ok.txt": b"1"}, symlink=("link", "/etc/passwd"))}[kind]()
    name = "evil.zip" if kind.startswith("zip") else "evil.tar.gz"
    m = manifest(tmp_path, server, [(name, evil, sha(evil))])
    out = tmp_path / "deep" / "out"
    before = tree(tmp_path)
    with pytest.raises(dl.UnsafeArchiveError):
        dl.fetch_manifest(m, out, progress=False)
    after = tree(tmp_path) - before
    # only the verified archive itself (and its folders) appeared: nothing unpacked anywhere
    assert after <= {"deep", "deep/out", "deep/out/archives", f"deep/out/archives/{name}",
                     "deep/out/media"}, after
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "deep" / "evil.txt").exists()


def test_checksum_mismatch_is_refused_and_leaves_no_partial_file(tmp_path, server):
    good = make_tar(FILES)
    corrupt = bytearray(good)
    corrupt[len(corrupt) // 2] ^= 0xFF
    m = manifest(tmp_path, server, [("land.tar.gz", bytes(corrupt), sha(good))])
    out = tmp_path / "out"
    with pytest.raises(dl.ChecksumError, match="does not match"):
        dl.fetch_manifest(m, out, progress=False)
    assert tree(out) <= {"archives"}, tree(out)


def test_download_resumes_after_a_dropped_connection(tmp_path, server):
    data = os.urandom(300_000)
    server.files["/big.bin"] = data
    server.drop_once.add("/big.bin")
    dest = dl.download(server.url("/big.bin"), tmp_path / "big.bin", sha(data), backoff=0.0,
                       chunk=16_384, progress=False)
    assert dest.read_bytes() == data and not (tmp_path / "big.bin.part").exists()
    assert server.requests[0] == ("/big.bin", None)
    path, rng = server.requests[1]
    assert path == "/big.bin" and rng == f"bytes={len(data) // 2}-"


def test_download_resumes_a_part_file_left_by_an_earlier_run(tmp_path, server):
    data = os.urandom(100_000)
    server.files["/f.bin"] = data
    (tmp_path / "f.bin.part").write_bytes(data[:40_000])
    dl.download(server.url("/f.bin"), tmp_path / "f.bin", sha(data), progress=False)
    assert (tmp_path / "f.bin").read_bytes() == data
    assert server.requests == [("/f.bin", "bytes=40000-")]
    # a network failure for good keeps the .part for a later resume
    server.files["/g.bin"] = data
    server.drop_once.add("/g.bin")
    with pytest.raises(dl.DownloadError, match="resume"):
        dl.download(server.url("/g.bin"), tmp_path / "g.bin", sha(data), retries=0, progress=False)
    assert (tmp_path / "g.bin.part").stat().st_size == len(data) // 2


def test_checksums_are_mandatory_unless_recorded(tmp_path, server):
    tar = make_tar(FILES)
    m = manifest(tmp_path, server, [("land.tar.gz", tar, None)])
    with pytest.raises(ValueError, match="checksums are mandatory"):
        dl.fetch_manifest(m, tmp_path / "out", progress=False)
    bad = manifest(tmp_path, server, [("land.tar.gz", tar, "0" * 63)])
    with pytest.raises(ValueError, match="64 hex digits"):
        dl.fetch_manifest(bad, tmp_path / "out", progress=False)
    m = manifest(tmp_path, server, [("land.tar.gz", tar, None)])
    report = dl.fetch_manifest(m, tmp_path / "out", allow_unverified=True, progress=False)
    recorded = json.loads((tmp_path / "out" / "manifest.recorded.json").read_text())
    assert recorded["files"][0]["sha256"] == sha(tar) and not report["files"][0]["verified"]
    with pytest.raises(ValueError, match="plain file name"):
        (tmp_path / "m2.json").write_text(json.dumps(
            {"files": [{"name": "../x.zip", "url": "http://h/x.zip", "sha256": sha(tar)}]}))
        dl.read_manifest(tmp_path / "m2.json")


def test_aist_manifest_lists_the_raw_videos():
    m = dl.aist_manifest(["gBR_sBM_c01_d04_mBR0_ch01", ""])
    assert m["files"] == [{"name": "gBR_sBM_c01_d04_mBR0_ch01.mp4", "sha256": None, "unpack": False,
                           "url": "https://aistdancedb.ongaaccel.jp/v1.0.0/video/10M/"
                                  "gBR_sBM_c01_d04_mBR0_ch01.mp4"}]


CSV = ('---g-f_I2yQ,1,"people marching",test\n'
       "--0PQM4-hqg,30,waterfall burbling,train\n"
       '--56QUhyDQM,185,"playing tennis, indoor",test\n')


def test_vggsound_needs_yt_dlp(tmp_path, monkeypatch):
    (tmp_path / "v.csv").write_text(CSV)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(dl.MissingDependency, match=r"pip install 'mmdisco\[vggsound\]'"):
        dl.fetch_vggsound(tmp_path / "v.csv", tmp_path / "out", progress=False)
    from click.testing import CliRunner
    from mmdisco.cli import main as mmdisco
    got = CliRunner().invoke(mmdisco, ["download", "vggsound", "--csv", str(tmp_path / "v.csv"),
                                       "--out", str(tmp_path / "o")])
    assert got.exit_code == 1 and "pip install 'mmdisco[vggsound]'" in got.output


def test_vggsound_with_a_stand_in_yt_dlp(tmp_path):
    (tmp_path / "v.csv").write_text(CSV)
    clips = dl.read_vggsound_csv(tmp_path / "v.csv", split="test")
    assert [(c.ytid, c.start, c.label) for c in clips] == [
        ("---g-f_I2yQ", 1, "people marching"), ("--56QUhyDQM", 185, "playing tennis, indoor")]
    fake = tmp_path / "yt-dlp"   # writes its -o file, fails for one id, logs its arguments
    fake.write_text(f"#!{sys.executable}\nimport sys\nargs = sys.argv[1:]\n"
                    f"open({str(tmp_path / 'calls.txt')!r}, 'a').write(' '.join(args) + '\\n')\n"
                    "if args[-1].endswith('--56QUhyDQM'):\n    sys.exit('video unavailable')\n"
                    "open(args[args.index('-o') + 1], 'wb').write(b'mp4')\n")
    fake.chmod(0o755)
    report = dl.fetch_vggsound(tmp_path / "v.csv", tmp_path / "out", yt_dlp=str(fake), progress=False)
    assert report == {"requested": 2, "fetched": 1, "failed": 1}
    assert (tmp_path / "out" / "videos" / "---g-f_I2yQ_000001.mp4").read_bytes() == b"mp4"
    labels = json.loads((tmp_path / "out" / "labels.json").read_text())
    assert labels == {"---g-f_I2yQ_000001.mp4": "people marching"}
    # the captions CSV that data.captions reads (paths relative to out/videos, the data.folder)
    assert read_captions(tmp_path / "out" / "captions.csv", tmp_path / "out" / "videos") == labels
    assert "unavailable" in json.loads((tmp_path / "out" / "failed.json").read_text())[
        "--56QUhyDQM_000185.mp4"]
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert "--download-sections *1-11" in calls[0]
    dl.fetch_vggsound(tmp_path / "v.csv", tmp_path / "out", yt_dlp=str(fake), progress=False)
    assert len((tmp_path / "calls.txt").read_text().splitlines()) == 3   # the kept clip is skipped


def test_captions_csv_round_trips_labels_with_commas_and_quotes(tmp_path):
    captions = {"a.mp4": "playing tennis, indoor", "sub/b.mp4": 'a "quoted" label', "c.mp4": ""}
    dl.write_captions(tmp_path / "captions.csv", captions)
    assert read_captions(tmp_path / "captions.csv", tmp_path) == captions


def test_download_is_an_mmdisco_subcommand_with_one_line_errors(tmp_path):
    from click.testing import CliRunner
    from mmdisco.cli import main as mmdisco
    runner = CliRunner()
    got = runner.invoke(mmdisco, ["download", "info"])
    assert got.exit_code == 0 and got.output.startswith("landscape:") and "vggsound:" in got.output
    assert set(runner.invoke(mmdisco, ["download", "--help"]).output.split()) >= {
        "info", "fetch", "aist-manifest", "vggsound"}
    bad = tmp_path / "m.json"
    bad.write_text('{"dataset": "x", "files": [{"name": "a.zip", "url": "ftp://h/a.zip"}]}')
    got = runner.invoke(mmdisco, ["download", "fetch", str(bad), "--out", str(tmp_path / "o")])
    assert got.exit_code == 1 and got.output.startswith("Error: ") and "Traceback" not in got.output
