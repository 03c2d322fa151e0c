"""Atomic file and folder writes, and safe tensor storage.

Every output is first written under a temporary name beside its destination, then renamed, so
an interrupted stage never leaves a half-written file that a later stage could take as valid.
Tensors are stored as safetensors (no pickle).
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save_file


_renameat2: Any = None                # libc renameat2, False where missing (see _exchange)


def _tmp_pattern(name: str) -> re.Pattern:
    """Temp siblings of ``name`` made by ``atomic_path``: ``.<name>.<pid>.<random>.tmp``."""
    return re.compile(rf"\.{re.escape(name)}\.(\d+)\.[A-Za-z0-9_]+\.tmp")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # alive, owned by someone else
        return True
    return True


def clean_stale(dest: str | Path) -> list[Path]:
    """Remove what an interrupted write of ``dest`` left beside it: temp folders of processes
    that are gone (killed before they could clean up) and ``.<name>.old`` of the older
    two-rename replacement. Temp folders of live processes are left alone. Returns the paths
    removed."""
    dest = Path(dest)
    if not dest.parent.is_dir():
        return []
    pattern, removed = _tmp_pattern(dest.name), []
    for entry in os.scandir(dest.parent):
        m = pattern.fullmatch(entry.name)
        stale = (m is not None and not _pid_alive(int(m.group(1)))) or \
            entry.name == f".{dest.name}.old"
        if stale:
            shutil.rmtree(entry.path, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                os.remove(entry.path)
            removed.append(Path(entry.path))
    return removed


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where the
    platform or the filesystem cannot."""
    global _renameat2
    if _renameat2 is None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                           ctypes.c_uint]
            _renameat2 = fn
        except (AttributeError, OSError, TypeError):   # not glibc (macOS, Windows)
            _renameat2 = False
    if not _renameat2:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if _renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextlib.contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it onto ``dest`` only on success.

    Works for files and folders (the caller creates whichever it needs at the yielded path).
    The temporary path lives in ``.<name>.<pid>.<random>.tmp/`` beside ``dest``; what a killed
    process left there is removed by the next write of ``dest`` (``clean_stale``). A folder
    replaces an existing one in one atomic exchange where the OS allows it (Linux), so
    ``dest`` is at every moment either the old complete output or the new one.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{os.getpid()}.", suffix=".tmp",
                                dir=dest.parent))
    target = tmp / dest.name
    try:
        yield target
        if not target.exists():
            raise FileNotFoundError(f"nothing was written to {target} for {dest}")
        if dest.is_dir() and not dest.is_symlink():
            if not _exchange(target, dest):   # two renames: dest briefly missing
                old = dest.with_name(f".{dest.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(dest, old)
                os.replace(target, dest)
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(target, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_tree(path: str | Path) -> None:
    """Delete a folder so that it is never seen half-deleted: it is first renamed into a temp
    folder (one atomic step), then removed; a kill during the removal leaves only a temp
    folder, which the next write beside it cleans up."""
    path = Path(path)
    if not path.exists():
        return
    clean_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp",
                                dir=path.parent))
    try:
        os.replace(path, tmp / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def child_path(folder: str | Path, name: Any, source: str | Path) -> Path:
    """``folder / name`` for a ``name`` read from a file (a manifest, an index), refused unless
    it is a relative path that stays inside ``folder`` (no ``..``, not absolute): a tampered
    or hand-edited ``source`` must not make a stage read or write elsewhere. Checked on the
    text of the name, so symbolic links inside ``folder`` keep working."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise ValueError(f"{source}: {name!r} is not a file name; the file is damaged: "
                         f"rerun the stage that writes it")
    rel = Path(name)
    if not rel.parts:
        raise ValueError(f"{source}: {name!r} is not a file name; the file is damaged: "
                         f"rerun the stage that writes it")
    if rel.is_absolute() or rel.anchor or ".." in rel.parts:
        raise ValueError(f"{source}: {name!r} leaves {folder} (an absolute path or '..'); "
                         f"entries must be paths inside that folder: rerun the stage that "
                         f"writes {Path(source).name} instead of editing it")
    return Path(folder) / rel


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run the stage that writes it first")
    return json.loads(path.read_text())


def copy_hashed(src: str | Path, dest: str | Path) -> str:
    """Copy ``src`` to ``dest`` (atomically) and return the hex SHA-256 of the bytes written,
    hashed in the same pass."""
    h = hashlib.sha256()
    with atomic_path(dest) as tmp, open(src, "rb") as fin, open(tmp, "wb") as fout:
        for block in iter(lambda: fin.read(1 << 20), b""):
            h.update(block)
            fout.write(block)
    return h.hexdigest()


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot serialise {type(o).__name__} to JSON")


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor],
                 metadata: dict[str, str] | None = None) -> None:
    """Atomically save a dict of tensors as safetensors."""
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run the stage that writes it first")
    return load_file(str(path))
