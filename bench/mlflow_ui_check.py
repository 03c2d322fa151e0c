"""Check in headless Chromium that the MLflow UI shows the project's `evaluate` run.

    python bench/mlflow_ui_check.py [--project DIR] [--screenshot PATH] [--run-id ID]
                                    [--param NAME ...] [--metric NAME ...] [--save-dom DIR]

Starts `mlflow ui` on a free loopback port against DIR/mlflow.db, opens the newest finished
run tagged `mmdisco.stage = evaluate` and verifies that the rendered page shows params with
their values, metric names and the sample mp4s in the artifact view. Exits 0 when all is
shown (or, with a "skipped" line, when no Chromium is installed), 1 when something is
missing, 2 on a usage error such as a missing store.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support import uicheck  # noqa: E402  (test tooling, outside the package)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, default=Path("."),
                    help="project folder holding mlflow.db [default: current folder]")
    ap.add_argument("--screenshot", type=Path, default=None,
                    help="save a screenshot of the run page here (e.g. docs/img/mlflow-run.png)")
    ap.add_argument("--run-id", default=None, help="check this run instead of the newest evaluate")
    ap.add_argument("--param", action="append", default=None, metavar="NAME",
                    help=f"param to find with its value, repeatable [default: "
                         f"{', '.join(uicheck.DEFAULT_PARAMS)}]")
    ap.add_argument("--metric", action="append", default=None, metavar="NAME",
                    help=f"metric name to find, repeatable [default: "
                         f"{', '.join(uicheck.DEFAULT_METRICS)}]")
    ap.add_argument("--save-dom", type=Path, default=None, metavar="DIR",
                    help="keep the rendered DOMs here for debugging")
    args = ap.parse_args(argv)

    chrome = uicheck.find_chromium()
    if not chrome:
        print("skipped: no chromium (looked for " + ", ".join(uicheck.CHROMIUM_NAMES) +
              "; set MMDISCO_CHROMIUM to a binary)")
        return 0
    store = args.project / "mlflow.db"
    if not store.is_file():
        print(f"error: {store}: no MLflow store (run the pipeline first)", file=sys.stderr)
        return 2
    try:
        result = uicheck.check_run_page(
            str(store), chrome=chrome, run_id=args.run_id,
            params=args.param or uicheck.DEFAULT_PARAMS,
            metrics=args.metric or uicheck.DEFAULT_METRICS,
            screenshot_path=args.screenshot, dom_dir=args.save_dom)
    except uicheck.UICheckError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    print(f"MLflow UI shows the evaluate run ({chrome}):")
    print("\n".join(result.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
