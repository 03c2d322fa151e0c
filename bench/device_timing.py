"""Time the default pipeline's sampling and training steps on one device (a GPU, or the CPU).

    python bench/device_timing.py PROJECT [--device cuda] [--batch 512] [--steps 25]
                                  [--train-steps 50] [--out report.json]

PROJECT is a folder where `dvc repro` ran (models/base_*, models/discriminator, models/critic,
data/latents, data/fakes). Measures, with warm-up and device synchronisation:
- sampling: independent vs guided (discriminator + critic at the project's guidance params),
  seconds per sampler step and per pair, and the per-pass split the sampler reports;
- training: seconds per step of the video base, the audio base, the discriminator and the
  critic at the project's batch sizes (the same losses the stages use).
Prints a table and writes JSON. No asserts: it measures.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from mmdisco.bases import load_base
from mmdisco.bases.train import diffusion_loss
from mmdisco.config import load_params
from mmdisco.guidance.critic import info_nce
from mmdisco.guidance.loss import DiscriminatorLoss, forward_noise
from mmdisco.guidance.sampler import Guide, SamplerSettings, StepTimer, sample_joint
from mmdisco.guidance.store import load_guide
from mmdisco.io import load_tensors
from mmdisco.seeds import modality_generators


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> list[float]:
    fn()                                   # warm-up (kernels, allocator, cuDNN choices)
    out = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


def train_step_fn(module, loss_of, lr: float = 1e-4):
    params = [p for p in module.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr)

    def step():
        loss = loss_of()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("project", type=Path)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--steps", type=int, default=None, help="sampler steps [params sample.steps]")
    ap.add_argument("--train-steps", type=int, default=50, help="timed steps per trainer")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    proj = args.project
    params = load_params(proj / "params.yaml")
    steps = args.steps or params.sample.steps
    base_a = load_base(proj / "models/base_audio").to(device).eval()
    base_v = load_base(proj / "models/base_video").to(device).eval()
    D = load_guide(proj / "models/discriminator").to(device)
    C = load_guide(proj / "models/critic").to(device)
    g = params.guidance
    s_a, s_v = g.scales
    c_a, c_v = g.critic_scales
    report: dict = {"device": str(device), "name": torch.cuda.get_device_name(device)
                    if device.type == "cuda" else "cpu", "batch": args.batch, "steps": steps}
    print(f"device {report['name']}, batch {args.batch}, {steps} sampler steps")

    # ---- sampling
    last = {}
    settings = SamplerSettings(steps=steps, kind=params.sample.kind, eta=params.sample.eta)

    def sampler(guided: bool):
        def run():
            timer = StepTimer()
            sample_joint(base_a, base_v, settings,
                         guides=[Guide(D, s_a, s_v), Guide(C, c_a, c_v)] if guided else [],
                         num_samples=args.batch, generators=modality_generators(0), device=device,
                         timer=timer)
            last[guided] = timer
        return run

    for guided in (False, True):
        times = timed(sampler(guided), device, args.repeats)
        t = statistics.median(times)
        timing = last[guided]
        name = "guided" if guided else "independent"
        report[f"sample_{name}"] = {
            "seconds": t, "per_step_s": t / steps, "per_pair_ms": 1000 * t / args.batch,
            "base_passes": timing.base_passes, "guidance_passes": timing.guidance_passes,
            "base_s": timing.base_s, "guidance_s": timing.guidance_s}
        print(f"sample {name:12s} {t:8.3f} s  {1000 * t / steps:8.2f} ms/step  "
              f"{1000 * t / args.batch:7.3f} ms/pair")
    report["guided_over_independent"] = (report["sample_guided"]["seconds"]
                                         / report["sample_independent"]["seconds"])
    print(f"guided / independent: {report['guided_over_independent']:.2f}x")

    # ---- training steps
    real_a = load_tensors(proj / "data/latents/audio.safetensors")["latents"].to(device)
    real_v = load_tensors(proj / "data/latents/video.safetensors")["latents"].to(device)
    fake_a = load_tensors(proj / "data/fakes/audio.safetensors")["latents"].to(device)
    fake_v = load_tensors(proj / "data/fakes/video.safetensors")["latents"].to(device)
    gen = torch.Generator(device=device).manual_seed(0)

    def batch(x, n):
        return x[torch.randint(len(x), (n,), generator=gen, device=device)]

    trainers = {}
    for name, base, data, cfg in (("base_audio", base_a, real_a, params.base.audio),
                                  ("base_video", base_v, real_v, params.base.video)):
        base.train()

        def loss_of(base=base, data=data, cfg=cfg):
            x0 = batch(data, cfg.batch_size)
            t = torch.randint(base.num_train_timesteps, (len(x0),), generator=gen, device=device)
            noise = torch.randn(x0.shape, generator=gen, device=device)
            return diffusion_loss(base, x0, t, noise, cfg)
        trainers[name] = (train_step_fn(base.unet, loss_of), cfg.batch_size)
    D.train()
    d_loss = DiscriminatorLoss(params.discriminator.denoise_weight)

    def d_loss_of():
        n = params.discriminator.batch_size
        return d_loss(D, base_a, base_v, batch(real_a, n), batch(real_v, n), batch(fake_a, n),
                      batch(fake_v, n), gen)[0]
    trainers["discriminator"] = (train_step_fn(D, d_loss_of), params.discriminator.batch_size)
    C.train()
    alphas_a, alphas_v = base_a.alphas_cumprod().to(device), base_v.alphas_cumprod().to(device)

    def c_loss_of():
        n = params.critic.batch_size
        idx = torch.randperm(len(real_a), generator=gen, device=device)[:n]
        t = torch.full((n,), 600, device=device, dtype=torch.long)
        a_t = forward_noise(real_a[idx], t, torch.randn(real_a[idx].shape, generator=gen, device=device), alphas_a)
        v_t = forward_noise(real_v[idx], t, torch.randn(real_v[idx].shape, generator=gen, device=device), alphas_v)
        return info_nce(C.scores(a_t, v_t, t))
    trainers["critic"] = (train_step_fn(C, c_loss_of), params.critic.batch_size)
    for name, (step, bs) in trainers.items():
        def many(step=step):
            for _ in range(args.train_steps):
                step()
        t = statistics.median(timed(many, device, args.repeats)) / args.train_steps
        report[f"train_{name}"] = {"step_s": t, "batch": bs}
        print(f"train {name:14s} {1000 * t:8.2f} ms/step (batch {bs})")
    if device.type == "cuda":
        report["max_memory_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
        print(f"peak GPU memory {report['max_memory_allocated_mib']:.0f} MiB")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
