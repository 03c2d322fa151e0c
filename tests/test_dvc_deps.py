"""DVC must never serve a stale result: each stage's code deps in dvc.yaml are exactly the
project files that running the stage imports.

Pure static analysis with `ast`, nothing is imported: a stage's `cmd` (`mmdisco NAME ...`)
names a click subcommand; the module defining it is looked up in the `COMMANDS` table of
`mmdisco/cli.py`; the closure of both (the command runs `mmdisco/cli.py` first) follows absolute, relative and lazy (in-function)
imports, plus the `__init__.py` of every package on the way (importing `a.b.c` runs `a` and
`a.b` first). Only files under `mmdisco/` and `stages/` count.
"""
from __future__ import annotations

import ast
import shlex
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mmdisco", "stages")     # top-level packages whose files are project code
CLI = "mmdisco.cli"                  # defines the `mmdisco` command that dvc.yaml runs
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def module_file(name: str) -> Path | None:
    """The source file of project module or package `name`; None when `name` is neither."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@cache
def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def from_base(node: ast.ImportFrom, path: Path) -> str:
    """The absolute module of `from ... import`, relative forms resolved against `path`."""
    if node.level == 0:
        return node.module
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    parent = ".".join(package[:len(package) - node.level + 1])
    return f"{parent}.{node.module}" if node.module else parent


def imported_names(path: Path) -> set[str]:
    """Dotted names `path` imports anywhere, in functions too; `from m import x` gives m and
    m.x, since x may be a submodule."""
    names = set()
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = from_base(node, path)
            names |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return names


def with_parents(name: str) -> list[str]:
    """`a.b.c` -> `a`, `a.b`, `a.b.c`: the modules that importing `a.b.c` runs."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def closure(entry: str) -> set[str]:
    """Repo-relative paths of the project files that importing module `entry` runs."""
    seen: set[Path] = set()
    todo = [entry]
    while todo:
        for path in filter(None, map(module_file, with_parents(todo.pop()))):
            if path not in seen:
                seen.add(path)
                todo.extend(imported_names(path))
    return {rel(path) for path in seen}


def command_name(decorator: ast.expr, function: ast.FunctionDef) -> str | None:
    """The name `@click.command(...)` or `@click.group(...)` gives `function` (click's own
    default), else None."""
    if not (isinstance(decorator, ast.Call)
            and ast.unparse(decorator.func) in ("click.command", "click.group")):
        return None
    given = decorator.args[:1] + [k.value for k in decorator.keywords if k.arg == "name"]
    if given:
        return ast.literal_eval(given[0])
    name = function.name.lower().replace("_", "-")
    stem, dash, suffix = name.rpartition("-")
    return stem if dash and suffix in {"command", "cmd", "group", "grp"} else name


def click_commands(path: Path) -> set[str]:
    """Names of the click commands that module file `path` defines."""
    functions = [node for node in ast.walk(parse(path)) if isinstance(node, ast.FunctionDef)]
    names = {command_name(d, f) for f in functions for d in f.decorator_list}
    return names - {None}


@cache
def cli_commands() -> dict[str, str]:
    """Subcommand name -> module defining it: the ``COMMANDS`` table of `mmdisco/cli.py` (the
    group imports a subcommand's module when it runs), checked against the click command names
    that each module defines."""
    tree = parse(module_file(CLI))
    table = next(node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id == "COMMANDS" for t in node.targets))
    commands = ast.literal_eval(table)
    for command, name in commands.items():
        assert module_file(name) and command in click_commands(module_file(name)), \
            f"{CLI}.COMMANDS maps {command!r} to {name}, which defines no such click command"
    return commands


def entry_module(stage: str) -> str:
    """The module whose click command the stage's `cmd` runs (`mmdisco [OPTIONS] NAME ...`)."""
    cmd = STAGES[stage]["cmd"]
    words = shlex.split(cmd) if isinstance(cmd, str) else []
    names = [word for word in words[1:] if word in cli_commands()]
    assert words[:1] == ["mmdisco"] and names, \
        f"stage {stage!r}: cmd {cmd!r} runs no `mmdisco` subcommand of {CLI}"
    return cli_commands()[names[0]]


def stage_files(stage: str) -> set[str]:
    """What running the stage imports: the `mmdisco` command itself, then the subcommand's module."""
    return closure(CLI) | closure(entry_module(stage))


def code_deps(stage: str) -> list[str]:
    """The stage's deps under mmdisco/ or stages/ (its data and model deps left out)."""
    deps = [dep.rstrip("/") for dep in STAGES[stage].get("deps", [])]
    return [dep for dep in deps if dep.split("/")[0] in PACKAGES]


def covers(dep: str, file: str) -> bool:
    return file == dep or file.startswith(dep + "/")


def python_files(dep: str) -> set[str]:
    """The .py files a code dep stands for: itself, or those of its directory."""
    path = ROOT / dep
    if path.is_file():
        return {dep}
    return {rel(file) for file in path.rglob("*.py") if "__pycache__" not in file.parts}


@pytest.mark.parametrize("stage", STAGES)
def test_deps_cover_every_imported_file(stage):
    deps = code_deps(stage)
    missing = sorted(f for f in stage_files(stage) if not any(covers(d, f) for d in deps))
    assert not missing, (f"stage {stage!r} imports files that are not among its deps in dvc.yaml "
                         f"(a change there would not rerun it): {', '.join(missing)}")


@pytest.mark.parametrize("stage", STAGES)
def test_code_deps_are_only_imported_files(stage):
    files = stage_files(stage)
    problems = []
    for dep in code_deps(stage):
        outside = sorted(python_files(dep) - files)
        if outside == sorted(python_files(dep)):
            problems.append(f"{dep} is superfluous (the stage imports no file of it)")
        elif outside:
            problems.append(f"{dep} also covers files the stage does not import, list the "
                            f"imported ones instead: {', '.join(outside)}")
    assert not problems, f"stage {stage!r} has code deps in dvc.yaml beyond what it imports: " \
                         + "; ".join(problems)
