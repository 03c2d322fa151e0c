"""The bank of fake pairs the discriminator learns to reject: each base sampled alone.

A fake pair is a draw from the product of the two bases' marginals: unconditional, the videos
are paired with the audios by a permutation drawn from the seed; with prompts, pair ``i`` is both
bases prompted independently with one real caption, so the caption pairs them.

Seeds are per item (``mmdisco.seeds.item_seeds``): fake ``i`` comes from its own generators,
whatever batch or process computed it. Under several processes each samples its share of the
batches (``mmdisco.distributed``) and every process gets the whole bank in item order: the
same bits as one process on the same hardware. The permutation depends on the seed alone.
"""
from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from mmdisco import distributed as dist
from mmdisco.bases.protocol import BaseModel
from mmdisco.guidance.sampler import SamplerSettings, sample_single
from mmdisco.io import save_tensors, write_json
from mmdisco.seeds import item_seeds


def sample_bank(base: BaseModel, settings: SamplerSettings, *, n: int, batch_size: int, seed: int,
                label: str, cond: torch.Tensor | None = None, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``n`` independent samples, item ``i`` from ``item_seeds(seed, n)[i]`` (and prompted
    with ``cond[i]`` when given); this process samples its share of the batches, and every
    process gets all ``n`` in item order."""
    seeds, device = item_seeds(seed, n), dist.device(device)
    bar = tqdm(total=len(dist.batch_shard(n, batch_size)), desc=f"fakes {label}", unit="batch",
               leave=False, disable=not dist.is_main())

    def batch(lo: int, hi: int):
        x = sample_single(base, settings, num_samples=hi - lo, item_seeds=seeds[lo:hi],
                          cond=None if cond is None else cond[lo:hi], device=device, dtype=dtype)
        bar.update()
        return (x.cpu(),), None

    (x,), _ = dist.map_batches(batch, n, batch_size)
    bar.close()
    return x


def fake_bank(base_a: BaseModel, base_v: BaseModel, settings: SamplerSettings, *, num_pairs: int,
              batch_size: int, seed: int, table=None, device: str | torch.device = "cpu",
              dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(audio, video, prompt)``: independent samples of each base. Unconditional
    (``table=None``): video paired by a permutation drawn from ``seed`` (the same with any number
    of processes), ``prompt`` None. With a prompt table: pair ``i`` prompted with the caption of a
    clip drawn from ``seed``, ``prompt[i]`` its index in ``table.prompts``."""
    kw = dict(n=num_pairs, batch_size=batch_size, seed=seed, device=device, dtype=dtype)
    if table is None:
        audio = sample_bank(base_a, settings, label="audio", **kw)
        video = sample_bank(base_v, settings, label="video", **kw)
        pairing = torch.randperm(num_pairs, generator=torch.Generator().manual_seed(seed))
        return audio, video[pairing], None
    clips = torch.randint(len(table.clip_prompt), (num_pairs,),
                          generator=torch.Generator().manual_seed(seed))
    prompt = table.clip_prompt[clips]
    audio = sample_bank(base_a, settings, label="audio", cond=table.embeddings("audio", prompt), **kw)
    video = sample_bank(base_v, settings, label="video", cond=table.embeddings("video", prompt), **kw)
    return audio, video, prompt


def write_bank(folder: Path, audio: torch.Tensor, video: torch.Tensor, prompt: torch.Tensor | None,
               meta: dict) -> None:
    """The bank's latents, each pair's prompt index (when prompted) and ``meta`` as ``bank.json``."""
    folder.mkdir()
    save_tensors(folder / "audio.safetensors", {"latents": audio})
    save_tensors(folder / "video.safetensors", {"latents": video})
    if prompt is not None:
        save_tensors(folder / "prompt.safetensors", {"prompt": prompt})
    write_json(folder / "bank.json", meta)
