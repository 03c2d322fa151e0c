"""Loading the frozen bases for the stages that sample from them or train against them."""
from __future__ import annotations

from pathlib import Path

import click

from mmdisco import distributed as dist
from mmdisco.bases import load_base
from mmdisco.config import Params


def load_bases(params: Params, audio_base: Path, video_base: Path, latents_dir: Path | None = None):
    """Both bases, frozen, on this rank's device. With ``condition: caption`` each gets its CFG
    weight (``cfg.<modality>``) and the empty prompt's embedding stored by `encode` (so no
    stage after `encode` runs a text encoder); returns ``(base_a, base_v, prompt table or None)``."""
    device = dist.device(params.device)
    bases = [dist.to_device(load_base(b), device) for b in (audio_base, video_base)]
    table = None
    if params.condition == "caption":
        from mmdisco.prompts import PromptTable

        table = PromptTable(latents_dir or Path("data/latents"))
        for base, modality in zip(bases, ("audio", "video")):
            if not hasattr(base, "set_uncond") or not getattr(base, "cond_dim", 1):
                raise click.ClickException(
                    f"condition is caption but {audio_base if modality == 'audio' else video_base} "
                    f"is an unconditional base; retrain it with condition: caption (dvc repro)")
            base.guidance_scale = getattr(params.cfg, modality)
            base.set_uncond(table.null(modality))
    return bases[0], bases[1], table
