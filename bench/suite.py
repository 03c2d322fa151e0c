"""Benchmark suite: pipeline stage times, guided sampling cost, model sizes, clip throughput, memory.

    # everything: run the default pipeline (~10 min on 2 CPU cores), then measure on its models
    MMDISCO_THREADS=1 python bench/suite.py --keep /tmp/bench-proj

    # reuse a project folder made by `bench/pipeline.py --keep DIR` (or `dvc repro`): no pipeline
    MMDISCO_THREADS=1 python bench/suite.py --project /tmp/bench-proj

    # only some sections, smaller and faster
    python bench/suite.py --project DIR --sections sampling,parameters --batch 64 --steps 3

Sections (``--sections``, default all; the pipeline runs when ``--pipeline`` is given, and by
default when no ``--project`` is):

pipeline    ``bench/pipeline.py --keep DIR --out TMP`` as a subprocess (``--set``/``--stages``
            are passed on): wall seconds per stage, and the peak RSS of the process tree per
            stage. Its kept project is what the other sections measure unless ``--project``.
sampling    ``sample_joint`` at one batch of ``--batch`` pairs and ``--steps`` steps, for
            unguided / discriminator / critic / discriminator + critic (critic rows only when
            ``models/critic`` exists). Scales and sampler kind come from the project's
            params.yaml (a zero scale is replaced by 1: a zero-scale module is never run).
            One short warm-up run per configuration, then the median of ``--repeats`` runs:
            seconds per step, ratio to the unguided step, and seconds per base pass (one
            modality's ε) and per guidance pass (one module's forward + input gradient) from
            the sampler's StepTimer.
parameters  parameter counts of both bases, the discriminator and the critic, and their ratios.
clips       ``extract_clips`` on the first ``--files`` media files of ``data/raw`` (with the
            project's ``data.clip`` params, at its worker count and at 1 worker) against plain
            single-threaded decoding of the same files: PyAV (every video frame to RGB and every
            audio frame to an array) and decord's VideoReader (every frame, video only). Files
            are read once first so every method sees a warm page cache. The first extraction
            call (which starts the forkserver) is reported separately as ``first_call_s``.

Memory: ``memory.self_maxrss_mib`` is ``getrusage(RUSAGE_SELF).ru_maxrss`` of this process and
``memory.children_maxrss_mib`` is ``RUSAGE_CHILDREN``: the largest single descendant that was
waited for (pipeline stages; not the forkserver workers of extract_clips, which this process never
reaps). Per section, a background thread reads ``VmRSS`` from ``/proc`` every ``--rss-interval``
seconds: ``peak_rss_mib`` is this process's peak (exact when the section raised the process's
``VmHWM``, else sampled, so spikes shorter than the interval can be missed) and
``peak_tree_rss_mib`` the peak of the summed RSS of this process and all its descendants (shared
pages counted once per process, so an upper bound). ``rss_start_mib`` is the RSS when the section
began: memory that the allocator kept from earlier sections is included in later peaks.

Timings are printed as tables and written to a JSON report (``--out``, default
``bench/report.json``). No asserts: a benchmark measures, it does not judge.
"""
from __future__ import annotations

# PyAV must be imported before decord in a process: the other order leaves PyAV unable to open
# the VP8/VP9 encoders.
import av  # noqa: F401  (import order matters, see above)

import argparse
import datetime
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/suite.py` from anywhere
    sys.path.insert(0, str(ROOT))

SECTIONS = ("sampling", "parameters", "clips")
MEDIA_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v")
MIB = 1024 * 1024


# --------------------------------------------------------------------------- memory
def _status_kib(pid: int | str, key: str) -> int:
    """A ``kB`` field (VmRSS, VmHWM) of ``/proc/<pid>/status``; 0 when unreadable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _descendants(root: int) -> list[int]:
    """Every live descendant of ``root``, from the parent pids in ``/proc/*/stat``."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # fields after the command (which may hold spaces and parentheses): state ppid ...
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


class PeakRSS:
    """Peak resident memory of this process, and of its process tree, during a ``with`` block.

    A daemon thread reads ``VmRSS`` every ``interval`` seconds (the descendants are listed again
    every ``rescan`` samples). ``lap()`` returns the peaks since the previous lap and restarts
    them. ``interval <= 0`` disables sampling (only the VmHWM-based self peak remains).
    """

    def __init__(self, interval: float = 0.01, tree: bool = False, rescan: int = 10):
        self.interval, self.tree, self.rescan = interval, tree, max(1, rescan)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.result: dict[str, float] = {}

    def _sample(self, kids: list[int]) -> None:
        me = _status_kib("self", "VmRSS")
        total = me + sum(_status_kib(p, "VmRSS") for p in kids) if self.tree else me
        with self._lock:
            self._self_peak = max(self._self_peak, me)
            self._tree_peak = max(self._tree_peak, total)
            self._samples += 1

    def _run(self) -> None:
        kids: list[int] = []
        n = 0
        while not self._stop.is_set():
            if self.tree and n % self.rescan == 0:
                kids = _descendants(os.getpid())
            self._sample(kids)
            n += 1
            self._stop.wait(self.interval)

    def _reset(self) -> None:
        self._self_peak = self._tree_peak = self._samples = 0
        self._start_rss = _status_kib("self", "VmRSS")
        self._start_hwm = _status_kib("self", "VmHWM")
        self._t0 = time.perf_counter()

    def lap(self) -> dict[str, float]:
        """Peaks since the block began or the last lap (MiB), then start a new lap."""
        hwm = _status_kib("self", "VmHWM")
        self._sample(_descendants(os.getpid()) if self.tree else [])
        with self._lock:
            # A VmHWM that rose during the lap is this lap's exact peak.
            self_peak = hwm if hwm > self._start_hwm else self._self_peak
            out = {"peak_rss_mib": round(self_peak / 1024, 1),
                   "rss_start_mib": round(self._start_rss / 1024, 1),
                   "peak_exact": hwm > self._start_hwm,
                   "samples": self._samples,
                   "seconds": round(time.perf_counter() - self._t0, 3)}
            if self.tree:
                out["peak_tree_rss_mib"] = round(max(self._tree_peak, self_peak) / 1024, 1)
            self._reset()
        return out

    def __enter__(self) -> "PeakRSS":
        self._reset()
        if self.interval > 0:
            self._thread = threading.Thread(target=self._run, daemon=True, name="peak-rss")
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.result = self.lap()


def process_maxrss() -> dict[str, float]:
    """Whole-run peaks from getrusage (Linux reports KiB)."""
    return {"self_maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "children_maxrss_mib": round(
                resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}


# --------------------------------------------------------------------------- printing
def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0:
            return "0"
        return f"{value:.3g}" if abs(value) < 1 else f"{value:,.2f}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    """One readable table: a title line, a header and one line per row (missing cells: -)."""
    cells = [[_fmt(r[c]) if r.get(c) is not None else "-" for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    print(f"\n== {title}")
    print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(columns, widths))))
    for row in cells:
        print("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))))
    sys.stdout.flush()


# --------------------------------------------------------------------------- project
def project_params(proj: Path):
    """The project's validated params; the repository's own when the project's no longer load."""
    from mmdisco.config import ConfigError, load_params
    try:
        return load_params(proj / "params.yaml"), str(proj / "params.yaml")
    except (ConfigError, FileNotFoundError) as e:
        print(f"warning: {proj / 'params.yaml'} does not load with this code ({e}); using "
              f"{ROOT / 'params.yaml'}", file=sys.stderr)
        return load_params(ROOT / "params.yaml"), str(ROOT / "params.yaml")


def load_models(proj: Path) -> dict[str, Any]:
    """Bases, discriminator and (when the folder has one) critic of a trained project."""
    from mmdisco.bases import load_base
    from mmdisco.guidance.store import load_guide
    models = {"base_audio": load_base(proj / "models/base_audio"),
              "base_video": load_base(proj / "models/base_video"),
              "discriminator": load_guide(proj / "models/discriminator")}
    if (proj / "models/critic/discriminator.json").is_file():
        models["critic"] = load_guide(proj / "models/critic")
    return models


# --------------------------------------------------------------------------- pipeline
_STAGE_LINE = re.compile(r"^(\w+)\s+(\d+(?:\.\d+)?) s$")


def run_pipeline(keep: Path, *, overrides: list[str] = (), stages: str | None = None,
                 rss_interval: float = 0.05) -> dict:
    """Run ``bench/pipeline.py --keep keep`` as a subprocess, echoing its lines; stage times and
    the peak RSS of the process tree during each stage."""
    with tempfile.TemporaryDirectory(prefix="mmdisco-suite-") as tmp:
        out = Path(tmp) / "pipeline.json"
        cmd = [sys.executable, str(ROOT / "bench/pipeline.py"), "--out", str(out), "--keep", str(keep)]
        for item in overrides:
            cmd += ["--set", item]
        if stages:
            cmd += ["--stages", stages]
        per_stage: dict[str, dict] = {}
        t0 = time.perf_counter()
        with PeakRSS(rss_interval, tree=True) as mem:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, bufsize=1)
            for line in proc.stdout:  # the first stage's lap includes the setup (project copy)
                print(f"  | {line}", end="", flush=True)
                m = _STAGE_LINE.match(line.strip())
                if m and m.group(1) != "total":
                    per_stage[m.group(1)] = mem.lap()
            rc = proc.wait()
        wall = time.perf_counter() - t0
        if rc != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed with exit code {rc}")
        report = json.loads(out.read_text())
    laps = [*per_stage.values(), mem.result]  # the last lap: after the last stage line
    memory = {"peak_rss_mib": max(lap["peak_rss_mib"] for lap in laps),
              "peak_tree_rss_mib": max(lap["peak_tree_rss_mib"] for lap in laps),
              "children_maxrss_mib": process_maxrss()["children_maxrss_mib"]}
    return {"project": str(keep), "overrides": report.get("overrides", {}),
            "stage_seconds": report["stage_seconds"], "total_seconds": report["total_seconds"],
            "wall_s": round(wall, 2),
            "stage_peak_tree_rss_mib": {s: v.get("peak_tree_rss_mib") for s, v in per_stage.items()},
            "memory": memory, "metrics": report.get("metrics", {})}


def print_pipeline(res: dict) -> None:
    total = res["total_seconds"]
    rows = [{"stage": s, "seconds": t, "share": t / total if total else None,
             "peak_tree_rss_mib": res["stage_peak_tree_rss_mib"].get(s)}
            for s, t in res["stage_seconds"].items()]
    rows.append({"stage": "total", "seconds": total, "share": 1.0,
                 "peak_tree_rss_mib": res["memory"].get("peak_tree_rss_mib")})
    print_table("pipeline stages (wall s)", rows, ["stage", "seconds", "share", "peak_tree_rss_mib"])


# --------------------------------------------------------------------------- sampling
def _guide_configs(models: dict, guidance) -> tuple[dict[str, list], dict]:
    """The guides of each configuration, and the scales used."""
    from mmdisco.guidance.sampler import Guide   # mmdisco is importable once ROOT is on sys.path
    s_a, s_v = guidance.scales
    if s_a == 0 and s_v == 0:
        s_a = s_v = 1.0
    c_a, c_v = guidance.critic_scales
    if c_a == 0 and c_v == 0:
        c_a, c_v = 1.0, 0.0
    D, C = models["discriminator"], models.get("critic")
    configs = {"unguided": [], "discriminator": [Guide(D, s_a, s_v)]}
    if C is not None:
        configs["critic"] = [Guide(C, c_a, c_v)]
        configs["discriminator+critic"] = [Guide(D, s_a, s_v), Guide(C, c_a, c_v)]
    return configs, {"discriminator": [s_a, s_v], "critic": [c_a, c_v] if C is not None else None}


def measure_sampling(models: dict, params, *, batch: int = 256, steps: int = 5, repeats: int = 3,
                     warmup_steps: int = 2, seed: int = 0, rss_interval: float = 0.01) -> dict:
    """Per-step time of ``sample_joint`` per guidance configuration (median of ``repeats``)."""
    from mmdisco.guidance.sampler import SamplerSettings, StepTimer, sample_joint
    from mmdisco.seeds import modality_generators
    configs, scales = _guide_configs(models, params.guidance)
    rows: dict[str, dict] = {}
    for name, guides in configs.items():

        def run(n: int, guides=guides) -> StepTimer:
            timer = StepTimer()
            sample_joint(models["base_audio"], models["base_video"],
                         SamplerSettings(steps=n, kind=params.sample.kind, eta=params.sample.eta),
                         guides=guides, num_samples=batch, batch_size=batch,
                         generators=modality_generators(seed), timer=timer)
            return timer

        if warmup_steps > 0:
            run(warmup_steps)
        runs = []
        with PeakRSS(rss_interval) as mem:
            for _ in range(repeats):
                runs.append(run(steps))
        med = statistics.median
        step_s = [t.total_s / steps for t in runs]
        row = {"step_s": med(step_s), "step_s_runs": [round(x, 4) for x in step_s],
               "base_pass_s": med([t.base_s / t.base_passes for t in runs]),
               "base_passes_per_step": runs[0].base_passes / steps,
               "guidance_passes_per_step": runs[0].guidance_passes / steps,
               "scheduler_step_s": med([t.step_s / steps for t in runs])}
        if runs[0].guidance_passes:
            row["guidance_pass_s"] = med([t.guidance_s / t.guidance_passes for t in runs])
            row["guidance_s_per_step"] = med([t.guidance_s / steps for t in runs])
        row["memory"] = mem.result
        rows[name] = row
        print(f"  sampling {name:22s} {row['step_s']:.3f} s/step", flush=True)
    unguided = rows["unguided"]["step_s"]
    for row in rows.values():
        row["step_ratio_vs_unguided"] = row["step_s"] / unguided
        row["overhead_s_per_step"] = row["step_s"] - unguided
        if "guidance_pass_s" in row:
            # one guidance pass vs one base pass (one modality's ε), and vs a step's two base passes
            row["guidance_pass_over_base_pass"] = row["guidance_pass_s"] / row["base_pass_s"]
            row["guidance_pass_over_step_base"] = row["guidance_pass_s"] / (2 * row["base_pass_s"])
    return {"batch": batch, "steps": steps, "repeats": repeats, "warmup_steps": warmup_steps,
            "kind": params.sample.kind, "eta": params.sample.eta, "scales": scales,
            "torch_threads": torch.get_num_threads(), "configs": rows}


def print_sampling(res: dict) -> None:
    rows = [{"config": k, **v, "peak_rss_mib": v["memory"]["peak_rss_mib"]}
            for k, v in res["configs"].items()]
    print_table(f"sampling: batch {res['batch']}, {res['steps']} {res['kind']} steps, median of "
                f"{res['repeats']} (torch threads {res['torch_threads']})", rows,
                ["config", "step_s", "step_ratio_vs_unguided", "base_pass_s", "guidance_pass_s",
                 "guidance_pass_over_base_pass", "guidance_pass_over_step_base",
                 "guidance_passes_per_step", "peak_rss_mib"])


# --------------------------------------------------------------------------- parameters
def count_parameters(module: Any) -> int:
    fn = getattr(module, "num_parameters", None)
    return int(fn()) if callable(fn) else sum(p.numel() for p in module.parameters())


def measure_parameters(models: dict) -> dict:
    counts = {name: count_parameters(m) for name, m in models.items()}
    bases = counts["base_audio"] + counts["base_video"]
    guides = counts["discriminator"] + counts.get("critic", 0)
    ratios = {"discriminator_over_bases": counts["discriminator"] / bases,
              "discriminator_over_base_audio": counts["discriminator"] / counts["base_audio"],
              "discriminator_over_base_video": counts["discriminator"] / counts["base_video"],
              "guidance_over_bases": guides / bases}
    if "critic" in counts:
        ratios["critic_over_bases"] = counts["critic"] / bases
        ratios["critic_over_discriminator"] = counts["critic"] / counts["discriminator"]
    return {"counts": counts, "bases_total": bases, "guidance_total": guides, "ratios": ratios}


def print_parameters(res: dict) -> None:
    rows = [{"model": k, "parameters": v, "share_of_bases": v / res["bases_total"]}
            for k, v in res["counts"].items()]
    rows += [{"model": "bases (audio + video)", "parameters": res["bases_total"], "share_of_bases": 1.0},
             {"model": "guidance (D + critic)", "parameters": res["guidance_total"],
              "share_of_bases": res["ratios"]["guidance_over_bases"]}]
    print_table("parameters", rows, ["model", "parameters", "share_of_bases"])


# --------------------------------------------------------------------------- clips
def media_files(raw: Path, limit: int) -> list[Path]:
    """The first ``limit`` media files under ``raw`` (sorted, recursive)."""
    files = sorted(p for p in raw.rglob("*") if p.suffix.lower() in MEDIA_SUFFIXES and p.is_file())
    return files[:limit] if limit > 0 else files


def decode_pyav(files: list[Path]) -> dict:
    """Decode every video frame (to RGB arrays) and every audio frame (to arrays), one thread."""
    frames = samples = 0
    for path in files:
        with av.open(str(path)) as src:
            streams = [*src.streams.video[:1], *src.streams.audio[:1]]
            for st in streams:
                st.thread_count = 1
            for frame in src.decode(*streams):
                if isinstance(frame, av.VideoFrame):
                    frame.to_ndarray(format="rgb24")
                    frames += 1
                else:
                    samples += frame.to_ndarray().shape[-1]
    return {"frames": frames, "audio_samples": samples}


def decode_decord(files: list[Path], chunk: int = 64) -> dict:
    """Read every video frame with decord's VideoReader (one thread; no audio)."""
    import decord  # after av (see the import at the top)
    frames = 0
    for path in files:
        vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        n = len(vr)
        for s in range(0, n, chunk):
            frames += len(vr.get_batch(list(range(s, min(s + chunk, n)))).asnumpy())
        del vr
    return {"frames": frames}


def measure_clips(raw: Path, clip_cfg, *, files: int = 64, repeats: int = 3,
                  rss_interval: float = 0.01) -> dict:
    """``extract_clips`` vs plain decoding of the same files: files/s and clips/s."""
    import dataclasses
    from mmdisco.data.clips import extract_clips
    paths = media_files(raw, files)
    if not paths:
        raise FileNotFoundError(f"no media files under {raw}")
    size = sum(p.stat().st_size for p in paths)
    for p in paths:  # warm the page cache for every method alike
        p.read_bytes()
    workers = sorted({clip_cfg.workers, 1}, reverse=True)
    methods: dict[str, Callable[[list[Path], Path], dict]] = {}
    for w in workers:
        cfg = dataclasses.replace(clip_cfg, workers=w)
        methods[f"extract_clips[{w} worker{'s' if w > 1 else ''}]"] = (
            lambda fs, out, cfg=cfg: extract_clips(fs, out, cfg))
    methods["pyav_decode"] = lambda fs, out: decode_pyav(fs)
    methods["decord_video"] = lambda fs, out: decode_decord(fs)
    rows: dict[str, dict] = {}
    first_call = None
    with tempfile.TemporaryDirectory(prefix="mmdisco-suite-clips-") as tmp:
        counter = 0

        def timed(fn, fs):
            nonlocal counter
            counter += 1
            t0 = time.perf_counter()
            info = fn(fs, Path(tmp) / f"out{counter}")
            return time.perf_counter() - t0, info

        for name, fn in methods.items():
            warm_s, _ = timed(fn, paths[:2])  # warm-up: imports, forkserver, codec setup
            if first_call is None:
                first_call = warm_s
            times, info = [], {}
            with PeakRSS(rss_interval, tree=True) as mem:
                for _ in range(repeats):
                    s, info = timed(fn, paths)
                    times.append(s)
            shutil.rmtree(tmp, ignore_errors=True)
            Path(tmp).mkdir(exist_ok=True)
            seconds = statistics.median(times)
            row = {"seconds": seconds, "seconds_runs": [round(x, 4) for x in times],
                   "files_per_s": len(paths) / seconds, "memory": mem.result}
            row.update({k: info[k] for k in ("clips", "used_files", "rejected_files", "frames",
                                             "audio_samples") if k in info})
            rows[name] = row
            print(f"  clips {name:28s} {seconds:.3f} s", flush=True)
    extract_names = [n for n in rows if n.startswith("extract_clips")]
    clips = rows[extract_names[0]].get("clips", 0)
    for row in rows.values():
        row["clips_per_s"] = clips / row["seconds"]
    ratios = {}
    for name in extract_names:
        for plain in ("pyav_decode", "decord_video"):
            ratios[f"{name}/{plain}"] = rows[name]["seconds"] / rows[plain]["seconds"]
    ratios["pyav_decode/decord_video"] = rows["pyav_decode"]["seconds"] / rows["decord_video"]["seconds"]
    return {"files": len(paths), "bytes": size, "clips": clips, "repeats": repeats,
            "first_call_s": first_call, "clip_config": dataclasses.asdict(clip_cfg),
            "methods": rows, "time_ratios": ratios}


def print_clips(res: dict) -> None:
    rows = [{"method": k, **v, "peak_tree_rss_mib": v["memory"].get("peak_tree_rss_mib")}
            for k, v in res["methods"].items()]
    print_table(f"clips: {res['files']} files ({res['bytes'] / MIB:.1f} MiB), {res['clips']} clips, "
                f"median of {res['repeats']}", rows,
                ["method", "seconds", "files_per_s", "clips_per_s", "peak_tree_rss_mib"])
    print_table("clips: time ratios (> 1: the first is slower)",
                [{"ratio": k, "value": v} for k, v in res["time_ratios"].items()], ["ratio", "value"])
    print(f"  first extract_clips call on 2 files (starts the forkserver): {res['first_call_s']:.2f} s")


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[1:]))
    ap.add_argument("--project", type=Path, default=None,
                    help="an already-run project folder (bench/pipeline.py --keep DIR)")
    ap.add_argument("--pipeline", action=argparse.BooleanOptionalAction, default=None,
                    help="run bench/pipeline.py first [default: only without --project]")
    ap.add_argument("--keep", type=Path, default=None,
                    help="where the pipeline builds its project (kept) [default: a temp folder, "
                         "removed at the end]")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="params override for the pipeline, repeatable")
    ap.add_argument("--stages", default=None, help="pipeline stages to time [default: all]")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated subset of {','.join(SECTIONS)} [default: all]")
    ap.add_argument("--batch", type=int, default=256, help="sampling batch (pairs) [default: 256]")
    ap.add_argument("--steps", type=int, default=5, help="sampler steps per timed run [default: 5]")
    ap.add_argument("--warmup-steps", type=int, default=2, help="steps of the warm-up run [default: 2]")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median) [default: 3]")
    ap.add_argument("--files", type=int, default=64, help="media files for the clips section (0: all) [default: 64]")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads [env MMDISCO_THREADS; default: torch's choice]")
    ap.add_argument("--rss-interval", type=float, default=0.01,
                    help="seconds between RSS samples (0: no sampling thread) [default: 0.01]")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/report.json", help="JSON report [default: bench/report.json]")
    args = ap.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        ap.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    args.sections = [s for s in SECTIONS if s in sections]
    if args.pipeline is None:
        args.pipeline = args.project is None
    if not args.pipeline and args.project is None:
        ap.error("give --project DIR (an already-run project) or run the pipeline (--pipeline)")
    if args.keep is not None and args.keep.exists():
        ap.error(f"--keep {args.keep} exists; give a new folder")
    if min(args.batch, args.steps, args.repeats) < 1 or args.warmup_steps < 0:
        ap.error("--batch, --steps and --repeats must be >= 1, --warmup-steps >= 0")
    if args.threads is None and os.environ.get("MMDISCO_THREADS"):
        args.threads = int(os.environ["MMDISCO_THREADS"])
    return args


def run_suite(args: argparse.Namespace) -> dict:
    """Run the chosen sections, print their tables, write and return the report."""
    if args.threads:
        torch.set_num_threads(args.threads)
    report: dict[str, Any] = {"meta": {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "sections": (["pipeline"] if args.pipeline else []) + args.sections}}
    temp_proj = None
    try:
        proj = args.project
        if args.pipeline:
            keep = args.keep
            if keep is None:
                temp_proj = Path(tempfile.mkdtemp(prefix="mmdisco-suite-proj-"))
                keep = temp_proj / "proj"
            print(f"== pipeline -> {keep}", flush=True)
            report["pipeline"] = run_pipeline(keep, overrides=args.set, stages=args.stages,
                                              rss_interval=max(args.rss_interval, 0.05))
            print_pipeline(report["pipeline"])
            proj = proj or keep
        report["meta"]["project"] = str(proj)
        if args.sections:
            params, source = project_params(proj)
            report["meta"]["params"] = source
        if {"sampling", "parameters"} & set(args.sections):
            with PeakRSS(args.rss_interval) as mem:
                models = load_models(proj)
            report["meta"]["load_models_memory"] = mem.result
            if "sampling" in args.sections:
                report["sampling"] = measure_sampling(
                    models, params, batch=args.batch, steps=args.steps, repeats=args.repeats,
                    warmup_steps=args.warmup_steps, rss_interval=args.rss_interval)
                print_sampling(report["sampling"])
            if "parameters" in args.sections:
                report["parameters"] = measure_parameters(models)
                print_parameters(report["parameters"])
        if "clips" in args.sections:
            report["clips"] = measure_clips(proj / "data/raw", params.data.clip, files=args.files,
                                            repeats=args.repeats, rss_interval=args.rss_interval)
            print_clips(report["clips"])
    finally:
        if temp_proj is not None:
            shutil.rmtree(temp_proj, ignore_errors=True)
    report["memory"] = process_maxrss()
    print_table("memory (whole run, getrusage)",
                [{"scope": k, "MiB": v} for k, v in report["memory"].items()], ["scope", "MiB"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nreport -> {args.out}")
    return report


def main(argv: list[str] | None = None) -> dict:
    return run_suite(parse_args(argv))


if __name__ == "__main__":  # the guard matters: extract_clips' forkserver re-imports __main__
    main()
