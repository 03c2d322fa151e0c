"""Saving and loading a guide: a trained one (discriminator or critic: safetensors weights + its
config), or one of the authors' released discriminators, recorded by copy.

Why a released module is copied, not referenced: the guide folder is a DVC output, so a copy
makes its hash the hash of the weights that guide (a changed or moved checkpoint cannot guide
silently, `dvc push` carries it to other hosts, and the folder is complete by itself). The cost
is one more copy of the file (130 MB for ``audioldm_animediff_vggsound``) in the DVC cache,
small beside the bases' gigabytes. The copy keeps the release's bytes, so its recorded SHA-256
is the one of the downloaded file.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from mmdisco.checksums import sha256_file
from mmdisco.guidance.conditional import ConditionalDiscriminator
from mmdisco.guidance.critic import Critic
from mmdisco.guidance.discriminator import Discriminator
from mmdisco.guidance.release import CHECKPOINTS_URL, ReleasedDiscriminator, load_released
from mmdisco.io import copy_hashed, load_tensors, read_json, save_tensors, write_json

# one entry per class: a subclass is its own kind (its config has keys its parent lacks)
GUIDE_CLASSES = {"discriminator": Discriminator,
                 "conditional_discriminator": ConditionalDiscriminator, "critic": Critic}
RELEASED = "released"              # the kind of a recorded released discriminator
RELEASED_FILE = "released.pt"      # its copy, the release's bytes
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


def released_checkpoint(checkpoint: str | None, setting: str | None) -> Path:
    """The file ``guidance.released.checkpoint`` names; a missing one fails naming the key."""
    path = Path(checkpoint or "")
    if not checkpoint or not path.is_file():
        raise FileNotFoundError(f"guidance.released.checkpoint: {checkpoint!r} is not a file; "
                                f"download {setting}.pt from {CHECKPOINTS_URL} and set its path")
    return path


def record_released(checkpoint: str | Path, setting: str,
                    folder: Path) -> tuple[ReleasedDiscriminator, dict]:
    """Copy a released checkpoint into ``folder`` (which must exist), load the copy strictly as
    ``setting`` and write ``discriminator.json``: kind, setting, file, SHA-256, parameter count
    and source path. Returns the loaded module and that record."""
    sha = copy_hashed(checkpoint, folder / RELEASED_FILE)
    module = load_released(folder / RELEASED_FILE, setting)
    record = {"kind": RELEASED, "setting": setting, "file": RELEASED_FILE, "sha256": sha,
              "num_parameters": sum(p.numel() for p in module.parameters()),
              "source": str(checkpoint)}
    write_json(folder / META_FILE, record)
    return module, record


def guide_kind(folder: str | Path) -> str:
    """The kind a guide folder holds (``discriminator.json``)."""
    return read_json(Path(folder) / META_FILE).get("kind")


def load_guide(folder: str | Path) -> nn.Module:
    """The saved guide (of the kind it was saved as) in eval mode, its parameters frozen; a
    recorded released discriminator through ``load_released``, its copy checked first."""
    folder = Path(folder)
    meta = read_json(folder / META_FILE)
    if meta.get("kind") == RELEASED:
        path = folder / meta["file"]
        if sha256_file(path) != meta["sha256"]:
            raise ValueError(f"{path} is not the checkpoint recorded in {folder / META_FILE} "
                             f"(SHA-256 differs): record it again (train_discriminator)")
        return load_released(path, meta["setting"])
    if meta.get("kind") not in GUIDE_CLASSES:
        raise ValueError(f"{folder / META_FILE}: unknown kind {meta.get('kind')!r}")
    guide = GUIDE_CLASSES[meta["kind"]](**meta["config"])
    guide.load_state_dict(load_tensors(folder / "model.safetensors"))
    return guide.eval().requires_grad_(False)
