"""Tune the tiny base models: train candidates, sample with DDIM, score with the world's decoders.

    python bench/tune_bases.py audio --cand audio_default [--steps 1200] [--set lr=3e-3 ...]
    python bench/tune_bases.py video --cand video_default --samples 256
    python bench/tune_bases.py real          # decoder validity of the real latents (sanity)

Data: the default pipeline's world (render_world → extract_clips → encoders), cached under
--cache. Prints wall/CPU seconds, the loss curve and per-modality validity (with the decoders'
most common rejection reasons). Measures only: no asserts. Run one training at a time (the
machine has 2 shared cores).
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from einops import rearrange

from mmdisco.bases import load_base
from mmdisco.bases.tiny import TinyBaseConfig
from mmdisco.bases.train import TrainBaseConfig, train_base
from mmdisco.config import AudioEncoderConfig, ClipConfig, SynthConfig, build, to_dict
from mmdisco.data.synth import class_colours, class_pitches
from mmdisco.encoders import LogMelEncoder, PixelEncoder
from mmdisco.eval.decoders import decode_audios, decode_videos

FPS = 8

CANDIDATES = {
    # chosen defaults (mirror params.yaml base.audio / base.video)
    "audio_default": TrainBaseConfig(
        model=TinyBaseConfig(channels=(32, 64), patch=4, sigma_data=0.1), steps=500,
        warmup_steps=50),
    "video_default": TrainBaseConfig(
        model=TinyBaseConfig(channels=(32, 64, 64), patch=4, frame_layout="tiles",
                             attn_levels=(1,), sigma_data=0.1), steps=1000),
    # what was tried on the way (see the report in the bases README section)
    "audio_1d_small": TrainBaseConfig(
        model=TinyBaseConfig(arch="unet1d", channels=(32, 64, 128), prediction_type="v_prediction"),
        steps=1200),
    "audio_2d_p4": TrainBaseConfig(
        model=TinyBaseConfig(arch="unet2d", channels=(64, 128), patch=4,
                             prediction_type="v_prediction"), steps=1200),
    "video_p2": TrainBaseConfig(
        model=TinyBaseConfig(channels=(64, 128), patch=2), steps=1500),
    "video_p2_3lv": TrainBaseConfig(
        model=TinyBaseConfig(channels=(64, 128, 128), patch=2), steps=1500),
}


# --------------------------------------------------------------------------- data
def build_latents(cache: Path, seed: int) -> dict:
    """Render the default world, cut clips, encode: cached latents and the audio encoder state."""
    out = cache / "latents.pt"
    if out.is_file():
        return torch.load(out, weights_only=True)
    from mmdisco.data.clips import extract_clips
    from mmdisco.data.shards import load_clips
    from mmdisco.data.synth import render_world
    t0 = time.perf_counter()
    raw, clips = cache / "raw", cache / "clips"
    if not raw.is_dir():
        render_world(raw, SynthConfig(num_files=1000), seed)
    if not clips.is_dir():
        extract_clips(sorted(raw.glob("*.mp4")), clips, ClipConfig())
    video, audio, index = load_clips(clips)
    enc = LogMelEncoder(AudioEncoderConfig(), sample_rate=index["sample_rate"],
                        num_samples=audio.shape[1])
    enc.fit(audio)
    data = {"audio": enc.encode(audio), "video": PixelEncoder().encode(video),
            "ref_db": torch.tensor(enc.ref_db), "sample_rate": torch.tensor(index["sample_rate"])}
    torch.save(data, out)
    print(f"data: {len(video)} clips in {time.perf_counter() - t0:.0f} s -> {out}")
    return data


def audio_encoder(data: dict) -> LogMelEncoder:
    sr = int(data["sample_rate"])
    return LogMelEncoder(AudioEncoderConfig(), sample_rate=sr, num_samples=sr,
                         ref_db=float(data["ref_db"]))


# --------------------------------------------------------------------------- scoring
def validity(modality: str, latents: torch.Tensor, data: dict, k: int = 4) -> tuple[float, dict, dict]:
    """Fraction valid by the ground-truth decoders, the top rejection reasons, class counts."""
    if modality == "video":
        readings = decode_videos(PixelEncoder().decode(latents).numpy(), class_colours(k))
    else:
        enc = audio_encoder(data)
        readings = decode_audios(enc.to_db(latents).numpy(), enc.mel_frequencies().numpy(),
                                 class_pitches(k), mel_frame_rate=enc.frame_rate, fps=FPS,
                                 num_video_frames=8)
    reasons = collections.Counter(_reason_kind(r.reason) for r in readings if not r.valid)
    classes = collections.Counter(r.cls for r in readings if r.valid)
    return float(np.mean([r.valid for r in readings])), dict(reasons.most_common(4)), dict(sorted(classes.items()))


def _reason_kind(reason: str) -> str:
    """Strip numbers so rejection reasons group."""
    return " ".join(w for w in reason.split() if not any(c.isdigit() for c in w))[:60]


@torch.no_grad()
def denoise_report(base, latents: torch.Tensor, seed: int = 0) -> str:
    """x0 MSE of the one-step denoiser at a few noise levels (lower is better), real latents."""
    gen = torch.Generator().manual_seed(seed)
    x0 = latents[torch.randperm(len(latents), generator=gen)[:128]]
    ab, parts = base.alphas_cumprod(), []
    for t in (100, 300, 500, 700, 900):
        a, s = ab[t].sqrt().float(), (1 - ab[t]).sqrt().float()
        x_t = a * x0 + s * torch.randn(x0.shape, generator=gen)
        x0_hat = ((x_t - s * base.eps(x_t, torch.full((len(x0),), t))) / a).clamp(-1, 1)
        parts.append(f"t{t}:{(x0_hat - x0).square().mean():.4f}")
    return "x0-mse " + " ".join(parts)


@torch.no_grad()
def sample(base, n: int, steps: int, seed: int, batch: int = 256) -> torch.Tensor:
    """Unguided DDIM samples (eta = 0) from the base model."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, n, batch):
        sched = base.make_scheduler("ddim")
        sched.set_timesteps(steps)
        x = torch.randn((min(batch, n - i), *base.latent_shape), generator=gen)
        for t in sched.timesteps:
            eps = base.eps(x, t.repeat(len(x)))
            x = sched.step(eps, t, x).prev_sample
        out.append(x)
    return torch.cat(out)


def save_sheet(modality: str, latents: torch.Tensor, path: Path) -> None:
    """A PNG of samples: one row per video clip (frames side by side) or mels side by side."""
    from PIL import Image
    if modality == "video":
        pix = PixelEncoder().decode(latents).numpy()  # [N, F, H, W, 3]
        sheet = rearrange(pix, "n f h w c -> (n h) (f w) c")
    else:
        img = ((latents[:, 0].clamp(-1, 1) + 1) * 127.5).round().byte().numpy()  # [N, T, M]
        sheet = rearrange(img[:, :, ::-1], "n t m -> m (n t)")
        sheet = np.repeat(sheet[..., None], 3, axis=-1)
    Image.fromarray(np.ascontiguousarray(sheet)).resize(
        (sheet.shape[1] * 4, sheet.shape[0] * 4), Image.NEAREST).save(path)


# --------------------------------------------------------------------------- main
def parse_set(cfg: TrainBaseConfig, items: list[str]) -> TrainBaseConfig:
    raw = to_dict(cfg)
    for item in items:
        key, _, value = item.partition("=")
        node = raw
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = _number(yaml.safe_load(value))
    return build(TrainBaseConfig, raw, "base")


def _number(v):
    """YAML 1.1 reads 5e-4 as a string; take it as the number it means."""
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("modality", choices=("audio", "video", "real"))
    ap.add_argument("--cand", default=None, help=f"one of {', '.join(CANDIDATES)}")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a TrainBaseConfig field (model.channels=[64,128]), repeatable")
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--ddim-steps", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/mmdisco_bench"))
    ap.add_argument("--out", type=Path, default=None, help="keep the trained model here")
    ap.add_argument("--eval-every", type=int, default=0,
                    help="also score EMA checkpoints every this many steps (slower)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = build_latents(args.cache, args.seed)
    if args.modality == "real":
        for m in ("audio", "video"):
            v, reasons, classes = validity(m, data[m], data)
            print(f"real {m}: {tuple(data[m].shape)} valid {v:.3f} {reasons} classes {classes}")
        return
    cand = args.cand or f"{args.modality}_default"
    cfg = parse_set(CANDIDATES[cand], args.set)
    latents = data[args.modality]
    print(f"{cand} {args.modality}: {json.dumps(_diff(cfg))}", flush=True)
    out = args.out or Path(tempfile.mkdtemp(prefix="tune-bases-"))
    curve = []

    def log(step: int, m: dict) -> None:
        curve.append((step, round(m["loss"], 4)))
        if step % (cfg.log_every * 5) == 0 or step == cfg.steps:
            print(f"  step {step:5d} loss {m['loss']:.4f} lr {m['lr']:.2e} gnorm {m['grad_norm']:.2f}",
                  flush=True)

    c0, w0 = time.process_time(), time.perf_counter()
    summary = train_base(latents, cfg, out, seed=args.seed, log=log)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    base = load_base(out)
    s0 = time.perf_counter()
    x = sample(base, args.samples, args.ddim_steps, args.seed + 1)
    samp = time.perf_counter() - s0
    v, reasons, classes = validity(args.modality, x, data)
    print(f"RESULT {cand} {args.modality} params {summary['num_parameters'] / 1e6:.2f}M "
          f"steps {cfg.steps} train {wall:.0f} s wall ({cpu:.0f} s cpu, {wall / cfg.steps * 1000:.0f} ms/step) "
          f"sample {samp:.1f} s  valid {v:.3f} (n={args.samples})  final loss {summary['final_loss']:.4f}")
    print(f"  {denoise_report(base, latents)}")
    if args.out is not None:
        save_sheet(args.modality, x[:12], args.out / "samples.png")
    print(f"  rejections {reasons}\n  classes {classes}\n  set {args.set}", flush=True)


def _diff(cfg: TrainBaseConfig) -> dict:
    """Fields that differ from the dataclass defaults (what this run changes)."""
    ref, cur = to_dict(TrainBaseConfig()), to_dict(cfg)
    out = {k: v for k, v in cur.items() if k != "model" and ref[k] != v}
    out["model"] = {k: v for k, v in cur["model"].items() if ref["model"][k] != v}
    return out


if __name__ == "__main__":
    main()
