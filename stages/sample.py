"""Stage `sample`: guided joint samples and their paired independent baseline.

Both sets draw the same noise (per-item seeds: pair ``i`` has its own generators, the same in
both sets), so each guided pair has a baseline twin that differs only by the guidance. Writes
latents, mp4 files with sound, a contact sheet per set and the cost of base vs guidance passes.
Launched with several processes (`docs/scaling.md`) each samples its share of the batches; the
main process gathers them in item order and writes the same files as one process would.
"""
from __future__ import annotations

import time
from pathlib import Path

import click
import torch

from mmdisco import distributed as dist
from mmdisco import tracking
from mmdisco.bases import load_base
from mmdisco.config import to_dict
from mmdisco.encoders import encoder_from_state
from mmdisco.eval.sheets import contact_sheet, save_png, write_pairs
from mmdisco.guidance.sampler import item_seeds, sample_joint
from mmdisco.guidance.store import load_discriminator
from mmdisco.io import atomic_path, read_json, save_tensors, write_json
from stages.common import load, params_option, stage_seed, user_errors


def sharded_joint(base_a, base_v, D, *, num_samples: int, batch_size: int, seed: int,
                  **kw) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``sample_joint`` with per-item seeds over this process's share of the batches; every
    process gets all samples in item order. Timing: the batches' seconds and passes summed
    over processes, ``total_s`` the wall-clock time of the whole call."""
    seeds, start = item_seeds(seed, num_samples), time.perf_counter()

    def batch(lo: int, hi: int):
        a, v, timing = sample_joint(base_a, base_v, D, num_samples=hi - lo, item_seeds=seeds[lo:hi],
                                    device=dist.device(), **kw)
        return (a.cpu(), v.cpu()), timing

    (a, v), timings = dist.map_batches(batch, num_samples, batch_size)
    timing = {k: sum(t[k] for t in timings) for k in timings[0]}
    timing["total_s"] = time.perf_counter() - start
    return a, v, timing


def per_pass_cost(timing: dict) -> dict:
    """Seconds per base pass and per guidance pass (forward + input gradient of D)."""
    out = {"total_s": round(timing["total_s"], 3),
           "base_pass_s": timing["base_s"] / max(timing["base_passes"], 1),
           "base_passes": timing["base_passes"], "guidance_passes": timing["guidance_passes"]}
    if timing["guidance_passes"]:
        out["guidance_pass_s"] = timing["guidance_s"] / timing["guidance_passes"]
    return out


@click.command("sample")
@params_option
@click.option("--latents", "latents_dir", type=click.Path(file_okay=False, path_type=Path),
              default="data/latents", show_default=True, help="for the encoders' normalisation")
@click.option("--audio-base", type=click.Path(file_okay=False, path_type=Path),
              default="models/base_audio", show_default=True)
@click.option("--video-base", type=click.Path(file_okay=False, path_type=Path),
              default="models/base_video", show_default=True)
@click.option("--discriminator", type=click.Path(file_okay=False, path_type=Path),
              default="models/discriminator", show_default=True)
@click.option("--critic", type=click.Path(file_okay=False, path_type=Path),
              default="models/critic", show_default=True,
              help="contrastive critic; loaded only when guidance.critic_weight > 0")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default="data/samples",
              show_default=True)
@click.option("--metrics", "metrics_path", type=click.Path(dir_okay=False, path_type=Path),
              default="metrics/sample.json", show_default=True)
@user_errors
def main(params_path: Path, latents_dir: Path, audio_base: Path, video_base: Path,
         discriminator: Path, critic: Path, out: Path, metrics_path: Path) -> None:
    """Sample guided pairs and the paired baseline from the same noise (guidance.*, sample.*)."""
    params = load(params_path)
    cfg, g = params.sample, params.guidance
    device = dist.device()
    base_a, base_v = (dist.to_device(load_base(b), device) for b in (audio_base, video_base))
    D = dist.to_device(load_discriminator(discriminator), device)
    c_a, c_v = g.critic_scales
    C = dist.to_device(load_discriminator(critic), device) if (c_a or c_v) else None
    enc = read_json(latents_dir / "encoders.json")
    mel, pixels = encoder_from_state(enc["audio"]), encoder_from_state(enc["video"])
    seed = stage_seed(params.seed, "sample")
    common = dict(num_samples=cfg.num_samples, steps=cfg.steps, kind=cfg.kind, eta=cfg.eta,
                  batch_size=cfg.batch_size, seed=seed)
    sets = {"baseline": (0.0, 0.0), "guided": g.scales}
    report, provenance = {}, {}
    folders = {"audio_base": audio_base, "video_base": video_base, "discriminator": discriminator}
    if C is not None:
        folders["critic"] = critic
    for name, folder in folders.items():
        training = folder / "training.json"
        provenance[name] = read_json(training).get("mlflow_run_id") if training.is_file() else None
    results = {}
    for name, (s_a, s_v) in sets.items():
        guided = name == "guided"
        results[name] = sharded_joint(base_a, base_v, D if guided else None,
                                      scale_a=s_a, scale_v=s_v,
                                      critic=C if guided else None, critic_scales=(c_a, c_v),
                                      restarts=g.restarts, restart_steps=g.restart_steps, **common)
    if not dist.is_main():   # the main process writes everything
        dist.barrier()
        return
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for name, (s_a, s_v) in sets.items():
            a, v, timing = results[name]
            folder = tmp / name
            folder.mkdir()
            save_tensors(folder / "audio.safetensors", {"latents": a})
            save_tensors(folder / "video.safetensors", {"latents": v})
            k = min(cfg.media, cfg.num_samples)
            if k:
                videos, mel_db = pixels.decode(v[:k]).numpy(), mel.to_db(a[:k]).numpy()
                with torch.no_grad():
                    sound = mel.decode(a[:k]).numpy()
                write_pairs(folder / "media", videos, sound, fps=enc["fps"],
                            sample_rate=enc["sample_rate"], prefix=name)
                save_png(folder / "sheet.png", contact_sheet(videos, mel_db))
            report[name] = {"scale_audio": s_a, "scale_video": s_v, **per_pass_cost(timing)}
        base_pass = report["baseline"]["base_pass_s"]
        guided = report["guided"]
        guided["critic_scale_audio"], guided["critic_scale_video"] = c_a, c_v
        if "guidance_pass_s" in guided:
            # a step = 2 base passes (+ one pass per guiding module when guided)
            per_step = guided["guidance_passes"] / (guided["base_passes"] / 2)
            guided["guided_step_cost_ratio"] = (
                (2 * base_pass + per_step * guided["guidance_pass_s"]) / (2 * base_pass))
        guided["sampling_time_ratio"] = guided["total_s"] / report["baseline"]["total_s"]
        write_json(tmp / "provenance.json", provenance)
    write_json(metrics_path, report)
    click.echo(f"sample: {cfg.num_samples} guided + {cfg.num_samples} baseline pairs "
               f"(s_a={sets['guided'][0]}, s_v={sets['guided'][1]}) in "
               f"{report['baseline']['total_s'] + report['guided']['total_s']:.1f} s -> {out}")
    with tracking.stage_run("sample", {"seed": params.seed, "guidance": to_dict(g),
                                       "sample": to_dict(cfg)}):
        tracking.log_metrics(report)
        tracking.log_metrics({"processes": dist.world_size()})
    dist.barrier()
