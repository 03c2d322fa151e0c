"""Apply a preset: a partial params file that states only what differs from the defaults.

``mmdisco preset FILE`` deep-merges the preset onto the params file and writes it back, so a
preset never restates (and cannot drift from) the defaults it leaves alone. The params file
keeps its layout and comments: it is edited as a YAML document, value by value. Nothing is
written unless the result loads (a preset key the schema lacks fails naming the key and the
preset), and the file is replaced atomically.

The merge is onto the params file as it is, the way per-key overrides work: values set there
earlier are kept, and the command names those that differ from the defaults. ``--reset`` first
returns every key to its default, which is what switching from one preset to another needs.
"""
from __future__ import annotations

import collections
import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import click
import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from mmdisco.config import (ConfigError, Params, build, check_keys, flatten, load_params, merge,
                            read_yaml, to_dict)
from mmdisco.io import write_text

PRESET_DIR = "params"     # beside the params file: where a preset named without a path lives
_ABSENT = object()


@dataclasses.dataclass(frozen=True)
class Applied:
    """What applying a preset did (or, with ``write=False``, would do)."""

    params: Params
    text: str                                  # the params file's new content
    changes: list[tuple[str, Any, Any]]        # (dotted key, old value or _ABSENT, new value)
    kept: list[str]                            # non-default keys the preset left as they were
    written: bool


def resolve_preset(preset: str | Path, params_path: str | Path = "params.yaml") -> Path:
    """A preset file, given as a path or as a name in ``params/`` beside the params file."""
    path = Path(preset)
    if path.is_file():
        return path
    folder = Path(params_path).parent / PRESET_DIR
    named = folder / f"{preset}.yaml"
    if named.is_file():
        return named
    names = sorted(p.stem for p in folder.glob("*.yaml"))
    raise ConfigError(f"no preset '{preset}': not a file, nor a name in {folder}/"
                      + (f" (one of: {', '.join(names)})" if names else ""))


def _plain(value: Any) -> Any:
    """Tuples of a dataclass dump as YAML lists."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _same(a: Any, b: Any) -> bool:
    """Equal as params values: 120 and 120.0 are, True and 1 are not."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def _reads_back(text: str) -> bool:
    """Whether ``text`` written plain reads back as that string in a YAML 1.1 reader (the
    loader's), which takes ``on``, ``no`` or ``1e3`` for other types, unlike the writer."""
    try:
        return yaml.safe_load(text) == text
    except yaml.YAMLError:
        return False


def _represent_str(representer: Any, text: str) -> Any:
    style = None if _reads_back(text) else "'"
    return representer.represent_scalar("tag:yaml.org,2002:str", text, style=style)


def _round_trip() -> YAML:
    """A YAML reader/writer that leaves an unedited params file byte for byte as it was."""
    y = YAML()
    y.width = 4096
    y.preserve_quotes = True
    y.indent(mapping=2, sequence=4, offset=2)
    y.representer.add_representer(
        type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    y.representer.add_representer(str, _represent_str)
    return y


def _node_value(value: Any) -> Any:
    """Lists are written in flow style, ``[a, b]``, as the params file writes them."""
    if isinstance(value, list):
        seq = CommentedSeq(_node_value(v) for v in value)
        seq.fa.set_flow_style()
        return seq
    return value


def _eol_comment(node: CommentedMap, key: Any) -> Any:
    """The comment token at the end of ``key``'s line, if it has one."""
    item = node.ca.items.get(key)
    token = item[2] if item and len(item) > 2 else None
    return token if token is not None and token.value.startswith("#") else None


def _comment_column(node: Any, counts: collections.Counter | None = None) -> int | None:
    """The column most end-of-line comments start at: the file's alignment, which a comment
    after a changed value returns to (its own column moved with an earlier, longer value)."""
    counts = collections.Counter() if counts is None else counts
    if isinstance(node, CommentedMap):
        for key, value in node.items():
            if (token := _eol_comment(node, key)) is not None:
                counts[token.column] += 1
            _comment_column(value, counts)
    return counts.most_common(1)[0][0] if counts else None


def _edit(node: CommentedMap, updates: dict, prefix: str, changes: list,
          column: int | None) -> None:
    """Set every leaf of ``updates`` in ``node``, keeping each key's place and comment."""
    for key, value in updates.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            if not isinstance(node.get(key), dict):
                node[key] = CommentedMap()
            _edit(node[key], value, dotted, changes, column)
            continue
        old = node.get(key, _ABSENT)
        if key in node and _same(old, value):
            continue
        node[key] = _node_value(value)
        if column is not None and (token := _eol_comment(node, key)) is not None:
            token.column = column        # one space after a value that reaches past it
        changes.append((dotted, old, value))


def _check_written(text: str, expected: Params, preset_path: Path) -> None:
    """The text to write must load to the params that were validated: the writer and the
    loader's reader differ in YAML version, so a value's type could change in between."""
    try:
        written = build(Params, yaml.safe_load(text) or {})
    except ConfigError:
        written = None
    if written != expected:
        got = flatten(to_dict(written)) if written is not None else {}
        want = flatten(to_dict(expected))
        keys = [k for k in want if got.get(k) != want[k]]
        raise ConfigError(f"{preset_path}: {', '.join(keys) or 'the params'} would not read "
                          f"back as the preset gives them; set them by hand")


def apply_preset(preset_path: str | Path, params_path: str | Path = "params.yaml", *,
                 reset: bool = False, write: bool = True) -> Applied:
    """Deep-merge the preset onto the params file (onto the defaults with ``reset``), validate,
    and replace the file atomically when ``write`` and anything changed."""
    preset_path, params_path = Path(preset_path), Path(params_path)
    preset = read_yaml(preset_path)
    try:
        check_keys(Params, preset)
    except ConfigError as e:
        raise ConfigError(f"{preset_path}: {e}") from None
    load_params(params_path)               # a params file that does not load is mended first
    defaults = _plain(to_dict(Params()))
    updates = merge(defaults, preset) if reset else preset
    try:
        expected = build(Params, merge(read_yaml(params_path), updates))
    except ConfigError as e:
        raise ConfigError(f"{preset_path} applied to {params_path}: {e}") from None
    y = _round_trip()
    doc = y.load(params_path.read_text()) or CommentedMap()
    changes: list = []
    _edit(doc, updates, "", changes, _comment_column(doc))
    out = io.StringIO()
    y.dump(doc, out)
    text = out.getvalue()
    _check_written(text, expected, preset_path)
    set_by_preset, default_of = flatten(preset), flatten(defaults)
    kept = [k for k, v in flatten(_plain(to_dict(expected))).items()
            if k not in set_by_preset and not _same(v, default_of[k])]
    written = write and bool(changes)
    if written:
        write_text(params_path, text)
    return Applied(expected, text, changes, kept, written)


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "(absent)"
    return json.dumps(value) if value is None or isinstance(value, (bool, list)) else str(value)


@click.command("preset")
@click.argument("preset")
@click.option("--params", "params_path", type=click.Path(dir_okay=False, path_type=Path),
              default="params.yaml", show_default=True, help="the params file to update")
@click.option("--reset", is_flag=True,
              help="return every key to its default first (to switch from another preset)")
@click.option("--dry-run", is_flag=True, help="show what would change; write nothing")
def main(preset: str, params_path: Path, reset: bool, dry_run: bool) -> None:
    """Apply PRESET to the params file: a preset file, or its name in params/ (e.g.
    pretrained-vggsound). Keys the preset does not set keep their current values, unless
    --reset."""
    try:
        path = resolve_preset(preset, params_path)
        applied = apply_preset(path, params_path, reset=reset, write=not dry_run)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    if not applied.changes:
        click.echo(f"{params_path} already holds {path}; nothing to write")
        return
    verb = "written" if applied.written else "would change (dry run, nothing written)"
    n = len(applied.changes)
    click.echo(f"{params_path}: {n} value{'s' if n != 1 else ''} from {path} {verb}")
    for key, old, new in applied.changes:
        click.echo(f"  {key}: {_show(old)} -> {_show(new)}")
    if applied.kept:
        click.echo(f"kept from {params_path}, differing from the defaults (--reset drops them): "
                   f"{', '.join(applied.kept)}")
