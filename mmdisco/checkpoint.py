"""Resumable training checkpoints, shared by every trainer.

A checkpoint is one folder written atomically: ``state.pt`` (state dicts, step and generator
state; loaded with ``weights_only=True``, so no pickled code runs) and ``meta.json`` with the
step and a fingerprint of everything that determines the run (data, config, seed). A
checkpoint whose fingerprint differs belongs to another run: it is ignored (and replaced at
the next save), never resumed.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from mmdisco.io import atomic_path

STATE_FILE, META_FILE = "state.pt", "meta.json"
log = logging.getLogger(__name__)


def fingerprint(*parts: Any) -> str:
    """A stable hash of tensors (by content), dicts and scalars."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            t = part.detach().cpu().contiguous()
            h.update(str((t.dtype, tuple(t.shape))).encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


def save(folder: Path, step: int, state: dict[str, Any], fp: str) -> None:
    """Write ``state`` (plus ``step``) and its fingerprint as one atomic folder."""
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        torch.save({"step": step, **state}, tmp / STATE_FILE)
        (tmp / META_FILE).write_text(json.dumps({"step": step, "fingerprint": fp}) + "\n")


def load(folder: Path, fp: str) -> dict[str, Any] | None:
    """The checkpoint's state when it belongs to this run (same fingerprint), else ``None``."""
    meta_path = Path(folder) / META_FILE
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("fingerprint") != fp:
        log.warning("ignoring the checkpoint in %s: it was made from other data, config or seed",
                    folder)
        return None
    return torch.load(Path(folder) / STATE_FILE, weights_only=True)
