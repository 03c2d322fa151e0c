"""Compare guidance recipes on an already-trained project, without touching its DVC state.

    python bench/guidance_recipes.py PROJECT --recipe base: \\
        --recipe plain:scale=4 --recipe critic:scale=4,critic_weight=10,restarts=4,restart_steps=8 \\
        [--samples 256] [--seeds 0,1] [--critic models/critic] [--out report.json]

PROJECT is a folder where `dvc repro` ran (it needs data/latents, models/base_*,
models/discriminator and, for critic recipes, models/critic). Each recipe is NAME:KEY=VALUE,...
over `guidance.*` keys (and `sample.steps`, `sample.kind`, `sample.eta` as `steps`, `kind`,
`eta`); an empty list means independent sampling. Every recipe starts from the same noise per
seed, is scored with the world's ground-truth decoders and printed as one table row (mean over
seeds, and the per-seed spread). No asserts: it measures.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from mmdisco.bases import load_base
from mmdisco.config import GuidanceConfig, build, load_params, to_dict
from mmdisco.data.shards import load_clips
from mmdisco.eval.frechet import WorldAudioFeatures, WorldVideoFeatures, frechet_distance
from mmdisco.encoders import encoder_from_state
from mmdisco.eval.metrics import evaluate_clips
from mmdisco.guidance.sampler import Guide, SamplerSettings, StepTimer, sample_joint
from mmdisco.guidance.store import load_guide
from mmdisco.io import load_tensors, read_json
from mmdisco.seeds import modality_generators

COLUMNS = ("validity_audio", "validity_video", "semantic_agreement", "temporal_f1", "aligned_fraction",
           "class_balance_audio", "class_balance_video", "fd_audio", "fd_video")
SAMPLER_KEYS = ("steps", "kind", "eta")


def parse_recipe(text: str) -> tuple[str, dict]:
    name, _, body = text.partition(":")
    values = {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        values[key.strip()] = yaml.safe_load(value)
    return name, values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("project", type=Path)
    ap.add_argument("--recipe", action="append", required=True, metavar="NAME:K=V,...")
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--critic", type=Path, default=Path("models/critic"),
                    help="critic folder, relative to PROJECT unless absolute")
    ap.add_argument("--discriminator", type=Path, default=Path("models/discriminator"))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None, help="JSON report")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    proj = args.project
    params = load_params(proj / "params.yaml")
    base_a, base_v = load_base(proj / "models/base_audio"), load_base(proj / "models/base_video")
    D = load_guide(proj / args.discriminator)
    critic_dir = proj / args.critic
    C = load_guide(critic_dir) if (critic_dir / "discriminator.json").is_file() else None
    enc = read_json(proj / "data/latents/encoders.json")
    mel, pixels = encoder_from_state(enc["audio"]), encoder_from_state(enc["video"])
    common = dict(mel_hz=mel.mel_frequencies().numpy(), mel_frame_rate=mel.frame_rate,
                  fps=enc["fps"], num_classes=params.data.synth.num_classes, bootstrap=50,
                  confidence=0.95, seed=0)
    # Fréchet distances against a real subset of the samples' size (FD is biased by set size)
    real_v, _, _ = load_clips(proj / "data/clips")
    real_a = load_tensors(proj / "data/latents/audio.safetensors")["latents"]
    ref = np.random.default_rng(0).permutation(len(real_v))[:args.samples]
    fx_a, fx_v = WorldAudioFeatures(n_mels=real_a.shape[-1]), WorldVideoFeatures()
    real_fa, real_fv = fx_a(mel.to_db(real_a[ref]).numpy()), fx_v(real_v[ref].numpy())
    seeds = [int(s) for s in args.seeds.split(",")]
    report = {}
    print(f"{'recipe':14s} " + " ".join(f"{c[:12]:>12s}" for c in COLUMNS) + "   time_s  passes")
    for text in args.recipe:
        name, values = parse_recipe(text)
        sampler = {k: values.pop(k) for k in SAMPLER_KEYS if k in values}
        g = build(GuidanceConfig, {**to_dict(dataclasses.replace(params.guidance)), "scale": 0.0,
                                   **values}, "guidance")
        c_a, c_v = g.critic_scales
        if (c_a or c_v) and C is None:
            raise SystemExit(f"recipe {name}: critic weights set but no critic in {critic_dir}")
        rows = []
        for seed in seeds:
            t0, timer = time.perf_counter(), StepTimer()
            settings = SamplerSettings(
                steps=sampler.get("steps", params.sample.steps), kind=sampler.get("kind", params.sample.kind),
                eta=sampler.get("eta", params.sample.eta), restarts=g.restarts,
                restart_steps=g.restart_steps)
            a, v = sample_joint(base_a, base_v, settings, guides=[Guide(D, *g.scales), Guide(C, c_a, c_v)],
                                num_samples=args.samples, generators=modality_generators(seed),
                                batch_size=params.sample.batch_size, timer=timer)
            wall = time.perf_counter() - t0
            videos, mel_db = pixels.decode(v).numpy(), mel.to_db(a).numpy()
            m = evaluate_clips(videos, mel_db, shuffle=False, **common)
            m["fd_audio"] = frechet_distance(real_fa, fx_a(mel_db))["fd"]
            m["fd_video"] = frechet_distance(real_fv, fx_v(videos))["fd"]
            rows.append({**{c: m[c] or 0.0 for c in COLUMNS}, "time_s": wall,
                         "passes": timer.base_passes + timer.guidance_passes})
        mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        spread = {k: float(np.ptp([r[k] for r in rows])) for k in COLUMNS}
        report[name] = {"guidance": to_dict(g), "sampler": sampler, "mean": mean, "spread": spread,
                        "per_seed": rows}
        print(f"{name:14s} " + " ".join(f"{mean[c]:12.3f}" for c in COLUMNS)
              + f"  {mean['time_s']:7.1f}  {mean['passes'] / max(1, -(-args.samples // params.sample.batch_size)):6.0f}",
              flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
