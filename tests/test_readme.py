"""Every command the README shows exists as written (no `command not found`, exit 127).

The README's ```bash blocks are read line by line; each command of a line (split at `&&`,
`||`, `;` and `|`, leading `VAR=value` assignments and `$(...)` substitutions left out) must
start with a shell builtin or keyword, a program the project installs into the venv, or a
system tool the README names as a prerequisite; `make` targets must exist in the Makefile,
`mmdisco` subcommands in its CLI, and `python FILE` scripts in the tree, each answering
`--help`. That assumes the venv is active, which the README's first command there does.
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mmdisco.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHELL = {"source", "export", "for", "do", "done", "cd", "test", "echo", "then", "fi", "if"}
SYSTEM = {"make", "git"}     # the README assumes a Linux machine with these


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = re.sub(r"\s#.*$", "", line).strip()        # a trailing comment
            line = re.sub(r"\$\([^)]*\)", "X", line)           # $(...) substitutions
            if line and not line.startswith("#"):
                lines += [c.strip() for c in re.split(r"&&|\|\||;|\|", line) if c.strip()]
    return lines


def words(command: str) -> list[str]:
    out = shlex.split(command)
    while out and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", out[0]):
        out = out[1:]
    return out


COMMANDS_SHOWN = readme_commands()


def test_the_readme_shows_commands():
    assert any(c.startswith("make run") for c in COMMANDS_SHOWN)
    assert any(c.startswith("dvc repro") for c in COMMANDS_SHOWN)


@pytest.mark.parametrize("command", COMMANDS_SHOWN)
def test_each_readme_command_exists(command):
    argv = words(command)
    while argv and argv[0] in {"do", "then"}:       # `for ...; do CMD; done`
        argv = argv[1:]
    if not argv or argv[0] in SHELL:
        return
    program = argv[0]
    if program == "make":
        targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))
        assert all(t in targets for t in argv[1:] if not t.startswith("-")), \
            f"README runs `{command}`, but the Makefile has only {sorted(targets)}"
        return
    if program in SYSTEM:
        return
    assert (BIN / program).is_file(), (f"README runs `{command}`, but `{program}` is not "
                                       f"installed into the venv ({BIN}): exit 127")
    if program == "mmdisco":
        sub = next((w for w in argv[1:] if not w.startswith("-")), None)
        assert sub is None or sub in COMMANDS, f"README runs `{command}`: no subcommand {sub!r}"
        if sub is not None:
            result = CliRunner().invoke(main, [sub, "--help"])
            assert result.exit_code == 0, result.output
    if program == "python" and len(argv) > 1 and argv[1].endswith(".py"):
        script = ROOT / argv[1]
        assert script.is_file(), f"README runs `{command}`, but {argv[1]} does not exist"
        help_run = subprocess.run([sys.executable, str(script), "--help"], cwd=ROOT,
                                  capture_output=True, text=True, timeout=120)
        assert help_run.returncode == 0, help_run.stderr[-2000:]
