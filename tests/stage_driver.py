"""Run stages of ``dvc.yaml`` in ONE process, in a project folder: the same ``mmdisco``
commands with the same options as ``dvc repro``, without paying the interpreter start-up and
imports (about 10 s on a busy CPU) once per stage.

    python tests/stage_driver.py PROJECT [STAGE ...]     # no STAGE: every stage, in order

Each stage runs with ``DVC_ROOT`` and ``DVC_STAGE`` set as DVC sets them, so MLflow logs into
``PROJECT/mlflow.db``. ``dvc.yaml`` lists the stages in dependency order. Used by the
determinism and interruption tests; a stage that fails raises with its traceback.
"""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import yaml


def stage_commands(project: Path) -> dict[str, list[str]]:
    """``{stage: argv after "mmdisco"}`` in the order of ``dvc.yaml``."""
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, spec in stages.items():
        argv = shlex.split(spec["cmd"])
        assert argv[0] == "mmdisco", spec["cmd"]
        out[name] = argv[1:]
    return out


def run_stages(project: Path, names: list[str] | None = None, threads: int = 1) -> None:
    from mmdisco.cli import main

    commands = stage_commands(project)
    os.chdir(project)
    os.environ["DVC_ROOT"] = str(project)
    for name in names or list(commands):
        os.environ["DVC_STAGE"] = name
        main.main(args=["--threads", str(threads), *commands[name]], prog_name="mmdisco",
                  standalone_mode=False)


if __name__ == "__main__":
    run_stages(Path(sys.argv[1]).resolve(), sys.argv[2:] or None)
