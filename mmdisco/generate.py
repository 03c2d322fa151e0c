"""`mmdisco generate`: joint audio-video pairs from your own prompts, with the pipeline's models.

Why a command beside the stages: the stages sample what the experiment measures (the held-out
captions, fixed seeds, metrics); a user wants pairs for prompts of their own. ``generate`` loads
what the pipeline made (the two bases, the encoders' normalisation, the discriminator, trained
or released, and the critic), embeds the prompts with each base's own text encoder (the tiny
bases: the hashed bag of words sized as `encode` recorded it in ``text.json``; AudioLDM and
AnimateDiff: their CLAP and CLIP), samples every prompt ``per_prompt`` times with the guidance
of params (``cfg.*`` for the bases' CFG, ``guidance.*`` for the guides: the sampler, CFG and
prompt binding of the guided `sample` stage), and writes mp4 files with sound and
``generate.json`` (params, guide, prompts, seeds, files).

Seeds: pair ``i`` starts from the noise of ``item_seeds(seed)[i]`` (``mmdisco.seeds``), whatever
the batching, so a run with ``--no-guidance`` and the same seed gives each file its unguided twin.
Every input is checked before any model is loaded; the output folder is written atomically.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click
import torch

from mmdisco import distributed as dist
from mmdisco.bases import load_base
from mmdisco.bases.protocol import read_meta
from mmdisco.checksums import sha256_file
from mmdisco.config import ConfigError, Params, load_params, to_dict
from mmdisco.encoders import encoder_from_state
from mmdisco.encoders.text import HashedText
from mmdisco.eval.sheets import contact_sheet, save_png, write_pairs
from mmdisco.guidance import store
from mmdisco.guidance.release import check_bases, check_fits, load_released
from mmdisco.guidance.sample_set import SetPrompts, sharded_joint
from mmdisco.guidance.sampler import Guide, SamplerSettings
from mmdisco.io import atomic_path, read_json, save_tensors, write_json
from mmdisco.prompts import TEXT_INDEX, PromptTable
from mmdisco.seeds import item_seeds

RECORD = "generate.json"
PREFIX = "generated"          # media: generated_p<prompt>_<sample of that prompt>.mp4


@dataclass(frozen=True)
class Sources:
    """Where the pipeline's outputs are (the defaults are the folders `dvc.yaml` writes)."""
    audio_base: Path = Path("models/base_audio")
    video_base: Path = Path("models/base_video")
    latents: Path = Path("data/latents")
    discriminator: Path = Path("models/discriminator")
    critic: Path = Path("models/critic")


# --------------------------------------------------------------------------- checks
def _check_out(out: Path) -> None:
    if out.exists() and not (out.is_dir() and (out / RECORD).is_file()):
        raise FileExistsError(f"--out {out} exists and is not a folder `mmdisco generate` wrote "
                              f"(no {RECORD}); give a new folder")


def _base_metas(src: Sources) -> tuple[dict, dict]:
    try:
        return read_meta(src.audio_base), read_meta(src.video_base)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e} (`dvc repro train_base_audio train_base_video`, or "
                                f"--audio-base / --video-base)") from None


def _check_latents(src: Sources) -> dict:
    """``text.json``'s record of the text encoders; ``encoders.json`` must be there too."""
    for name in ("encoders.json", TEXT_INDEX):
        if not (src.latents / name).is_file():
            hint = ("the latents were encoded with condition: none; set condition: caption and "
                    "`dvc repro encode`") if name == TEXT_INDEX else "`dvc repro encode`"
            raise FileNotFoundError(f"{src.latents / name} is missing: {hint} (or --latents)")
    return read_json(src.latents / TEXT_INDEX).get("encoders", {})


def _check_guides(params: Params, src: Sources, metas: tuple[dict, dict]) -> None:
    """The guide files params ask for exist and are of the kind ``guidance.module`` says."""
    g = params.guidance
    if g.module == "released":
        r = g.released
        store.released_checkpoint(r.checkpoint, r.setting)
        table = PromptTable(src.latents)   # its embeddings have the shapes generate's will have
        for note in check_fits(r.setting, audio_shape=metas[0]["latent_shape"],
                               video_shape=metas[1]["latent_shape"],
                               text_audio=table.null("audio").shape[1:],
                               text_video=table.null("video").shape[1:],
                               base_kinds=(metas[0]["kind"], metas[1]["kind"])):
            click.echo(f"note: {note}", err=True)
    elif any(g.scales):
        if not (src.discriminator / store.META_FILE).is_file():
            raise FileNotFoundError(f"no trained discriminator in {src.discriminator}: run `dvc "
                                    f"repro train_discriminator` or set guidance.module: released")
        if store.guide_kind(src.discriminator) == store.RELEASED:
            raise ValueError(f"{src.discriminator} holds a released module but guidance.module is "
                             f"trained: `dvc repro train_discriminator` (or --discriminator)")
    if any(g.critic_scales) and not (src.critic / store.META_FILE).is_file():
        raise FileNotFoundError(f"no critic in {src.critic} and guidance.critic_weight is "
                                f"{g.critic_weight}: run `dvc repro train_critic` or set "
                                f"guidance.critic_weight: 0")


def check_inputs(params: Params, src: Sources, out: Path, guided: bool) -> tuple[dict, tuple]:
    """Everything a run needs, checked before any weights load; returns the text encoders'
    record and the bases' ``base.json``."""
    if params.condition != "caption":
        raise ValueError(f"condition is {params.condition}: prompts need text-conditional bases; "
                         f"set condition: caption and `dvc repro` (README, \"Prompts\")")
    _check_out(out)
    metas = _base_metas(src)
    text_record = _check_latents(src)
    if guided:
        _check_guides(params, src, metas)
    return text_record, metas


# --------------------------------------------------------------------------- models
def _load_base(path: Path, modality: str, params: Params, device: torch.device):
    base = dist.to_device(load_base(path, device=device), device)
    if not hasattr(base, "set_uncond") or not getattr(base, "cond_dim", 1):
        raise ValueError(f"{path} is an unconditional {modality} base; prompts need one trained "
                         f"with condition: caption (`dvc repro`)")
    base.guidance_scale = getattr(params.cfg, modality)
    return base


class _BaseText:
    """A pretrained base's own prompt encoder, with ``HashedText``'s ``encode`` and ``null``."""

    def __init__(self, base):
        self.base = base

    def encode(self, texts: list[str]) -> torch.Tensor:
        return self.base.encode_prompt(list(texts)).float().cpu()

    def null(self) -> torch.Tensor:
        return self.base.null_embedding().float().cpu()


def _text_encoder(base, record: dict, path: Path) -> HashedText | _BaseText:
    """The base's own text encoder, or the one `encode` recorded for it (the tiny bases')."""
    if hasattr(base, "encode_prompt"):
        return _BaseText(base)
    if record.get("kind") != HashedText.kind:
        raise ValueError(f"{path}: no text encoder for this base (text.json records "
                         f"{record or 'none'}); `dvc repro encode`")
    encoder = HashedText(record["dim"])
    if getattr(base, "cond_dim", encoder.dim) != encoder.dim:
        raise ValueError(f"{path} takes prompt embeddings of size {base.cond_dim}, text.json's "
                         f"encoder gives {encoder.dim}: `dvc repro` to re-encode and retrain")
    return encoder


def embed_prompts(bases: tuple, texts: list[str], per_prompt: int, text_record: dict,
                  weights: tuple[float, float], paths: tuple[Path, Path]) -> SetPrompts:
    """Every prompt embedded once per base, the empty prompt too (set as each base's
    unconditional embedding); prompt ``j`` for pairs ``j·per_prompt … (j+1)·per_prompt − 1``."""
    embedded = {}
    for base, modality, path in zip(bases, ("audio", "video"), paths):
        encoder = _text_encoder(base, text_record.get(modality, {}), path)
        embedded[modality] = (encoder.encode(texts), encoder.null())
        base.set_uncond(embedded[modality][1])
    prompt_of = [j for j in range(len(texts)) for _ in range(per_prompt)]
    return SetPrompts.from_embeddings(texts, prompt_of, embedded["audio"][0],
                                      embedded["video"][0], weights,
                                      (embedded["audio"][1], embedded["video"][1]))


def load_guides(params: Params, src: Sources, bases: tuple, prompts: SetPrompts,
                device: torch.device) -> tuple[list[Guide], dict]:
    """The discriminator's and the critic's guides (scales from ``guidance.*``) and what they
    are, for the record."""
    g = params.guidance
    desc: dict[str, Any] = {"module": g.module, "scales": list(g.scales),
                            "critic_scales": list(g.critic_scales)}
    module = None
    if g.module == "released" and any(g.scales):
        r = g.released
        path = store.released_checkpoint(r.checkpoint, r.setting)
        module = load_released(path, r.setting, device=device)
        for note in check_bases(module, *bases, prompts.audio.shape[1:], prompts.video.shape[1:]):
            click.echo(f"note: {note}", err=True)
        desc.update(setting=r.setting, checkpoint=str(path), sha256=sha256_file(path))
    elif any(g.scales):
        module = store.load_guide(src.discriminator)
        desc.update(folder=str(src.discriminator), kind=store.guide_kind(src.discriminator))
    guides = [Guide(None if module is None else dist.to_device(module, device), *g.scales)]
    if any(g.critic_scales):
        guides.append(Guide(dist.to_device(store.load_guide(src.critic), device), *g.critic_scales))
        desc["critic"] = str(src.critic)
    return guides, desc


# --------------------------------------------------------------------------- writing
def write_generated(out: Path, a: torch.Tensor, v: torch.Tensor, *, encoders: dict,
                    prompts: SetPrompts, seeds: list[int], record: dict,
                    save_latents: bool) -> list[str]:
    """The folder ``out``, atomically: one mp4 with sound per pair, a contact sheet,
    ``generate.json`` (``record`` + each file's prompt and seed) and, with ``save_latents``,
    the latents."""
    mel, pixels = encoder_from_state(encoders["audio"]), encoder_from_state(encoders["video"])
    with torch.no_grad():
        videos, sound, mel_db = pixels.decode(v).numpy(), mel.decode(a).numpy(), \
            mel.to_db(a).numpy()
    first = {j: prompts.prompt_of.index(j) for j in set(prompts.prompt_of)}
    names = [f"p{j:03d}_{i - first[j]:03d}" for i, j in enumerate(prompts.prompt_of)]
    with atomic_path(out) as tmp:
        tmp.mkdir()
        paths = write_pairs(tmp, videos, sound, fps=encoders["fps"],
                            sample_rate=encoders["sample_rate"], prefix=PREFIX, names=names)
        save_png(tmp / "sheet.png", contact_sheet(videos, mel_db))
        if save_latents:
            save_tensors(tmp / "audio.safetensors", {"latents": a})
            save_tensors(tmp / "video.safetensors", {"latents": v})
        files = [{"file": p.name, "prompt_index": j, "prompt": prompts.texts[j], "seed": s}
                 for p, j, s in zip(paths, prompts.prompt_of, seeds)]
        write_json(tmp / RECORD, {**record, "files": files})
    return [f["file"] for f in files]


# --------------------------------------------------------------------------- the run
def generate(params: Params, texts: list[str], *, out: Path, per_prompt: int = 4,
             steps: int | None = None, seed: int | None = None, guided: bool = True,
             src: Sources = Sources(), batch_size: int | None = None,
             save_latents: bool = False, echo: Callable[[str], None] = print) -> dict:
    """Sample ``per_prompt`` pairs for each prompt in ``texts`` and write them to ``out``
    (see the module docstring); returns ``generate.json``'s record."""
    if not texts or any(not t.strip() for t in texts) or per_prompt < 1:
        raise ValueError("give at least one non-empty --prompt and --per-prompt >= 1")
    text_record, metas = check_inputs(params, src, out, guided)
    start, device, s = time.perf_counter(), dist.device(params.device), params.sample
    settings = SamplerSettings(steps or s.steps, s.kind, s.eta,
                               *((params.guidance.restarts, params.guidance.restart_steps)
                                 if guided else (0, 0)))
    bases = (_load_base(src.audio_base, "audio", params, device),
             _load_base(src.video_base, "video", params, device))
    prompts = embed_prompts(bases, list(texts), per_prompt, text_record,
                            (params.cfg.audio, params.cfg.video), (src.audio_base, src.video_base))
    guides, guide = load_guides(params, src, bases, prompts, device) if guided else \
        ([Guide(None, 0.0, 0.0)], {"module": None})
    n, seed = len(prompts.prompt_of), params.seed if seed is None else seed
    batch = batch_size or s.batch_size
    count = -(-n // batch)
    progress = (lambda lo, hi: echo(f"generate: batch {lo // batch + 1}/{count} (pairs {lo}-"
                                    f"{hi - 1} of {n}), {time.perf_counter() - start:.1f} s"))
    a, v = sharded_joint(*bases, settings, guides=guides, num_samples=n, batch_size=batch,
                         seed=seed, prompts=prompts, device=device, progress=progress)
    record = {"prompts": prompts.texts, "per_prompt": per_prompt, "seed": seed,
              "guided": guided, "guide": guide,
              "sampler": {"steps": settings.steps, "kind": settings.kind, "eta": settings.eta,
                          "batch_size": batch}, "cfg": to_dict(params.cfg),
              "guidance": to_dict(params.guidance), "condition": params.condition,
              "bases": {"audio": {"folder": str(src.audio_base), "kind": metas[0]["kind"]},
                        "video": {"folder": str(src.video_base), "kind": metas[1]["kind"]}},
              "text_encoders": text_record, "latents": str(src.latents)}
    files = write_generated(out, a, v, encoders=read_json(src.latents / "encoders.json"),
                            prompts=prompts, seeds=item_seeds(seed, n), record=record,
                            save_latents=save_latents)
    echo(f"generate: {n} pairs ({len(texts)} prompt(s) × {per_prompt}) in "
         f"{time.perf_counter() - start:.1f} s -> {out}")
    return {**record, "files": files}


# --------------------------------------------------------------------------- the command
def _clean_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Expected failures (bad params, missing files, models that do not fit) as one line."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ConfigError, FileNotFoundError, FileExistsError, ValueError, RuntimeError) as e:
            raise click.ClickException(f"{type(e).__name__}: {e}") from e
    return wrapper


_folder = click.Path(file_okay=False, path_type=Path)


@click.command("generate")
@click.option("--prompt", "prompts", multiple=True, required=True,
              help="a text prompt; repeat for several")
@click.option("--per-prompt", type=click.IntRange(min=1), default=4, show_default=True,
              help="pairs sampled per prompt")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="sampler steps [default: sample.steps]")
@click.option("--out", type=_folder, required=True, help="new folder for the files")
@click.option("--params", "params_path", type=click.Path(dir_okay=False, path_type=Path),
              default="params.yaml", show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=None, help="[default: seed]")
@click.option("--no-guidance", is_flag=True, help="the bases alone (same noise per seed)")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="pairs per sampler call [default: sample.batch_size]")
@click.option("--save-latents", is_flag=True, help="also write audio/video.safetensors")
@click.option("--latents", type=_folder, default=Sources.latents, show_default=True,
              help="encode's output: the encoders' normalisation and text encoders")
@click.option("--audio-base", type=_folder, default=Sources.audio_base, show_default=True)
@click.option("--video-base", type=_folder, default=Sources.video_base, show_default=True)
@click.option("--discriminator", type=_folder, default=Sources.discriminator,
              show_default=True, help="the trained one (guidance.module: trained)")
@click.option("--critic", type=_folder, default=Sources.critic, show_default=True,
              help="loaded when guidance.critic_weight > 0")
@_clean_errors
def main(prompts: tuple[str, ...], per_prompt: int, steps: int | None, out: Path,
         params_path: Path, seed: int | None, no_guidance: bool, batch_size: int | None,
         save_latents: bool, latents: Path, audio_base: Path, video_base: Path,
         discriminator: Path, critic: Path) -> None:
    """Generate audio-video pairs from text prompts with the pipeline's bases and guide
    (condition: caption; cfg.*, guidance.*, sample.kind/eta of params)."""
    src = Sources(audio_base, video_base, latents, discriminator, critic)
    generate(load_params(params_path), list(prompts), out=out, per_prompt=per_prompt,
             steps=steps, seed=seed, guided=not no_guidance, src=src, batch_size=batch_size,
             save_latents=save_latents, echo=click.echo)
