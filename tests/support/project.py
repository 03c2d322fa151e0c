"""Utilities for tests and benchmarks: a throw-away copy of the project as its own DVC repo."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def project_files(root: Path = ROOT) -> list[str]:
    """Files a clone would have: tracked plus untracked-but-not-ignored."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                         cwd=root, capture_output=True, check=True)
    return [f for f in out.stdout.decode().split("\0") if f and (root / f).is_file()]


def run(cmd: list[str], cwd: Path, env: dict | None = None, check: bool = True,
        timeout: float = 1800) -> subprocess.CompletedProcess:
    """Run a command with this interpreter's bin folder first on PATH (as `make` does)."""
    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                "DVC_NO_ANALYTICS": "1", **(env or {})}
    full_env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n"
                           f"{proc.stderr}")
    return proc


def set_params(params_file: Path, overrides: dict[str, Any]) -> None:
    params = yaml.safe_load(params_file.read_text())
    for dotted, value in overrides.items():
        node = params
        *parents, last = dotted.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))


def make_project(dest: Path, overrides: dict[str, Any] | None = None) -> Path:
    """Copy the project into ``dest`` as a fresh git repo, with ``params.yaml`` overridden."""
    for rel in project_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    set_params(dest / "params.yaml", overrides or {})
    git = ["git", "-c", "user.email=test@mmdisco.invalid", "-c", "user.name=test"]
    run(["git", "init", "-q"], dest)
    run(git + ["add", "-A"], dest)
    run(git + ["commit", "-qm", "init"], dest)
    return dest
