"""Single-modal base diffusion models behind one protocol, and the factory that loads them.

A saved base model is a folder whose ``base.json`` names its ``kind``; ``load_base`` looks the
kind up in ``LOADERS``. A new variant is one class with a ``load(path, meta)`` classmethod and
one entry there.
"""
from __future__ import annotations

from pathlib import Path

from mmdisco.bases.protocol import BaseModel, check_pair, read_meta
from mmdisco.bases.tiny import TinyBase, TinyBaseConfig


def _pretrained(kind: str):
    """Loader of a pretrained kind, imported on first use (it pulls in transformers)."""
    def load(path, meta):
        from mmdisco.bases.pretrained import KINDS
        return KINDS[kind].load(path, meta)
    return load


LOADERS = {"tiny": TinyBase.load, "audioldm": _pretrained("audioldm"),
           "animatediff": _pretrained("animatediff")}


def load_base(path: str | Path) -> BaseModel:
    """Load a saved base model folder (frozen, eval mode) by the ``kind`` in its ``base.json``."""
    meta = read_meta(path)
    kind = meta.get("kind")
    if kind not in LOADERS:
        raise ValueError(f"{Path(path) / 'base.json'}: unknown base kind {kind!r}; known kinds: "
                         f"{', '.join(LOADERS)}")
    return LOADERS[kind](path, meta)


__all__ = ["BaseModel", "TinyBase", "TinyBaseConfig", "check_pair", "load_base"]
