"""A sampled set of pairs: guided, or the independent baseline from the same noise.

Seeds are per item (``mmdisco.seeds.item_seeds``), so pair ``i`` of two sets sampled with one
seed starts from the same noise: each guided pair has a baseline twin that differs only by the
guidance. Under several processes each samples its share of the batches and every process
gets the whole set in item order. With prompts, each pair's bases get its prompt's embeddings
and a conditional discriminator guides through ``CFGGuide`` with the bases' CFG weights; a
released text-conditional discriminator gets the same prompts bound (``ReleasedDiscriminator.bind``:
the bases' embeddings, the empty prompt's for its CFG of residuals, the same weights).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from mmdisco import distributed as dist
from mmdisco.bases.protocol import BaseModel
from mmdisco.encoders import encoder_from_state
from mmdisco.eval.sheets import contact_sheet, save_png, write_pairs
from mmdisco.guidance.conditional import CFGGuide, ConditionalDiscriminator, joint_condition
from mmdisco.guidance.release import ReleasedDiscriminator
from mmdisco.guidance.sampler import Guide, SamplerSettings, StepTimer, sample_joint
from mmdisco.io import save_tensors, write_json
from mmdisco.seeds import item_seeds


@dataclass(frozen=True)
class SetPrompts:
    """Every pair's prompt: the prompt texts, which one each pair has (``prompt_of``), the bases'
    embeddings per pair, the discriminator's joint condition per pair, the CFG weights and the
    bases' embeddings of the empty prompt (one row each; a released guide's CFG needs them)."""
    texts: list[str]
    prompt_of: list[int]
    audio: torch.Tensor
    video: torch.Tensor
    joint: torch.Tensor
    weights: tuple[float, float]
    null_audio: torch.Tensor | None = None
    null_video: torch.Tensor | None = None

    @classmethod
    def from_embeddings(cls, texts: list[str], prompt_of: list[int], audio: torch.Tensor,
                        video: torch.Tensor, weights: tuple[float, float],
                        nulls: tuple[torch.Tensor, torch.Tensor] | None = None) -> SetPrompts:
        """From each prompt's embeddings (``audio``, ``video``: one row per text)."""
        rows = torch.tensor(prompt_of, dtype=torch.long)
        cond_a, cond_v = audio[rows], video[rows]
        return cls(texts, prompt_of, cond_a, cond_v, joint_condition(cond_a, cond_v), weights,
                   *(nulls or (None, None)))

    @classmethod
    def from_table(cls, table, texts: list[str], prompt_of: list[int],
                   weights: tuple[float, float]) -> SetPrompts:
        rows = table.index(texts)
        return cls.from_embeddings(texts, prompt_of, table.embeddings("audio", rows),
                                   table.embeddings("video", rows), weights,
                                   (table.null("audio"), table.null("video")))

    def names(self) -> list[str]:
        """Media names: the prompt's index, then the pair's."""
        return [f"p{j:03d}_{i:03d}" for i, j in enumerate(self.prompt_of)]


def sample_prompts(table, given: Sequence[str], n: int, heldout: int,
                   split_seed: int) -> tuple[list[str], list[int]]:
    """``(prompts, prompt_of)``: the prompt list and, for each of ``n`` pairs, its index in it.

    ``given`` when not empty; else the captions of the clips that the discriminator's training
    holds out (its split: ``randperm`` from ``split_seed``, the first ``heldout``), empty
    captions left out. The list is cycled over the pairs."""
    if given:
        prompts = list(given)
    else:
        split = torch.randperm(len(table.clip_prompt),
                               generator=torch.Generator().manual_seed(split_seed))[:heldout]
        prompts = [c for c in (table.prompts[i] for i in table.clip_prompt[split].tolist()) if c]
        if not prompts:
            raise ValueError("the held-out clips have no captions; give sample.prompts")
    return prompts, [i % len(prompts) for i in range(n)]


def _bound_module(module, prompts: SetPrompts, lo: int, hi: int, device):
    """One guide's module for the pairs ``lo:hi``: a conditional or released text-conditional
    discriminator with those pairs' prompts bound, any other module as it is."""
    if isinstance(module, ConditionalDiscriminator):
        return CFGGuide(module, prompts.joint[lo:hi].to(device), prompts.weights)
    if isinstance(module, ReleasedDiscriminator) and module.arch.text_dims is not None:
        nulls = {} if prompts.null_audio is None else {
            "uncond_audio": prompts.null_audio.to(device),
            "uncond_video": prompts.null_video.to(device), "weights": prompts.weights}
        return module.bind(prompts.audio[lo:hi].to(device), prompts.video[lo:hi].to(device),
                           **nulls)
    return module


def _bound(guides: Sequence[Guide], prompts: SetPrompts, lo: int, hi: int, device) -> list[Guide]:
    """The guides for one batch, each text-conditional one with the batch's prompts."""
    return [dataclasses.replace(g, module=_bound_module(g.module, prompts, lo, hi, device))
            if g.active else g for g in guides]


def sharded_joint(base_a: BaseModel, base_v: BaseModel, settings: SamplerSettings, *,
                  guides: Sequence[Guide], num_samples: int, batch_size: int, seed: int,
                  prompts: SetPrompts | None = None, device: str | torch.device = "cpu",
                  timer: StepTimer | None = None,
                  progress: Callable[[int, int], None] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``sample_joint`` with per-item seeds over this process's share of the batches; every
    process gets all samples in item order. ``timer``, when given, gets the batches' seconds
    and passes summed over processes, and the wall-clock time of the whole call;
    ``progress(lo, hi)`` is called after each batch this process sampled."""
    seeds, start = item_seeds(seed, num_samples), time.perf_counter()
    device = dist.device(device)

    def batch(lo: int, hi: int):
        batch_guides, cond = guides, {}
        if prompts is not None:
            cond = {"cond_a": prompts.audio[lo:hi], "cond_v": prompts.video[lo:hi]}
            batch_guides = _bound(guides, prompts, lo, hi, device)
        batch_timer = None if timer is None else StepTimer()
        a, v = sample_joint(base_a, base_v, settings, guides=batch_guides, num_samples=hi - lo,
                            item_seeds=seeds[lo:hi], device=device, timer=batch_timer, **cond)
        if progress is not None:
            progress(lo, hi)
        return (a.cpu(), v.cpu()), batch_timer

    (a, v), timers = dist.map_batches(batch, num_samples, batch_size)
    if timer is not None:
        for t in timers:
            timer.add(t)
        timer.total_s += time.perf_counter() - start
    return a, v


def write_set(folder: Path, a: torch.Tensor, v: torch.Tensor, *, encoders: dict, media: int,
              name: str, prompts: SetPrompts | None = None, cfg: dict | None = None) -> None:
    """Latents, the first ``media`` pairs as mp4 with sound, a contact sheet and, with prompts,
    ``prompts.json`` (the texts, each pair's prompt and the CFG settings ``cfg``)."""
    folder.mkdir()
    save_tensors(folder / "audio.safetensors", {"latents": a})
    save_tensors(folder / "video.safetensors", {"latents": v})
    k = min(media, len(a))
    if k:
        mel, pixels = encoder_from_state(encoders["audio"]), encoder_from_state(encoders["video"])
        videos, mel_db = pixels.decode(v[:k]).numpy(), mel.to_db(a[:k]).numpy()
        with torch.no_grad():
            sound = mel.decode(a[:k]).numpy()
        write_pairs(folder / "media", videos, sound, fps=encoders["fps"],
                    sample_rate=encoders["sample_rate"], prefix=name,
                    names=None if prompts is None else prompts.names()[:k])
        save_png(folder / "sheet.png", contact_sheet(videos, mel_db))
    if prompts is not None:
        write_json(folder / "prompts.json", {"prompts": prompts.texts,
                                             "prompt_of": prompts.prompt_of, "cfg": cfg})
