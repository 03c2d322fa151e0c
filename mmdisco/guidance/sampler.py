"""Joint sampling of two frozen base models guided by a discriminator (``docs/method.md``, "Sampling").

Notation: at each shared timestep ``t`` the guided noise prediction of modality ``m`` is
``ε̂^m = ε_m(x_t^m, t) + s_m r^m`` with the residual ``r^m = −σ_t^m ∇_{x_t^m} logit D``.

Randomness: one ``torch.Generator`` per modality, ``generators=(gen_a, gen_v)``. Per batch,
``gen_a`` draws the audio initial noise and then, step by step, whatever noise the audio
scheduler draws (DDPM, or DDIM with ``eta > 0``); ``gen_v`` does the same for video. The
discriminator draws nothing, so the draws never depend on ``D`` or the scales, and with
``s_a = s_v = 0`` (or ``D=None``) each modality's output equals ``sample_single`` of its base
with the same generator state and ``batch_size`` — bit for bit. More: with ``s_a = 0`` the
audio alone is unchanged whatever ``s_v`` is, since ``ε_A`` never sees the video.
``modality_generators(seed)`` derives the pair from one master seed.

Per-item seeding (``item_seeds=[s_0, s_1, ...]``, one per sample, instead of ``generator(s)``):
sample ``i`` draws everything — initial noise, the scheduler's noise at every step, restart
noise — from its own generators ``modality_generators(s_i)`` (audio from the first, video from
the second), so its noise depends on its seed only, not on which batch or which process draws
it. A batch's result is then a function of its items' seeds alone: the same batch gives the
same bits wherever it is computed (another call, another process; same hardware and thread
count), which is what sharding whole batches over processes needs (``mmdisco.distributed``).
A different ``batch_size`` computes the same samples only up to float rounding: batched
kernels (convolutions, matmuls) sum in an order chosen by the tensor shapes, and the first
step's ``x̂_0 = (x_T − σ_T ε)/sqrt(ᾱ_T)`` divides that rounding by ``sqrt(ᾱ_T)`` (with the
tiny bases' schedule, float32 samples of two batch sizes differ by up to ~2e-4 on latents in
[−1, 1]; ``tests/test_distributed.py`` bounds it against a float64 run).
``item_seeds(seed, n)`` gives the seeds of items ``0..n-1`` of a run. The properties above
hold per item: unguided, each modality equals ``sample_single`` with the same ``item_seeds``
and ``batch_size``, bit for bit.

Extensions beyond the paper, both off by default and inactive when unguided:
- a ``critic`` (``mmdisco.guidance.critic``) adds its own residual ``c_m r_C^m`` to each ε̂;
- restarts: each of the first ``restart_steps`` steps is repeated ``restarts`` more times, each
  time re-noising the result from ``t_prev`` back to ``t`` with the forward process
  ``x_t = sqrt(ᾱ_t/ᾱ_prev) x_prev + sqrt(1 − ᾱ_t/ᾱ_prev) z`` (``z`` from the modality's own
  generator), so guidance gets more passes where the content is decided.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Sequence, Union

import numpy as np
import torch
from torch import nn

from mmdisco.bases.protocol import BaseModel, check_pair
from mmdisco.guidance.discriminator import residuals

KINDS = ("ddim", "ddpm")
MODALITY_INDEX = {"audio": 0, "video": 1}   # which of modality_generators(s) a modality uses
Gen = Union[torch.Generator, list[torch.Generator]]   # one stream, or one per sample of the batch


def modality_generators(seed: int, device: str | torch.device = "cpu") -> tuple[torch.Generator, torch.Generator]:
    """``(gen_a, gen_v)``: two independent generators derived from one master seed."""
    states = [int(s.generate_state(1, np.uint64)[0]) for s in np.random.SeedSequence(seed).spawn(2)]
    gen_a, gen_v = (torch.Generator(device=device).manual_seed(s) for s in states)
    return gen_a, gen_v


def item_seeds(seed: int, n: int, start: int = 0) -> list[int]:
    """Seeds of items ``start .. start + n - 1`` of a run with master ``seed``: item ``i`` gets
    the ``i``-th child of ``SeedSequence(seed)``, whatever the batching or the process count."""
    return [int(np.random.SeedSequence(seed, spawn_key=(i,)).generate_state(1, np.uint64)[0])
            for i in range(start, start + n)]


def item_generators(seeds: Sequence[int], modality: str,
                    device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One generator per item for ``modality``: the audio or video one of ``modality_generators``."""
    if modality not in MODALITY_INDEX:
        raise ValueError(f"per-item seeds need an audio or video base, got modality {modality!r}")
    k = MODALITY_INDEX[modality]
    return [modality_generators(int(s), device)[k] for s in seeds]


def _randn(shape: tuple[int, ...], generator: Gen, dtype: torch.dtype) -> torch.Tensor:
    """``randn`` on the generator's device; with a list, row ``i`` comes from generator ``i``."""
    if isinstance(generator, list):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for {shape[0]} rows")
        return torch.cat([torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=dtype)
                          for g in generator])
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype)


def guided_eps(eps_a: torch.Tensor, eps_v: torch.Tensor, r_a: torch.Tensor | None,
               r_v: torch.Tensor | None, s_a: float, s_v: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``ε̂ = ε + s·r`` per modality; a zero scale (or no residual) returns ``ε`` itself."""
    out_a = eps_a if s_a == 0 or r_a is None else eps_a + s_a * r_a
    out_v = eps_v if s_v == 0 or r_v is None else eps_v + s_v * r_v
    return out_a, out_v


def constrain(base: BaseModel, eps: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The base's ``constrain_eps`` (e.g. x̂_0 clipping) applied to a guided ε, if it has one.

    Bases whose scheduler would clip x̂_0 must do it here instead: a scheduler that clips x̂_0
    but steps with the unclipped ε (diffusers' default) absorbs the guidance wherever x̂_0 is
    saturated and keeps only the ``sqrt(1 − ᾱ_prev) ε̂`` term, which moves against it.
    """
    fn = getattr(base, "constrain_eps", None)
    return eps if fn is None else fn(eps, x_t, t)


def renoise(x_prev: torch.Tensor, alpha_t: float, alpha_prev: float,
            generator: Gen) -> torch.Tensor:
    """Forward process from ``t_prev`` back to ``t``: ``sqrt(ᾱ_t/ᾱ_prev) x + sqrt(1 − ᾱ_t/ᾱ_prev) z``."""
    ratio = alpha_t / alpha_prev
    z = _randn(tuple(x_prev.shape), generator, x_prev.dtype)
    return math.sqrt(ratio) * x_prev + math.sqrt(max(1.0 - ratio, 0.0)) * z.to(x_prev.device)


# --------------------------------------------------------------------------- shared pieces
def _sync(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check_common(num_samples: int, steps: int, kind: str, batch_size: int | None, eta: float) -> int:
    """Validate the shared arguments; return the effective batch size."""
    if num_samples < 1 or steps < 1:
        raise ValueError(f"num_samples and steps must be >= 1, got {num_samples} and {steps}")
    if kind not in KINDS:
        raise ValueError(f"unknown sampler kind {kind!r}; use one of {KINDS}")
    if kind == "ddpm" and eta != 0:
        raise ValueError("eta only applies to DDIM; DDPM's noise level is fixed by its scheduler")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (or None for one batch), got {batch_size}")
    return batch_size or num_samples


def _check_cond(cond: torch.Tensor | None, num_samples: int, name: str) -> None:
    """A condition must carry one row per sample."""
    if cond is not None and cond.shape[0] != num_samples:
        raise ValueError(f"{name} has {cond.shape[0]} rows; it needs one per sample ({num_samples})")


def _scheduler(base: BaseModel, kind: str, steps: int):
    """A fresh scheduler of the base with its timesteps set."""
    scheduler = base.make_scheduler(kind)
    scheduler.set_timesteps(steps)
    return scheduler


def _init_noise(base: BaseModel, scheduler, n: int, generator: Gen,
                device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Initial latents for ``n`` samples, drawn on the generator's device."""
    x = _randn((n, *base.latent_shape), generator, dtype)
    return x.to(device) * scheduler.init_noise_sigma


def _step(scheduler, kind: str, eps: torch.Tensor, t: torch.Tensor, x: torch.Tensor,
          generator: Gen, eta: float) -> torch.Tensor:
    """One scheduler update ``x_t → x_{t−1}`` with noise (if any) from ``generator`` (a list:
    row ``i`` from generator ``i``, as diffusers' ``randn_tensor`` does)."""
    if kind == "ddim":
        return scheduler.step(eps, t, x, eta=eta, generator=generator).prev_sample
    return scheduler.step(eps, t, x, generator=generator).prev_sample


def _item_seeds(seeds: Sequence[int] | None, num_samples: int) -> list[int] | None:
    if seeds is None:
        return None
    seeds = [int(s) for s in seeds]
    if len(seeds) != num_samples:
        raise ValueError(f"item_seeds has {len(seeds)} seeds; it needs one per sample ({num_samples})")
    return seeds


def _rows(cond: torch.Tensor | None, lo: int, hi: int, device: torch.device) -> torch.Tensor | None:
    return None if cond is None else cond[lo:hi].to(device)


def _new_timing() -> dict[str, float]:
    return {"base_s": 0.0, "guidance_s": 0.0, "step_s": 0.0, "total_s": 0.0,
            "base_passes": 0, "guidance_passes": 0}


# --------------------------------------------------------------------------- samplers
def sample_single(base: BaseModel, *, num_samples: int, steps: int,
                  generator: torch.Generator | None = None,
                  kind: str = "ddim", batch_size: int | None = None, cond: torch.Tensor | None = None,
                  eta: float = 0.0, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32,
                  item_seeds: Sequence[int] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Independent sampling of one base model; ``(x_0 [num_samples, *latent_shape], timing)``.

    Randomness from ``generator`` (consumed batch after batch) or, instead, ``item_seeds`` (one
    per sample: the sample's own stream, see the module docstring).
    """
    batch_size = _check_common(num_samples, steps, kind, batch_size, eta)
    _check_cond(cond, num_samples, "cond")
    seeds = _item_seeds(item_seeds, num_samples)
    if (generator is None) == (seeds is None):
        raise ValueError("give either generator or item_seeds (one per sample)")
    device = torch.device(device)
    scheduler = _scheduler(base, kind, steps)
    timing, start, outputs = _new_timing(), time.perf_counter(), []
    for lo in range(0, num_samples, batch_size):
        hi = min(lo + batch_size, num_samples)
        gen = generator if seeds is None else item_generators(seeds[lo:hi], base.modality)
        x = _init_noise(base, scheduler, hi - lo, gen, device, dtype)
        c = _rows(cond, lo, hi, device)
        for t in scheduler.timesteps:
            t_batch = torch.full((hi - lo,), int(t), device=device, dtype=torch.long)
            tick = time.perf_counter()
            with torch.no_grad():
                eps = base.eps(x, t_batch, c)
            _sync(device)
            timing["base_s"] += time.perf_counter() - tick
            timing["base_passes"] += 1
            tick = time.perf_counter()
            x = _step(scheduler, kind, eps, t, x, gen, eta)
            _sync(device)
            timing["step_s"] += time.perf_counter() - tick
        outputs.append(x)
    timing["total_s"] = time.perf_counter() - start
    return torch.cat(outputs), timing


def sample_joint(base_a: BaseModel, base_v: BaseModel, D: nn.Module | None, *, num_samples: int,
                 steps: int, generators: tuple[torch.Generator, torch.Generator] | None = None,
                 kind: str = "ddim",
                 scale_a: float = 1.0, scale_v: float = 1.0, batch_size: int | None = None,
                 cond_a: torch.Tensor | None = None, cond_v: torch.Tensor | None = None,
                 eta: float = 0.0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 critic: nn.Module | None = None, critic_scales: tuple[float, float] = (0.0, 0.0),
                 restarts: int = 0, restart_steps: int = 0,
                 callback: Callable[[dict], None] | None = None,
                 item_seeds: Sequence[int] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Both bases in lockstep, guided by ``D``'s residuals; ``(a_0, v_0, timing)``.

    ``critic`` and ``critic_scales = (c_a, c_v)`` add the critic's residuals; ``restarts`` extra
    re-noised passes are made over each of the first ``restart_steps`` steps (only when some
    guidance is active). ``callback`` receives, after each step, a dict with
    ``i, t, a_t, v_t, eps_a, eps_v, r_a, r_v`` (the latents before the step; ``r`` is the summed,
    scaled residual actually added, ``None`` when unguided).

    Randomness from ``generators = (gen_a, gen_v)`` or, instead, ``item_seeds`` (one per sample).
    """
    batch_size = _check_common(num_samples, steps, kind, batch_size, eta)
    check_pair(base_a, base_v)
    if base_a.modality != "audio" or base_v.modality != "video":
        raise ValueError(f"sample_joint takes the audio base first and the video base second; got "
                         f"{base_a.modality!r} and {base_v.modality!r}")
    seeds = _item_seeds(item_seeds, num_samples)
    if (generators is None) == (seeds is None):
        raise ValueError("give either generators=(gen_a, gen_v) or item_seeds (one per sample)")
    if generators is not None and len(generators) != 2:
        raise ValueError("generators must be a pair (gen_a, gen_v); see modality_generators(seed)")
    if not all(math.isfinite(x) for x in (scale_a, scale_v, *critic_scales)):
        raise ValueError(f"guidance scales must be finite, got {scale_a}, {scale_v} and critic "
                         f"{tuple(critic_scales)}")
    if restarts < 0 or restart_steps < 0:
        raise ValueError(f"restarts and restart_steps must be >= 0, got {restarts} and {restart_steps}")
    _check_cond(cond_a, num_samples, "cond_a")
    _check_cond(cond_v, num_samples, "cond_v")
    gen_a, gen_v = generators if generators is not None else (None, None)
    device = torch.device(device)
    sched_a, sched_v = _scheduler(base_a, kind, steps), _scheduler(base_v, kind, steps)
    if not torch.equal(sched_a.timesteps, sched_v.timesteps):
        raise ValueError("the two bases' schedulers give different timestep sequences for "
                         f"{steps} steps; give both the same timestep_spacing and steps_offset")
    guides = [(m, sa, sv) for m, sa, sv in ((D, scale_a, scale_v), (critic, *critic_scales))
              if m is not None and (sa != 0 or sv != 0)]
    alphas_a, alphas_v = base_a.alphas_cumprod(), base_v.alphas_cumprod()
    timesteps = [int(t) for t in sched_a.timesteps]
    timing, start, out_a, out_v = _new_timing(), time.perf_counter(), [], []

    def guided_update(t: int, a: torch.Tensor, v: torch.Tensor, ca, cv, gen_a: Gen, gen_v: Gen):
        """One guided step from ``t``: (a_next, v_next, eps_a, eps_v, r_a, r_v)."""
        t_batch = torch.full((len(a),), t, device=device, dtype=torch.long)
        # 1. base predictions (frozen, no graph)
        tick = time.perf_counter()
        with torch.no_grad():
            eps_a, eps_v = base_a.eps(a, t_batch, ca), base_v.eps(v, t_batch, cv)
        _sync(device)
        timing["base_s"] += time.perf_counter() - tick
        timing["base_passes"] += 2
        # 2. residuals: one forward + one input-gradient pass per guiding module
        r_a = r_v = None
        for module, s_a, s_v in guides:
            tick = time.perf_counter()
            g_a, g_v = residuals(module, a, v, t_batch, alphas_a, alphas_v)
            _sync(device)
            timing["guidance_s"] += time.perf_counter() - tick
            timing["guidance_passes"] += 1
            if s_a != 0:  # a zero scale adds nothing at all (bit-identical ε)
                r_a = s_a * g_a if r_a is None else r_a + s_a * g_a
            if s_v != 0:
                r_v = s_v * g_v if r_v is None else r_v + s_v * g_v
        # 3. guided ε (kept inside the base's own x̂_0 range) and each scheduler's update
        hat_a, hat_v = guided_eps(eps_a, eps_v, r_a, r_v, 1.0, 1.0)
        if r_a is not None:
            hat_a = constrain(base_a, hat_a, a, t_batch)
        if r_v is not None:
            hat_v = constrain(base_v, hat_v, v, t_batch)
        tick = time.perf_counter()
        a_next = _step(sched_a, kind, hat_a, t, a, gen_a, eta)
        v_next = _step(sched_v, kind, hat_v, t, v, gen_v, eta)
        _sync(device)
        timing["step_s"] += time.perf_counter() - tick
        return a_next, v_next, eps_a, eps_v, r_a, r_v

    for lo in range(0, num_samples, batch_size):
        hi = min(lo + batch_size, num_samples)
        if seeds is not None:   # one stream per sample and modality
            gen_a, gen_v = (item_generators(seeds[lo:hi], m) for m in ("audio", "video"))
        a = _init_noise(base_a, sched_a, hi - lo, gen_a, device, dtype)   # audio noise first,
        v = _init_noise(base_v, sched_v, hi - lo, gen_v, device, dtype)   # then video noise
        ca, cv = _rows(cond_a, lo, hi, device), _rows(cond_v, lo, hi, device)
        for i, t in enumerate(timesteps):
            repeats = restarts if guides and i < restart_steps and i + 1 < len(timesteps) else 0
            for r in range(repeats + 1):
                a_next, v_next, eps_a, eps_v, r_a, r_v = guided_update(t, a, v, ca, cv,
                                                                       gen_a, gen_v)
                if r < repeats:  # back to t and do the step again
                    t_prev = timesteps[i + 1]
                    a = renoise(a_next, float(alphas_a[t]), float(alphas_a[t_prev]), gen_a)
                    v = renoise(v_next, float(alphas_v[t]), float(alphas_v[t_prev]), gen_v)
            if callback is not None:
                callback({"i": i, "t": t, "a_t": a, "v_t": v, "eps_a": eps_a, "eps_v": eps_v,
                          "r_a": r_a, "r_v": r_v})
            a, v = a_next, v_next
        out_a.append(a)
        out_v.append(v)
    timing["total_s"] = time.perf_counter() - start
    return torch.cat(out_a), torch.cat(out_v), timing
