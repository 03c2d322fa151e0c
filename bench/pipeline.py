"""Time every stage of the default pipeline in a throw-away copy of the project.

    python bench/pipeline.py [--set data.synth.num_classes=8 ...] [--stages acquire,encode]
                             [--out bench/pipeline.json] [--keep DIR]

Prints one line per stage (wall seconds) and writes a JSON report. No asserts: a benchmark
measures, it does not judge.
"""
from __future__ import annotations

import argparse
import sys
import json
import re
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.project import make_project, run  # noqa: E402  (test tooling, outside the package)



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="params override (YAML value), repeatable")
    ap.add_argument("--stages", default=None,
                    help="comma-separated stages to time, in dvc.yaml order [default: all]")
    ap.add_argument("--out", type=Path, default=Path("bench/pipeline.json"))
    ap.add_argument("--keep", type=Path, default=None,
                    help="build the project copy here and keep it (data, models, mlflow.db)")
    args = ap.parse_args()
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    if args.keep is not None and args.keep.exists():
        ap.error(f"--keep {args.keep} exists; give a new folder")
    with tempfile.TemporaryDirectory(prefix="mmdisco-bench-") as tmp:
        proj = make_project(args.keep or Path(tmp) / "proj", overrides)
        timings, total0 = {}, time.perf_counter()
        stages = list(yaml.safe_load((proj / "dvc.yaml").read_text())["stages"])
        if args.stages:
            wanted = args.stages.split(",")
            unknown = sorted(set(wanted) - set(stages))
            if unknown:
                ap.error(f"unknown stage(s) {', '.join(unknown)}; dvc.yaml has {', '.join(stages)}")
            stages = [s for s in stages if s in wanted]
        for stage in stages:
            t0 = time.perf_counter()
            out = run(["dvc", "repro", "--single-item", stage], proj).stdout
            timings[stage] = round(time.perf_counter() - t0, 2)
            print(f"{stage:22s} {timings[stage]:8.2f} s", flush=True)
            for line in out.splitlines():
                if re.match(r"^\w[\w_]*: ", line):
                    print(f"    {line}")
        total = round(time.perf_counter() - total0, 2)
        metrics = {p.name: json.loads(p.read_text()) for p in (proj / "metrics").glob("*.json")}
    print(f"{'total':22s} {total:8.2f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"overrides": overrides, "stage_seconds": timings,
                                    "total_seconds": total, "metrics": metrics}, indent=2))
    print(f"report -> {args.out}")


if __name__ == "__main__":
    main()
