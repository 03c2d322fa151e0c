"""Saving and loading a trained guide (discriminator or critic): safetensors weights + its config."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from mmdisco.guidance.conditional import ConditionalDiscriminator
from mmdisco.guidance.critic import Critic
from mmdisco.guidance.discriminator import Discriminator
from mmdisco.io import load_tensors, read_json, save_tensors, write_json

# one entry per class: a subclass is its own kind (its config has keys its parent lacks)
GUIDE_CLASSES = {"discriminator": Discriminator,
                 "conditional_discriminator": ConditionalDiscriminator, "critic": Critic}
META_FILE = "discriminator.json"


def save_guide(guide: nn.Module, folder: Path) -> None:
    """Write ``model.safetensors`` and ``discriminator.json`` (its kind and config; the file
    keeps the name it had before critics were guides too) into ``folder``, which must exist."""
    kind = next((k for k, cls in GUIDE_CLASSES.items() if type(guide) is cls), None)
    if kind is None:
        raise TypeError(f"cannot save a {type(guide).__name__}: a guide is one of "
                        f"{', '.join(c.__name__ for c in GUIDE_CLASSES.values())}")
    save_tensors(folder / "model.safetensors", guide.state_dict())
    write_json(folder / META_FILE, {"kind": kind, "config": guide.config})


def load_guide(folder: str | Path) -> nn.Module:
    """The saved guide (of the kind it was saved as) in eval mode, its parameters frozen."""
    folder = Path(folder)
    meta = read_json(folder / META_FILE)
    if meta.get("kind") not in GUIDE_CLASSES:
        raise ValueError(f"{folder / META_FILE}: unknown kind {meta.get('kind')!r}")
    guide = GUIDE_CLASSES[meta["kind"]](**meta["config"])
    guide.load_state_dict(load_tensors(folder / "model.safetensors"))
    return guide.eval().requires_grad_(False)
