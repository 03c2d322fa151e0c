"""Stages `sample` and `sample_baseline`: guided joint samples, and the independent baseline.

One command, two sets (``--set guided|baseline``), each its own DVC stage so that an
experiment on ``guidance.*`` reruns only the guided set. Both sets draw the same noise
(per-item seeds: pair ``i`` has its own generators, the same in both sets), so each guided
pair has a baseline twin that differs only by the guidance. Writes latents, mp4 files with
sound, a contact sheet and the cost of base vs guidance passes.
Launched with several processes (`docs/scaling.md`) each samples its share of the batches; the
main process gathers them in item order and writes the same files as one process would.

With `condition: caption` every pair has a prompt: `sample.prompts` cycled over the pairs, or
by default the captions of the clips that `train_discriminator` holds out (`train.heldout`).
Each base gets its prompt's embeddings (stored by `encode`) with its own CFG weight; the guided
set's discriminator sees the prompt too and its residuals are combined per modality as
`r_u + w_m (r_c − r_u)` (`CFGGuide`). The baseline uses the same prompts from the same noise.
Media are named by the prompt's index (`<set>_p<prompt>_<pair>.mp4`); `prompts.json` and the
MLflow run hold the texts.
"""
from __future__ import annotations

import time
from pathlib import Path

import click
import torch

from mmdisco import distributed as dist
from mmdisco import tracking
from mmdisco.config import to_dict
from mmdisco.encoders import encoder_from_state
from mmdisco.eval.sheets import contact_sheet, save_png, write_pairs
from mmdisco.guidance.conditional import CFGGuide, ConditionalDiscriminator, joint_condition
from mmdisco.guidance.sampler import item_seeds, sample_joint
from mmdisco.guidance.store import load_discriminator
from mmdisco.io import atomic_path, read_json, save_tensors, write_json
from mmdisco.seeds import stage_seed
from stages.bases import load_bases
from stages.common import load, params_option, user_errors


def sharded_joint(base_a, base_v, D, *, num_samples: int, batch_size: int, seed: int,
                  prompts: dict | None = None, device: str | torch.device = "cpu", **kw) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``sample_joint`` with per-item seeds over this process's share of the batches; every
    process gets all samples in item order. Timing: the batches' seconds and passes summed
    over processes, ``total_s`` the wall-clock time of the whole call.

    ``prompts``: per-sample rows ``audio``, ``video`` (the bases' embeddings) and ``joint`` (the
    discriminator's condition), with ``weights`` (the bases' CFG weights): a conditional ``D``
    guides through ``CFGGuide`` on each batch's rows."""
    seeds, start = item_seeds(seed, num_samples), time.perf_counter()
    device = dist.device(device)

    def batch(lo: int, hi: int):
        guide, cond = D, {}
        if prompts is not None:
            cond = {"cond_a": prompts["audio"][lo:hi], "cond_v": prompts["video"][lo:hi]}
            if isinstance(D, ConditionalDiscriminator):
                guide = CFGGuide(D, prompts["joint"][lo:hi].to(device), prompts["weights"])
        a, v, timing = sample_joint(base_a, base_v, guide, num_samples=hi - lo,
                                    item_seeds=seeds[lo:hi], device=device, **cond, **kw)
        return (a.cpu(), v.cpu()), timing

    (a, v), timings = dist.map_batches(batch, num_samples, batch_size)
    timing = {k: sum(t[k] for t in timings) for k in timings[0]}
    timing["total_s"] = time.perf_counter() - start
    return a, v, timing


def per_pass_cost(timing: dict) -> dict:
    """Seconds per base pass and per guidance pass (forward + input gradient of a guide) and,
    when guided, the cost of a guided step over an unguided one, all from ONE run's timings:
    a step is 2 base passes (+ one pass per guiding module when guided)."""
    out = {"total_s": round(timing["total_s"], 3),
           "base_pass_s": timing["base_s"] / max(timing["base_passes"], 1),
           "base_passes": timing["base_passes"], "guidance_passes": timing["guidance_passes"]}
    if timing["guidance_passes"]:
        out["guidance_pass_s"] = timing["guidance_s"] / timing["guidance_passes"]
        per_step = timing["guidance_passes"] / (timing["base_passes"] / 2)
        out["guided_step_cost_ratio"] = (2 * out["base_pass_s"] + per_step * out["guidance_pass_s"]
                                         ) / (2 * out["base_pass_s"])
    return out


def sample_prompts(table, cfg, n: int, heldout: int, split_seed: int) -> tuple[list[str], list[int]]:
    """``(prompts, prompt_of)``: the prompt list and, for each of ``n`` pairs, its index in it.

    ``cfg.prompts`` when given; else the captions of the clips that `train_discriminator` holds
    out (its split: ``randperm`` from its seed, the first ``heldout``), empty captions left out.
    The list is cycled over the pairs."""
    if cfg.prompts:
        prompts = list(cfg.prompts)
    else:
        split = torch.randperm(len(table.clip_prompt),
                               generator=torch.Generator().manual_seed(split_seed))[:heldout]
        prompts = [c for c in (table.prompts[i] for i in table.clip_prompt[split].tolist()) if c]
        if not prompts:
            raise ValueError("the held-out clips have no captions; give sample.prompts")
    return prompts, [i % len(prompts) for i in range(n)]


def write_set(folder: Path, a: torch.Tensor, v: torch.Tensor, *, encoders: dict, media: int,
              name: str, names: list[str] | None = None) -> None:
    """Latents, the first ``media`` pairs as mp4 with sound, and a contact sheet."""
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
                    names=None if names is None else names[:k])
        save_png(folder / "sheet.png", contact_sheet(videos, mel_db))


def _run_ids(folders: dict[str, Path]) -> dict[str, str | None]:
    """MLflow run id of the stage that trained each model folder (None if not recorded)."""
    return {name: (read_json(f / "training.json").get("mlflow_run_id")
                   if (f / "training.json").is_file() else None) for name, f in folders.items()}


@click.command("sample")
@params_option
@click.option("--set", "which", type=click.Choice(["guided", "baseline"]), default="guided",
              show_default=True, help="baseline: the bases sampled independently (guidance off; "
                                      "a change of guidance.* does not rerun it)")
@click.option("--latents", "latents_dir", type=click.Path(file_okay=False, path_type=Path),
              default="data/latents", show_default=True, help="for the encoders' normalisation")
@click.option("--audio-base", type=click.Path(file_okay=False, path_type=Path),
              default="models/base_audio", show_default=True)
@click.option("--video-base", type=click.Path(file_okay=False, path_type=Path),
              default="models/base_video", show_default=True)
@click.option("--discriminator", type=click.Path(file_okay=False, path_type=Path),
              default="models/discriminator", show_default=True, help="guided only")
@click.option("--critic", type=click.Path(file_okay=False, path_type=Path),
              default="models/critic", show_default=True,
              help="contrastive critic; loaded only when guided and guidance.critic_weight > 0")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="[default: data/samples/<set>]")
@click.option("--metrics", "metrics_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="[default: metrics/sample.json, metrics/sample_baseline.json]")
@user_errors
def main(params_path: Path, which: str, latents_dir: Path, audio_base: Path, video_base: Path,
         discriminator: Path, critic: Path, out: Path | None, metrics_path: Path | None) -> None:
    """Sample guided pairs, or the independent baseline from the same noise (guidance.*,
    sample.*)."""
    params = load(params_path)
    cfg, g = params.sample, params.guidance
    out = out or Path("data/samples") / which
    guided = which == "guided"
    metrics_path = metrics_path or Path("metrics/sample.json" if guided else
                                        "metrics/sample_baseline.json")
    device = dist.device(params.device)
    base_a, base_v, table = load_bases(params, audio_base, video_base, latents_dir)
    folders = {"audio_base": audio_base, "video_base": video_base}
    D = C = None
    (s_a, s_v), (c_a, c_v) = (g.scales, g.critic_scales) if guided else ((0.0, 0.0), (0.0, 0.0))
    if guided:
        D = dist.to_device(load_discriminator(discriminator), device)
        folders["discriminator"] = discriminator
        if c_a or c_v:
            C = dist.to_device(load_discriminator(critic), device)
            folders["critic"] = critic
    enc = read_json(latents_dir / "encoders.json")
    # one seed for both sets: pair i of the baseline and of the guided set start from the
    # same noise, so each guided pair has a baseline twin
    # the baseline reads nothing of guidance.* (its stage does not depend on it)
    restarts, restart_steps = (g.restarts, g.restart_steps) if guided else (0, 0)
    prompts = prompt_list = prompt_of = None
    if table is not None:
        prompt_list, prompt_of = sample_prompts(table, cfg, cfg.num_samples, params.train.heldout,
                                                stage_seed(params.seed, "train_discriminator"))
        rows = table.index(prompt_list)[torch.tensor(prompt_of)]
        cond_a, cond_v = table.embeddings("audio", rows), table.embeddings("video", rows)
        prompts = {"audio": cond_a, "video": cond_v, "joint": joint_condition(cond_a, cond_v),
                   "weights": (params.cfg.audio, params.cfg.video)}
    a, v, timing = sharded_joint(base_a, base_v, D, scale_a=s_a, scale_v=s_v, critic=C,
                                 prompts=prompts, device=device,
                                 critic_scales=(c_a, c_v), restarts=restarts,
                                 restart_steps=restart_steps, num_samples=cfg.num_samples,
                                 steps=cfg.steps, kind=cfg.kind, eta=cfg.eta,
                                 batch_size=cfg.batch_size,
                                 seed=stage_seed(params.seed, "sample"))
    if not dist.is_main():   # the main process writes everything
        dist.barrier()
        return
    report = {"scale_audio": s_a, "scale_video": s_v, "critic_scale_audio": c_a,
              "critic_scale_video": c_v, **per_pass_cost(timing)}
    names = None if prompt_of is None else [f"p{j:03d}_{i:03d}" for i, j in enumerate(prompt_of)]
    with atomic_path(out) as tmp:
        write_set(tmp, a, v, encoders=enc, media=cfg.media, name=which, names=names)
        write_json(tmp / "provenance.json", _run_ids(folders))
        if prompt_list is not None:
            write_json(tmp / "prompts.json", {"prompts": prompt_list, "prompt_of": prompt_of,
                                              "cfg": to_dict(params.cfg)})
    write_json(metrics_path, report)
    click.echo(f"sample: {cfg.num_samples} {which} pairs (s_a={s_a}, s_v={s_v}) in "
               f"{report['total_s']:.1f} s -> {out}")
    logged = {"seed": params.seed, "sample": to_dict(cfg), "set": which,
              "condition": params.condition, "cfg": to_dict(params.cfg)}
    with tracking.stage_run("sample" if guided else "sample_baseline",
                            {**logged, **({"guidance": to_dict(g)} if guided else {})}):
        tracking.log_metrics(report)
        if prompt_list is not None:
            tracking.log_dict({"prompts": prompt_list, "prompt_of": prompt_of}, "prompts.json")
        tracking.log_metrics({"processes": dist.world_size()})
    dist.barrier()
