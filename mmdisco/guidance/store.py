"""Saving and loading a trained guide (discriminator or critic): safetensors weights + its config."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from mmdisco.guidance.conditional import ConditionalDiscriminator
from mmdisco.guidance.critic import Critic
from mmdisco.guidance.discriminator import Discriminator
from mmdisco.io import load_tensors, read_json, save_tensors, write_json

# one entry per class: a subclass is its own kind (its config has keys its parent lacks)
KINDS = {"discriminator": Discriminator, "conditional_discriminator": ConditionalDiscriminator,
         "critic": Critic}


def save_discriminator(D: nn.Module, folder: Path) -> None:
    """Write ``model.safetensors`` and ``discriminator.json`` into ``folder`` (which must exist)."""
    kind = next((k for k, cls in KINDS.items() if type(D) is cls), None)
    if kind is None:
        raise TypeError(f"cannot save a {type(D).__name__}: a guide is one of "
                        f"{', '.join(c.__name__ for c in KINDS.values())}")
    save_tensors(folder / "model.safetensors", D.state_dict())
    write_json(folder / "discriminator.json", {"kind": kind, "config": D.config})


def load_discriminator(folder: str | Path) -> nn.Module:
    """The saved discriminator in eval mode with gradients off for its parameters."""
    folder = Path(folder)
    meta = read_json(folder / "discriminator.json")
    if meta.get("kind") not in KINDS:
        raise ValueError(f"{folder / 'discriminator.json'}: unknown kind {meta.get('kind')!r}")
    D = KINDS[meta["kind"]](**meta["config"])
    D.load_state_dict(load_tensors(folder / "model.safetensors"))
    return D.eval().requires_grad_(False)
