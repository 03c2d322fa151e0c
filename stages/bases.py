"""Loading the frozen bases for the stages that sample from them or train against them."""
from __future__ import annotations

from pathlib import Path

import click
import torch

from mmdisco import distributed as dist
from mmdisco.bases import BaseModel, load_base
from mmdisco.config import Params
from mmdisco.prompts import PromptTable


def load_trained_base(path: Path, device: str | torch.device = "auto") -> BaseModel:
    """``load_base``, with the DVC stages that write a missing base named in the error."""
    try:
        return load_base(path, device=device)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e} (`dvc repro train_base_audio train_base_video`)") from e


def load_bases(params: Params, audio_base: Path, video_base: Path, latents_dir: Path | None = None):
    """Both bases, frozen, on this rank's device. With ``condition: caption`` each gets its CFG
    weight (``cfg.<modality>``) and the empty prompt's embedding stored by `encode` (so no
    stage after `encode` runs a text encoder); returns ``(base_a, base_v, prompt table or None)``."""
    device = dist.device(params.device)
    bases = [dist.to_device(load_trained_base(b, device), device)
             for b in (audio_base, video_base)]
    table = None
    if params.condition == "caption":
        table = PromptTable(latents_dir or Path("data/latents"))
        for base, modality in zip(bases, ("audio", "video")):
            if not hasattr(base, "set_uncond") or not getattr(base, "cond_dim", 1):
                raise click.ClickException(
                    f"condition is caption but {audio_base if modality == 'audio' else video_base} "
                    f"is an unconditional base; retrain it with condition: caption (dvc repro)")
            base.guidance_scale = getattr(params.cfg, modality)
            base.set_uncond(table.null(modality))
    return bases[0], bases[1], table
