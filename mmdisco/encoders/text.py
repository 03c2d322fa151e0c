"""Frozen text encoders: captions become prompt embeddings once, in the `encode` stage.

Each base is conditioned through its own encoder, so that the embeddings a stage hands to a
base are the ones that base was trained with:

- tiny bases: ``HashedText``, a frozen bag-of-words encoder of this project. Every lower-cased
  word (``[a-z0-9']+``) gets a fixed Gaussian vector seeded by the SHA-256 of the word; a
  caption is the sum of its words' vectors over sqrt(word count), so every entry has unit
  variance whatever the caption's length, and the empty caption is the zero vector. It needs no
  training and no download, gives every distinct word its own direction (nearly orthogonal
  for ``dim`` ≫ 1) and is the same on every machine; the tiny base learns what the words mean.
- AudioLDM: the CLAP text model's projection, L2-normalised, ``[P, E]``;
- AnimateDiff: CLIP's last hidden state, ``[P, L, E]``
  (both through ``mmdisco.bases.pretrained``: the same code that the bases use at sampling).

``text_encoder(base_cfg, text_cfg)`` picks the one for a ``base.<m>`` section.
"""
from __future__ import annotations

import hashlib
import re

import torch

WORD = re.compile(r"[a-z0-9']+")


def words(caption: str) -> list[str]:
    """The lower-cased words of a caption, in order."""
    return WORD.findall(caption.lower())


class HashedText:
    """Frozen hashed bag-of-words caption embeddings ``[P, dim]`` (see the module docstring)."""

    kind = "hashed"

    def __init__(self, dim: int):
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = int(dim)
        self._cache: dict[str, torch.Tensor] = {}

    def _word(self, word: str) -> torch.Tensor:
        if word not in self._cache:
            seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
            gen = torch.Generator().manual_seed(seed)
            self._cache[word] = torch.randn(self.dim, generator=gen, dtype=torch.float64)
        return self._cache[word]

    def encode(self, prompts: list[str]) -> torch.Tensor:
        rows = []
        for p in prompts:
            ws = words(p)
            v = torch.zeros(self.dim, dtype=torch.float64)
            for w in ws:
                v += self._word(w)
            rows.append(v / max(len(ws), 1) ** 0.5)
        return torch.stack(rows).float() if rows else torch.zeros(0, self.dim)

    def null(self) -> torch.Tensor:
        """The unconditional embedding: the empty prompt's (zero)."""
        return self.encode([""])

    def describe(self) -> dict:
        return {"kind": self.kind, "dim": self.dim}


class PretrainedText:
    """A pretrained base's own text encoder and tokenizer, loaded without its UNet."""

    def __init__(self, kind: str, model: str, *, device: str = "auto", dtype: str = "auto"):
        from mmdisco.bases.pretrained import load_text_encoder  # pulls in diffusers: on use only

        self.kind, self.model = kind, model
        self._embed = load_text_encoder(kind, model, device=device, dtype=dtype)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        return self._embed(list(prompts)).float().cpu()

    def null(self) -> torch.Tensor:
        """The base's own unconditional embedding (the empty prompt's; Auffusion's is zeros)."""
        return self._embed.null().float().cpu()

    def describe(self) -> dict:
        return {"kind": self.kind, "model": self.model}


def text_encoder(base_cfg, text_cfg):
    """The frozen text encoder of the base described by ``base_cfg`` (a ``base.<m>`` section)."""
    if base_cfg.kind == "tiny":
        return HashedText(text_cfg.dim)
    p = base_cfg.pretrained
    return PretrainedText(base_cfg.kind, p.model, device=p.device, dtype=p.dtype)


# --------------------------------------------------------------------------- prompts
def encode_prompts(prompts: list[str], encoders: dict, batch_size: int = 64) -> dict:
    """``{modality: {"prompts": [P, ...], "null": [1, ...]}}``: each prompt embedded once by
    each modality's encoder, and the empty prompt (the unconditional branch of CFG)."""
    out = {}
    for modality, enc in encoders.items():
        rows = [enc.encode(prompts[i:i + batch_size]) for i in range(0, len(prompts), batch_size)]
        out[modality] = {"prompts": torch.cat(rows).contiguous(),
                         "null": enc.null().contiguous()}
    return out
