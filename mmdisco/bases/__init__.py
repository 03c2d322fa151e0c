"""Single-modal base diffusion models behind one protocol, and the factory that loads them.

A saved base model is a folder whose ``base.json`` names its ``kind``; ``load_base`` looks the
kind up in ``LOADERS``. A new variant is one loader ``load(path, meta, device)`` and one entry
there. A saved base records no device: the caller names it (``load_base(device=)``); the
pretrained kinds load onto it, a tiny base loads on the CPU for its caller to move.
"""
from __future__ import annotations

from pathlib import Path

import torch

from mmdisco.bases.protocol import BaseModel, check_pair, read_meta
from mmdisco.bases.tiny import TinyBase, TinyBaseConfig


def _pretrained(kind: str):
    """Loader of a pretrained kind, imported on first use (it pulls in transformers)."""
    def load(path, meta, device="auto"):
        from mmdisco.bases.pretrained import pretrained_class
        return pretrained_class(kind).load(path, meta, device=device)
    return load


def _tiny(path, meta, device="auto"):
    """A tiny base, on the CPU whatever ``device`` says: its caller moves it."""
    return TinyBase.load(path, meta)


LOADERS = {"tiny": _tiny, "audioldm": _pretrained("audioldm"),
           "animatediff": _pretrained("animatediff"), "auffusion": _pretrained("auffusion")}


def load_base(path: str | Path, *, device: str | torch.device = "auto") -> BaseModel:
    """Load a saved base model folder (frozen, eval mode) by the ``kind`` in its ``base.json``;
    a pretrained kind onto ``device`` (``auto``: the first GPU, else the CPU)."""
    meta = read_meta(path)
    kind = meta.get("kind")
    if kind not in LOADERS:
        raise ValueError(f"{Path(path) / 'base.json'}: unknown base kind {kind!r}; known kinds: "
                         f"{', '.join(LOADERS)}")
    return LOADERS[kind](path, meta, device=device)


__all__ = ["BaseModel", "TinyBase", "TinyBaseConfig", "check_pair", "load_base"]
