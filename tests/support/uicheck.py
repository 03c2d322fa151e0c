"""Check in a real (headless) browser that the MLflow UI shows the `evaluate` run.

Starts ``mlflow ui`` on a free loopback port against a sqlite tracking store, finds the run
tagged ``mmdisco.stage = evaluate``, renders its page with headless Chromium
(``--dump-dom``) and verifies that the rendered page shows params with their values, metric
names and, on the artifacts view, the sample mp4 files. Optionally saves a screenshot.

Shared by ``bench/mlflow_ui_check.py`` (for CI or a person) and ``tests/test_mlflow_ui.py``.
Chromium is not a dependency of the project: callers skip when :func:`find_chromium` finds
none. The server (and each browser) runs in its own process group, killed on the way out.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Iterator, Sequence

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
                  "--mute-audio", "--no-default-browser-check")
STAGE_TAG = "mmdisco.stage"
DEFAULT_PARAMS = ("guidance.scale", "sample.steps")
DEFAULT_METRICS = ("guided.temporal_f1", "guided.semantic_agreement")
MEDIA_PATH = "guided/media"
# Keep the server small and quiet: one worker, no job runner, no telemetry.
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
              "DO_NOT_TRACK": "true", "MLFLOW_WORKERS": "1"}


class UICheckError(RuntimeError):
    """The server did not start, the run was not found, or the page lacks what it should show."""


# ---------------------------------------------------------------- small helpers

def find_chromium() -> str | None:
    """Path of a Chromium or Chrome binary (``MMDISCO_CHROMIUM`` first), or None."""
    explicit = os.environ.get("MMDISCO_CHROMIUM")
    if explicit:
        return shutil.which(explicit)
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sqlite_uri(store: str | Path) -> str:
    """``sqlite:///<absolute path>`` for a path or an existing sqlite URI (made absolute)."""
    text = str(store)
    if text.startswith("sqlite:///"):
        text = text[len("sqlite:///"):]
    elif "://" in text:
        raise UICheckError(f"{store}: only sqlite tracking stores are supported here")
    return f"sqlite:///{Path(text).resolve()}"


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _kill_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM then SIGKILL the process group that ``proc`` leads (started with a new session)."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    # children that outlive the leader (uvicorn workers, chromium helpers)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Accept": "*/*"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


# ---------------------------------------------------------------- the MLflow server

@contextlib.contextmanager
def mlflow_ui(tracking_uri: str, *, timeout: float = 90.0, port: int | None = None,
              python: str | None = None) -> Iterator[str]:
    """Run ``mlflow ui`` on loopback; yields its base URL, kills its process group on exit."""
    uri = sqlite_uri(tracking_uri)
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="mmdisco-mlflow-ui-"))  # ./mlartifacts etc. go here
    log = workdir / "server.log"
    cmd = [python or sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {**os.environ, **SERVER_ENV}
    env.pop("MLFLOW_TRACKING_URI", None)
    base = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise UICheckError(f"`{' '.join(cmd)}` exited with {proc.returncode} before "
                                   f"answering; its output ends:\n{_tail(log)}")
            try:
                status, _ = http_get(f"{base}/health", timeout=2.0)
                if status == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                raise UICheckError(f"`{' '.join(cmd)}` did not answer HTTP on {base} within "
                                   f"{timeout:.0f} s; its output ends:\n{_tail(log)}")
            time.sleep(0.5)
        yield base
    finally:
        _kill_group(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def list_artifacts_http(base: str, run_id: str, path: str) -> list[str]:
    """Artifact paths under ``path`` from the server's REST endpoint the UI itself calls."""
    query = urllib.parse.urlencode({"run_id": run_id, "path": path})
    status, body = http_get(f"{base}/ajax-api/2.0/mlflow/artifacts/list?{query}", timeout=15)
    if status != 200:
        raise UICheckError(f"artifact listing answered HTTP {status}: {body[:300]!r}")
    return [f["path"] for f in json.loads(body or b"{}").get("files", [])]


# ---------------------------------------------------------------- the browser

def chromium(chrome: str, args: Sequence[str], *, timeout: float = 120.0) -> str:
    """Run headless Chromium once with a fresh profile; returns its stdout."""
    profile = Path(tempfile.mkdtemp(prefix="mmdisco-chromium-"))
    cmd = [chrome, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    out_f, err_f = profile.parent / f"{profile.name}.out", profile.parent / f"{profile.name}.err"
    try:
        with open(out_f, "wb") as out, open(err_f, "wb") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True, cwd=profile)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise UICheckError(f"chromium did not finish within {timeout:.0f} s: {' '.join(cmd)}"
                               f"\n{_tail(err_f)}") from None
        finally:
            _kill_group(proc, grace=3.0)
        if proc.returncode != 0:
            raise UICheckError(f"chromium exited with {proc.returncode}: {' '.join(cmd)}\n"
                               f"{_tail(err_f)}")
        return out_f.read_text(errors="replace")
    finally:
        shutil.rmtree(profile, ignore_errors=True)
        out_f.unlink(missing_ok=True)
        err_f.unlink(missing_ok=True)


def dump_dom(chrome: str, url: str, *, budget_ms: int = 15000, window: str = "1400,1000",
             timeout: float = 120.0) -> str:
    """The DOM after the single-page app has rendered (virtual time lets its fetches finish)."""
    return chromium(chrome, [f"--virtual-time-budget={budget_ms}", f"--window-size={window}",
                             "--dump-dom", url], timeout=timeout)


def screenshot(chrome: str, url: str, path: str | Path, *, budget_ms: int = 15000,
               window: str = "1400,1000", timeout: float = 120.0) -> Path:
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    chromium(chrome, [f"--virtual-time-budget={budget_ms}", f"--window-size={window}",
                      f"--screenshot={path}", url], timeout=timeout)
    if not path.is_file() or path.stat().st_size == 0:
        raise UICheckError(f"chromium wrote no screenshot to {path}")
    return path


class _Text(HTMLParser):
    """The page's text nodes in document order, without scripts and styles."""

    SKIP = {"script", "style", "noscript", "template"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.nodes: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in self.SKIP:
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        text = " ".join(data.split())
        if text and not self._skip:
            self.nodes.append(text)


def text_nodes(dom: str) -> list[str]:
    parser = _Text()
    parser.feed(dom)
    parser.close()
    return parser.nodes


def shows_pair(nodes: Sequence[str], name: str, value: str, window: int = 4) -> bool:
    """A text node equal to ``name`` followed, within a few nodes, by one equal to ``value``."""
    return any(node == name and value in nodes[i + 1:i + 1 + window]
               for i, node in enumerate(nodes))


# ---------------------------------------------------------------- the run and the check

def find_evaluate_run(tracking_uri: str, run_id: str | None = None) -> Any:
    """The newest FINISHED run tagged ``mmdisco.stage = evaluate`` (or the run ``run_id``)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=sqlite_uri(tracking_uri))
    if run_id:
        return client.get_run(run_id)
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exp_ids, filter_string=f"tags.`{STAGE_TAG}` = 'evaluate' and "
                              "attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise UICheckError(f"{tracking_uri}: no FINISHED run tagged {STAGE_TAG} = evaluate "
                           "(has the `evaluate` stage run?)")
    return runs[0]


@dataclass
class UICheckResult:
    run_id: str
    experiment_id: str
    urls: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)     # shown on the page, with values
    metrics: list[str] = field(default_factory=list)         # names shown on the page
    media: list[str] = field(default_factory=list)           # mp4 names shown on the page
    media_http: list[str] = field(default_factory=list)      # mp4s from the REST listing
    video_player: bool = False                               # a <video> on the artifact view
    screenshot: Path | None = None
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"run {self.run_id} (experiment {self.experiment_id})"]
        out += [f"  page {k}: {v}" for k, v in self.urls.items()]
        out += [f"  param shown: {k} = {v}" for k, v in self.params.items()]
        out += [f"  metric shown: {m}" for m in self.metrics]
        out += [f"  mp4 shown in the artifact view: {m}" for m in self.media]
        if self.video_player:
            out.append("  the artifact view plays it in a <video> element")
        out.append(f"  mp4s listed by /ajax-api/2.0/mlflow/artifacts/list: {len(self.media_http)}")
        if self.screenshot:
            out.append(f"  screenshot: {self.screenshot}")
        out += [f"  note: {n}" for n in self.notes]
        return out


def _wanted(names: Sequence[str], have: dict[str, Any], kind: str,
            notes: list[str]) -> list[str]:
    present = [n for n in names if n in have]
    for n in names:
        if n not in have:
            notes.append(f"the run has no {kind} {n!r}; not checked")
    if not present:
        raise UICheckError(f"the run has none of the {kind}s to check: {', '.join(names)}")
    return present


def check_run_page(tracking_uri: str, *, chrome: str | None = None, run_id: str | None = None,
                   params: Sequence[str] = DEFAULT_PARAMS,
                   metrics: Sequence[str] = DEFAULT_METRICS, media_path: str = MEDIA_PATH,
                   screenshot_path: str | Path | None = None, dom_dir: str | Path | None = None,
                   budget_ms: int = 15000, server_timeout: float = 90.0) -> UICheckResult:
    """Verify that the MLflow UI renders the evaluate run's params, metrics and mp4 artifacts.

    Raises :class:`UICheckError` listing everything the page lacks. ``dom_dir`` keeps the
    rendered DOMs (``overview.html``, ``artifacts.html``) for debugging.
    """
    import mlflow

    chrome = chrome or find_chromium()
    if not chrome:
        raise UICheckError("no chromium binary found (tried: " + ", ".join(CHROMIUM_NAMES) + ")")
    uri = sqlite_uri(tracking_uri)
    if not Path(uri[len("sqlite:///"):]).is_file():
        raise UICheckError(f"{uri}: no such tracking store")
    run = find_evaluate_run(uri, run_id)
    rid, exp = run.info.run_id, run.info.experiment_id
    result = UICheckResult(rid, exp)
    want_params = {k: run.data.params[k]
                   for k in _wanted(params, run.data.params, "param", result.notes)}
    want_metrics = _wanted(metrics, run.data.metrics, "metric", result.notes)
    client = mlflow.MlflowClient(tracking_uri=uri)
    mp4s = sorted(Path(f.path).name for f in client.list_artifacts(rid, media_path)
                  if not f.is_dir and f.path.endswith(".mp4"))
    if not mp4s:
        raise UICheckError(f"run {rid} has no mp4 artifact under {media_path}/")

    failures: list[str] = []
    dom_dir = Path(dom_dir) if dom_dir else None
    if dom_dir:
        dom_dir.mkdir(parents=True, exist_ok=True)
    with mlflow_ui(uri, timeout=server_timeout) as base:
        page = f"{base}/#/experiments/{exp}/runs/{rid}"
        # the artifacts tab with the tree opened at (and the viewer on) one sample file
        art = f"{page}/artifactPath/{media_path}/{mp4s[0]}"
        result.urls = {"overview": page, "artifacts": art}

        dom = dump_dom(chrome, page, budget_ms=budget_ms)
        if dom_dir:
            (dom_dir / "overview.html").write_text(dom)
        nodes = text_nodes(dom)
        for k, v in want_params.items():
            if shows_pair(nodes, k, v):
                result.params[k] = v
            else:
                failures.append(f"overview page does not show param {k} = {v}")
        for m in want_metrics:
            if m in nodes:
                result.metrics.append(m)
            else:
                failures.append(f"overview page does not show metric {m}")

        dom = dump_dom(chrome, art, budget_ms=budget_ms)
        if dom_dir:
            (dom_dir / "artifacts.html").write_text(dom)
        nodes = text_nodes(dom)
        result.media = [m for m in mp4s if m in nodes]
        result.video_player = "<video" in dom  # MLflow 3 previews mp4 artifacts in a player
        if not result.media:
            failures.append(f"artifact view does not list any of {', '.join(mp4s[:3])}...")

        result.media_http = [p for p in list_artifacts_http(base, rid, media_path)
                             if p.endswith(".mp4")]
        if not result.media_http:
            failures.append(f"the server lists no mp4 under {media_path}/")

        if screenshot_path and not failures:
            result.screenshot = screenshot(chrome, page, screenshot_path, budget_ms=budget_ms)
    if failures:
        details = "\n".join(f"  - {f}" for f in failures)
        hint = f" (rendered DOMs in {dom_dir})" if dom_dir else ""
        raise UICheckError(f"MLflow UI check failed for run {rid}{hint}:\n{details}")
    return result
