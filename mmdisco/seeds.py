"""Seeds derived from the one master seed of params.yaml: every consumer draws its own stream."""
from __future__ import annotations

import hashlib


def stage_seed(seed: int, name: str) -> int:
    """A seed for ``name`` (a stage, a base) derived from the master ``seed``: SHA-256 of
    ``"<seed>:<name>"``, so each name draws a stream independent of the others."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:4], "little")
