"""Run a Python command and SIGKILL it at one exact point of its atomic writes.

    python tests/support/kill_at.py NAME:PHASE[:K] -m mmdisco.cli STAGE ARGS...
    python tests/support/kill_at.py NAME:PHASE[:K] -c CODE

kills this process just before (PHASE ``before``) or just after (``after``) the rename that
commits its K-th atomic write (default the 1st) of a file or folder named NAME, so that the
interruption tests land a ``kill -9`` on an exact point of a stage's write sequence. It wraps
``mmdisco.io.atomic_path`` before anything imports it; the package itself has no test hook.
"""
from __future__ import annotations

import contextlib
import os
import runpy
import signal
import sys
from pathlib import Path


def install(spec: str) -> None:
    """Wrap ``mmdisco.io.atomic_path`` so that it kills this process at ``spec``."""
    from mmdisco import io

    want, when, *k = spec.split(":") + [""]
    nth = int(k[0] or 1)
    original, commits = io.atomic_path, {}

    def kill_if(name: str, phase: str) -> None:
        if name == want and phase == when and commits.get(name) == nth:
            os.kill(os.getpid(), signal.SIGKILL)

    @contextlib.contextmanager
    def atomic_path(dest):
        name = Path(dest).name
        with original(dest) as target:
            yield target
            if Path(target).exists():          # the write is committed when this exits
                commits[name] = commits.get(name, 0) + 1
                kill_if(name, "before")
        kill_if(name, "after")

    io.atomic_path = atomic_path


def main(argv: list[str]) -> None:
    spec, flag, target, *rest = argv
    install(spec)
    if flag == "-c":
        sys.argv = ["-c", *rest]
        exec(compile(target, "<kill_at>", "exec"), {"__name__": "__main__"})
    elif flag == "-m":
        sys.argv = [target, *rest]
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    else:
        raise SystemExit("usage: kill_at.py NAME:PHASE[:K] (-m MODULE | -c CODE) ARGS...")


if __name__ == "__main__":
    main(sys.argv[1:])
