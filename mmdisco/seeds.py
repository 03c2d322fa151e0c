"""Seeds derived from the one master seed of params.yaml: every consumer draws its own stream.

``stage_seed`` gives each stage (or base) its seed; ``item_seeds`` gives each item of a run its
own, and ``modality_generators`` turns one seed into an audio and a video stream, so that an
item's noise depends on its seed alone, not on its batch or the process that draws it.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
import torch

MODALITY_INDEX = {"audio": 0, "video": 1}   # which of modality_generators(s) a modality uses


def stage_seed(seed: int, name: str) -> int:
    """A seed for ``name`` (a stage, a base) derived from the master ``seed``: SHA-256 of
    ``"<seed>:<name>"``, so each name draws a stream independent of the others."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def modality_generators(seed: int, device: str | torch.device = "cpu") -> tuple[torch.Generator, torch.Generator]:
    """``(gen_a, gen_v)``: two independent generators derived from one master seed."""
    states = [int(s.generate_state(1, np.uint64)[0]) for s in np.random.SeedSequence(seed).spawn(2)]
    gen_a, gen_v = (torch.Generator(device=device).manual_seed(s) for s in states)
    return gen_a, gen_v


def item_seeds(seed: int, n: int, start: int = 0) -> list[int]:
    """Seeds of items ``start .. start + n - 1`` of a run with master ``seed``: item ``i`` gets
    the ``i``-th child of ``SeedSequence(seed)``, whatever the batching or the process count."""
    return [int(np.random.SeedSequence(seed, spawn_key=(i,)).generate_state(1, np.uint64)[0])
            for i in range(start, start + n)]


def item_generators(seeds: Sequence[int], modality: str,
                    device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One generator per item for ``modality``: the audio or video one of ``modality_generators``."""
    if modality not in MODALITY_INDEX:
        raise ValueError(f"per-item seeds need an audio or video base, got modality {modality!r}")
    k = MODALITY_INDEX[modality]
    return [modality_generators(int(s), device)[k] for s in seeds]
