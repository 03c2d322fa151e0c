"""The prompt table that `encode` stores beside the latents with ``condition: caption``.

``text.json`` lists every distinct prompt (the clips' captions and ``sample.prompts``) and the
prompt of each clip; ``text_<modality>.safetensors`` holds each base's embeddings of those
prompts (``prompts``, ``[P, ...]``) and of the empty prompt (``null``, one row).
"""
from __future__ import annotations

from pathlib import Path

import torch

from mmdisco.io import load_tensors, read_json

TEXT_INDEX = "text.json"


def text_file(modality: str) -> str:
    return f"text_{modality}.safetensors"


class PromptTable:
    """The prompt embeddings that `encode` stored beside the latents (``condition: caption``).

    ``prompts``: every distinct caption (and every ``sample.prompts`` entry), sorted;
    ``clip_prompt[i]``: the index of clip ``i``'s caption in ``prompts``.
    """

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        index = folder / TEXT_INDEX
        if not index.is_file():
            raise FileNotFoundError(f"{index} is missing: the latents were encoded with "
                                    f"condition: none; encode them again with condition: caption")
        meta = read_json(index)
        self.prompts: list[str] = list(meta["prompts"])
        self.clip_prompt = torch.tensor(meta["clip_prompt"], dtype=torch.long)
        self.encoders: dict = meta.get("encoders", {})
        self._position = {p: i for i, p in enumerate(self.prompts)}
        self._tables = {m: load_tensors(folder / text_file(m)) for m in ("audio", "video")}

    def captions(self) -> list[str]:
        """Clip ``i``'s caption."""
        return [self.prompts[i] for i in self.clip_prompt.tolist()]

    def index(self, prompts) -> torch.Tensor:
        """Positions of ``prompts`` in the table; a prompt that `encode` never saw is an error."""
        missing = [p for p in prompts if p not in self._position]
        if missing:
            raise KeyError(f"prompt(s) {missing[:3]} were not encoded: add them to sample.prompts "
                           f"(encoding the clips embeds those and every caption)")
        return torch.tensor([self._position[p] for p in prompts], dtype=torch.long)

    def embeddings(self, modality: str, rows: torch.Tensor) -> torch.Tensor:
        """Embeddings of prompts ``rows`` (positions in ``prompts``) for one modality's base."""
        return self._tables[modality]["prompts"][rows]

    def null(self, modality: str) -> torch.Tensor:
        """The empty prompt's embedding, one row."""
        return self._tables[modality]["null"]
