"""Frozen base models sampled in lockstep, guided by discriminators (``docs/method.md``, "Sampling").

At each shared timestep ``t`` modality ``m`` steps with ``ε̂^m = ε_m(x_t^m, t) + Σ_g s_g^m r_g^m``,
one residual ``r_g^m = −σ_t^m ∇_{x_t^m} logit_g`` per active ``Guide``. The pieces, in
k-diffusion's shape: ``GuidedEps`` (bases + guides + schedules → the guided ε̂ of each
modality), one lockstep loop over the timesteps (restarts included), and two entry points with
one signature, ``sample_single`` (one base, no guides) and ``sample_joint`` (audio and video
bases, guides). ``StepTimer`` times the passes, only when one is given.

Randomness: one generator per modality (``generators=(gen_a, gen_v)``, e.g. from
``mmdisco.seeds.modality_generators``) draws that modality's initial noise, then every noise
draw of its scheduler (DDPM, DDIM with ``eta > 0``) and of its restarts. Guides draw nothing.
Per-item seeding (``item_seeds``, one seed per sample, instead of generators): sample ``i``
draws from its own pair ``modality_generators(s_i)``, so a batch's result is a function of its
items' seeds alone, bit for bit wherever it is computed (same hardware and thread count). Another
``batch_size`` gives the same samples only up to float rounding (batched kernels sum in an
order chosen by the shapes).

Bit-identity: a guide with both scales 0 (or no module) is dropped, and a zero scale adds
nothing to its modality (ε and ``constrain`` untouched). Unguided, each modality of
``sample_joint`` equals ``sample_single`` of its base with the same generator state or item
seeds and ``batch_size``, bit for bit; with ``s_a = 0`` the audio is unchanged whatever ``s_v``.

Restarts (an extension, only while some guide is active): each of the first ``restart_steps``
steps is repeated ``restarts`` more times, re-noising the result from ``t_prev`` back to ``t``
with the forward process (``renoise``), noise from the modality's own generator.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence, Union

import torch
from torch import nn

from mmdisco.bases.protocol import BaseModel, check_pair
from mmdisco.guidance.discriminator import residuals
from mmdisco.seeds import item_generators

SAMPLER_KINDS = ("ddim", "ddpm")
Gen = Union[torch.Generator, list[torch.Generator]]   # one stream, or one per sample of the batch
Callback = Callable[[dict], None]


@dataclass(frozen=True)
class SamplerSettings:
    """How to step: scheduler kind, number of steps, DDIM's ``eta``, and the restarts of the
    leading steps (used only while some guide is active)."""
    steps: int
    kind: str = "ddim"
    eta: float = 0.0
    restarts: int = 0
    restart_steps: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.kind not in SAMPLER_KINDS:
            raise ValueError(f"unknown sampler kind {self.kind!r}; use one of {SAMPLER_KINDS}")
        if self.kind == "ddpm" and self.eta != 0:
            raise ValueError("eta only applies to DDIM; DDPM's noise level is fixed by its scheduler")
        if self.restarts < 0 or self.restart_steps < 0:
            raise ValueError(f"restarts and restart_steps must be >= 0, got {self.restarts} and "
                             f"{self.restart_steps}")


@dataclass(frozen=True)
class Guide:
    """A guiding module (``forward(a, v, t) -> logit``: a discriminator, a critic, a ``CFGGuide``)
    and the weights of its residual on the audio and on the video."""
    module: nn.Module | None
    scale_a: float = 1.0
    scale_v: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale_a) and math.isfinite(self.scale_v)):
            raise ValueError(f"guidance scales must be finite, got {self.scale_a} and {self.scale_v}")

    @property
    def active(self) -> bool:
        return self.module is not None and (self.scale_a != 0 or self.scale_v != 0)


@dataclass
class StepTimer:
    """Opt-in wall-clock accounting of sampling: seconds in base passes, guidance passes (forward
    + input gradient of one guide), scheduler steps and in all, and the pass counts. Each phase
    ends with a CUDA synchronisation, which stalls the GPU's queue, hence off unless given."""
    base_s: float = 0.0
    guidance_s: float = 0.0
    step_s: float = 0.0
    total_s: float = 0.0
    base_passes: int = 0
    guidance_passes: int = 0

    @contextlib.contextmanager
    def phase(self, name: str, device: torch.device, passes: int = 0) -> Iterator[None]:
        """Add the seconds of the block (queued GPU work included) to ``<name>_s``."""
        tick = time.perf_counter()
        yield
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        setattr(self, f"{name}_s", getattr(self, f"{name}_s") + time.perf_counter() - tick)
        if passes:
            setattr(self, f"{name}_passes", getattr(self, f"{name}_passes") + passes)

    def add(self, other: StepTimer) -> None:
        """Add another run's passes and their seconds (not its total: that is wall-clock time)."""
        self.base_s += other.base_s
        self.guidance_s += other.guidance_s
        self.step_s += other.step_s
        self.base_passes += other.base_passes
        self.guidance_passes += other.guidance_passes

    def per_pass_cost(self) -> dict:
        """Seconds per base pass and per guidance pass and, when guided, the cost of a guided
        joint step over an unguided one, from this run alone: a joint step is 2 base passes
        (+ one pass per active guide)."""
        out = {"total_s": round(self.total_s, 3),
               "base_pass_s": self.base_s / max(self.base_passes, 1),
               "base_passes": self.base_passes, "guidance_passes": self.guidance_passes}
        if self.guidance_passes:
            out["guidance_pass_s"] = self.guidance_s / self.guidance_passes
            per_step = self.guidance_passes / (self.base_passes / 2)
            out["guided_step_cost_ratio"] = (2 * out["base_pass_s"] + per_step * out["guidance_pass_s"]
                                             ) / (2 * out["base_pass_s"])
        return out


def _phase(timer: StepTimer | None, name: str, device: torch.device, passes: int = 0):
    return contextlib.nullcontext() if timer is None else timer.phase(name, device, passes)


def constrain(base: BaseModel, eps: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The base's ``constrain_eps`` (e.g. x̂_0 clipping) applied to a guided ε, if it has one.

    Bases whose scheduler would clip x̂_0 must do it here instead: a scheduler that clips x̂_0
    but steps with the unclipped ε (diffusers' default) absorbs the guidance wherever x̂_0 is
    saturated and keeps only the ``sqrt(1 − ᾱ_prev) ε̂`` term, which moves against it.
    """
    fn = getattr(base, "constrain_eps", None)
    return eps if fn is None else fn(eps, x_t, t)


def _randn(shape: tuple[int, ...], generator: Gen, dtype: torch.dtype) -> torch.Tensor:
    """``randn`` on the generator's device; with a list, row ``i`` comes from generator ``i``."""
    if isinstance(generator, list):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for {shape[0]} rows")
        return torch.cat([torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=dtype)
                          for g in generator])
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype)


def renoise(x_prev: torch.Tensor, alpha_t: float, alpha_prev: float,
            generator: Gen) -> torch.Tensor:
    """Forward process from ``t_prev`` back to ``t``: ``sqrt(ᾱ_t/ᾱ_prev) x + sqrt(1 − ᾱ_t/ᾱ_prev) z``."""
    ratio = alpha_t / alpha_prev
    z = _randn(tuple(x_prev.shape), generator, x_prev.dtype)
    return math.sqrt(ratio) * x_prev + math.sqrt(max(1.0 - ratio, 0.0)) * z.to(x_prev.device)


# --------------------------------------------------------------------------- the model wrapper
class GuidedEps:
    """Bases (audio first when guided) and their active guides → per modality the base's ε, the
    summed scaled residual (``None`` when nothing was added) and the guided ε̂, kept inside the
    base's own x̂_0 range by ``constrain``."""

    def __init__(self, bases: Sequence[BaseModel], guides: Sequence[Guide] = ()):
        self.bases = tuple(bases)
        self.guides = tuple(g for g in guides if g.active)
        if self.guides and len(self.bases) != 2:
            raise ValueError("guides need an audio and a video base")
        self.alphas = tuple(b.alphas_cumprod() for b in self.bases)

    def __call__(self, xs: tuple[torch.Tensor, ...], t: int, conds: tuple, timer: StepTimer | None = None):
        """``(eps, r, eps_hat)`` at the latents ``xs`` and timestep ``t``, each a tuple per base."""
        device = xs[0].device
        t_batch = torch.full((len(xs[0]),), t, device=device, dtype=torch.long)
        with _phase(timer, "base", device, passes=len(self.bases)), torch.no_grad():
            eps = tuple(b.eps(x, t_batch, c) for b, x, c in zip(self.bases, xs, conds))
        r: list[torch.Tensor | None] = [None] * len(self.bases)
        for guide in self.guides:   # one forward + one input-gradient pass each
            with _phase(timer, "guidance", device, passes=1):
                g = residuals(guide.module, *xs, t_batch, *self.alphas)
            for m, s in enumerate((guide.scale_a, guide.scale_v)):
                if s != 0:   # a zero scale adds nothing at all (bit-identical ε)
                    r[m] = s * g[m] if r[m] is None else r[m] + s * g[m]
        hat = tuple(e if r_m is None else constrain(b, e + r_m, x, t_batch)
                    for b, e, r_m, x in zip(self.bases, eps, r, xs))
        return eps, tuple(r), hat


# --------------------------------------------------------------------------- the loop
def _schedulers(bases: Sequence[BaseModel], settings: SamplerSettings) -> tuple[list, list[int]]:
    """A fresh scheduler per base, and the timestep sequence they all share."""
    schedulers = [b.make_scheduler(settings.kind) for b in bases]
    for s in schedulers:
        s.set_timesteps(settings.steps)
    if any(not torch.equal(s.timesteps, schedulers[0].timesteps) for s in schedulers[1:]):
        raise ValueError("the bases' schedulers give different timestep sequences for "
                         f"{settings.steps} steps; give both the same timestep_spacing and steps_offset")
    return schedulers, [int(t) for t in schedulers[0].timesteps]


def _step(scheduler, settings: SamplerSettings, eps: torch.Tensor, t: int, x: torch.Tensor,
          generator: Gen) -> torch.Tensor:
    """One scheduler update ``x_t → x_{t−1}`` with noise (if any) from ``generator`` (a list:
    row ``i`` from generator ``i``, as diffusers' ``randn_tensor`` does)."""
    if settings.kind == "ddim":
        return scheduler.step(eps, t, x, eta=settings.eta, generator=generator).prev_sample
    return scheduler.step(eps, t, x, generator=generator).prev_sample


def _lockstep(model: GuidedEps, schedulers: list, timesteps: list[int], settings: SamplerSettings,
              xs: tuple, conds: tuple, gens: tuple, timer: StepTimer | None,
              callback: Callback | None) -> tuple[torch.Tensor, ...]:
    """One batch over all timesteps, every base stepping from the same ``t``; the leading steps
    are repeated after re-noising when guided. ``callback`` sees each step once, with the
    latents before it (``x``), the bases' ``eps`` and the residuals ``r`` actually added."""
    for i, t in enumerate(timesteps):
        restarted = bool(model.guides) and i < settings.restart_steps and i + 1 < len(timesteps)
        repeats = settings.restarts if restarted else 0
        for k in range(repeats + 1):
            eps, r, hat = model(xs, t, conds, timer)
            with _phase(timer, "step", xs[0].device):
                nxt = tuple(_step(s, settings, e, t, x, g)
                            for s, e, x, g in zip(schedulers, hat, xs, gens))
            if k < repeats:   # back to t and do the step again
                t_prev = timesteps[i + 1]
                xs = tuple(renoise(x, float(al[t]), float(al[t_prev]), g)
                           for x, al, g in zip(nxt, model.alphas, gens))
        if callback is not None:
            callback({"i": i, "t": t, "x": xs, "eps": eps, "r": r})
        xs = nxt
    return xs


def _sample(model: GuidedEps, settings: SamplerSettings, *, num_samples: int,
            generators: tuple | None, item_seeds: Sequence[int] | None, conds: tuple,
            batch_size: int | None, device: str | torch.device, dtype: torch.dtype,
            timer: StepTimer | None, callback: Callback | None) -> tuple[torch.Tensor, ...]:
    """The batch loop both samplers share: per batch, each base's initial noise (in base order)
    from its own stream, then the lockstep loop; outputs concatenated in item order."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (or None for one batch), got {batch_size}")
    seeds = None if item_seeds is None else [int(s) for s in item_seeds]
    if seeds is not None and len(seeds) != num_samples:
        raise ValueError(f"item_seeds has {len(seeds)} seeds; it needs one per sample ({num_samples})")
    for base, cond in zip(model.bases, conds):
        if cond is not None and cond.shape[0] != num_samples:
            raise ValueError(f"the {base.modality} condition has {cond.shape[0]} rows; it needs "
                             f"one per sample ({num_samples})")
    device, batch_size = torch.device(device), batch_size or num_samples
    schedulers, timesteps = _schedulers(model.bases, settings)
    outputs = []
    with _phase(timer, "total", device):
        for lo in range(0, num_samples, batch_size):
            hi = min(lo + batch_size, num_samples)
            gens = generators if seeds is None else tuple(
                item_generators(seeds[lo:hi], b.modality) for b in model.bases)
            xs = tuple(_randn((hi - lo, *b.latent_shape), g, dtype).to(device) * s.init_noise_sigma
                       for b, s, g in zip(model.bases, schedulers, gens))
            cs = tuple(None if c is None else c[lo:hi].to(device) for c in conds)
            outputs.append(_lockstep(model, schedulers, timesteps, settings, xs, cs, gens, timer,
                                     callback))
    return tuple(torch.cat(column) for column in zip(*outputs))


# --------------------------------------------------------------------------- samplers
def sample_single(base: BaseModel, settings: SamplerSettings, *, num_samples: int,
                  generator: torch.Generator | None = None, item_seeds: Sequence[int] | None = None,
                  cond: torch.Tensor | None = None, batch_size: int | None = None,
                  device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                  timer: StepTimer | None = None, callback: Callback | None = None) -> torch.Tensor:
    """Independent sampling of one base model: ``x_0 [num_samples, *latent_shape]``.

    Randomness from ``generator`` (consumed batch after batch) or, instead, ``item_seeds`` (one
    per sample); ``cond``: one row per sample.
    """
    if (generator is None) == (item_seeds is None):
        raise ValueError("give either generator or item_seeds (one per sample)")
    (x,) = _sample(GuidedEps([base]), settings, num_samples=num_samples,
                   generators=None if generator is None else (generator,), item_seeds=item_seeds,
                   conds=(cond,), batch_size=batch_size, device=device, dtype=dtype, timer=timer,
                   callback=callback)
    return x


def sample_joint(base_a: BaseModel, base_v: BaseModel, settings: SamplerSettings, *,
                 num_samples: int, guides: Sequence[Guide] = (),
                 generators: tuple[torch.Generator, torch.Generator] | None = None,
                 item_seeds: Sequence[int] | None = None, cond_a: torch.Tensor | None = None,
                 cond_v: torch.Tensor | None = None, batch_size: int | None = None,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 timer: StepTimer | None = None,
                 callback: Callback | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Both bases in lockstep, each modality's ε guided by the ``guides``' residuals: ``(a_0, v_0)``.

    Randomness from ``generators = (gen_a, gen_v)`` or, instead, ``item_seeds`` (one per sample).
    ``callback`` gets, once per step, ``{"i", "t", "x", "eps", "r"}``: per modality the latents
    before the step, the base's ε and the summed scaled residual added (``None`` if none).
    """
    check_pair(base_a, base_v)
    if base_a.modality != "audio" or base_v.modality != "video":
        raise ValueError(f"sample_joint takes the audio base first and the video base second; got "
                         f"{base_a.modality!r} and {base_v.modality!r}")
    if (generators is None) == (item_seeds is None):
        raise ValueError("give either generators=(gen_a, gen_v) or item_seeds (one per sample)")
    if generators is not None and len(generators) != 2:
        raise ValueError("generators must be a pair (gen_a, gen_v); see modality_generators(seed)")
    a, v = _sample(GuidedEps([base_a, base_v], guides), settings, num_samples=num_samples,
                   generators=None if generators is None else tuple(generators),
                   item_seeds=item_seeds, conds=(cond_a, cond_v), batch_size=batch_size,
                   device=device, dtype=dtype, timer=timer, callback=callback)
    return a, v
