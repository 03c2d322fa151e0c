"""The one training loop of the project: tiny bases, the discriminator (text-conditional or not)
and the critic all train through ``train_loop``; each trainer only says how to draw a batch and
compute its loss (``Trainer.step_fn``), what its learning-rate schedule is and what it evaluates.

What the loop does, the same for every trainer:

- resume: the checkpoint in ``Checkpoints.folder`` is used only when its fingerprint (everything
  the run is made from: data, config, seed) matches; it holds the model, the optimiser, the
  generator state, ``extra`` states (e.g. a base's EMA weights) and the last logged figures, so
  a resumed run ends with exactly the weights of an uninterrupted one. With several processes
  the main process reads it and broadcasts it (no shared file system needed);
- data parallelism: with an ``accelerate.Accelerator`` of more than one process, ``prepare``
  wraps the model (DDP) and the gradients are averaged by ``accelerator.backward``; every
  process draws the same global batch from its copy of the generator (``step_fn``'s business,
  its share of the batch given by ``batch_share``) and the checkpoint holds the unwrapped state
  dict, so a run resumes with any process count;
- each step: learning rate ``lr_at(step)``, loss, backward, gradient clipping (``grad_clip``,
  0 = off; the norm is reported as ``grad_norm``), optimiser step, ``after_update`` (EMA), the
  finite-loss check (an error naming the trainer, the step and the knob to turn);
- every ``log_every`` steps (and the last): the window's mean figures, plus ``evaluate()``
  (held-out accuracy) every ``eval_every`` steps, to ``log`` on the main process;
- every ``checkpoint_every`` steps, the last one and at ``stop_at`` (an interruption on
  purpose, for tests): a checkpoint, written by the main process, then a barrier.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from accelerate.utils import broadcast_object_list
from torch import nn

from mmdisco import checkpoint
from mmdisco.distributed import barrier

T = TypeVar("T")


@dataclass(frozen=True)
class Schedule:
    """When the loop logs, evaluates, checkpoints, stops, and how it clips."""

    steps: int
    log_every: int
    checkpoint_every: int
    eval_every: int | None = None       # None: nothing to evaluate
    grad_clip: float = 0.0              # max global gradient norm; 0 = off
    stop_at: int | None = None          # stop there with a checkpoint, as an interruption would

    def due(self, step: int, every: int) -> bool:
        """Whether ``step`` is one of every ``every`` steps, or the last one."""
        return step % every == 0 or step == self.steps


@dataclass
class Trainer:
    """What one trainer gives the loop: its model and optimiser, and how a step goes.

    ``step_fn(trained)`` draws the global batch and returns ``(loss of this process's share,
    stats)``, ``trained`` being ``model`` or its DDP wrapper; ``prepare(model, opt)`` replaces
    ``accelerator.prepare`` (what DDP should wrap); ``reduce_stats``: average the stats over
    processes (equal shares of one batch); ``name`` and ``lr_key`` (the param to lower) make
    the non-finite-loss error."""

    name: str
    model: nn.Module
    opt: torch.optim.Optimizer
    lr_at: Callable[[int], float]
    lr_key: str
    step_fn: Callable[[nn.Module], tuple[torch.Tensor, dict]]
    evaluate: Callable[[], dict[str, float]] | None = None
    after_update: Callable[[int], None] | None = None
    prepare: Callable[[nn.Module, torch.optim.Optimizer], tuple] | None = None
    reduce_stats: bool = False


@dataclass
class Checkpoints:
    """Where a run's checkpoint lives, the fingerprint that makes it resumable, and the state it
    keeps besides the model, the optimiser and the last figures: the generator every draw
    comes from and ``extra``, named ``(get, set)`` states."""

    folder: Path
    fingerprint: str
    generator: torch.Generator
    extra: dict[str, tuple[Callable[[], Any], Callable[[Any], None]]] = field(default_factory=dict)

    def resume(self, trainer: Trainer, accelerator, main: bool) -> tuple[int, dict]:
        """``(step, last figures)`` of the matching checkpoint, its states loaded into the
        trainer's model and optimiser, the generator and ``extra``; ``(0, {})`` without one."""
        state = load_shared(self.folder, self.fingerprint, accelerator, main)
        if state is None:
            return 0, {}
        trainer.model.load_state_dict(state["model"])
        trainer.opt.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        for key, (_, set_state) in self.extra.items():
            set_state(state[key])
        return int(state["step"]), dict(state.get("last", {}))

    def save(self, step: int, model: nn.Module, opt: torch.optim.Optimizer, last: dict,
             main: bool, world: int) -> None:
        """Written by the main process (the unwrapped module's state dict: it loads with any
        process count); the others wait at the barrier."""
        if main:
            checkpoint.save(self.folder, step, {
                "model": model.state_dict(), "optimizer": opt.state_dict(),
                "generator": self.generator.get_state(), "last": last,
                **{key: get() for key, (get, _) in self.extra.items()}}, self.fingerprint)
        if world > 1:
            barrier()


@dataclass
class LoopResult:
    step: int                            # the last step done
    resumed_from: int                    # the step the run resumed at (0: from scratch)
    last: dict[str, float] = field(default_factory=dict)       # the last logged window
    last_eval: dict[str, float] = field(default_factory=dict)  # the last evaluation
    stopped: bool = False                # stopped at stop_at before the end


def load_shared(folder: Path, fp: str, accelerator, main: bool) -> dict | None:
    """The checkpoint as read by the main process, broadcast to the others."""
    state = checkpoint.load(folder, fp) if main else None
    if accelerator is not None and accelerator.num_processes > 1:
        state = broadcast_object_list([state], from_process=0)[0]
    return state


def mean_over_processes(accelerator, stats: dict[str, float]) -> dict[str, float]:
    """Per-process statistics of equal shares averaged: the whole batch's figures."""
    if accelerator is None or accelerator.num_processes == 1:
        return stats
    keys = list(stats)   # the same order on every process (and in the curve's columns)
    t = torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=accelerator.device)
    t = accelerator.reduce(t, reduction="mean").cpu()
    return {k: float(v) for k, v in zip(keys, t)}


def seeded(seed: int, build: Callable[[], T]) -> T:
    """``build()`` under the global RNG seeded with ``seed``, its state restored afterwards: a
    trainer's model starts from a seeded initialisation, the caller's stream left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def batch_share(accelerator, batch_size: int) -> tuple[int, int, slice | None]:
    """``(world, rank, part)``: this process's rows of each global batch (``None``: all)."""
    if accelerator is None or accelerator.num_processes == 1:
        return 1, 0, None
    world, rank = accelerator.num_processes, accelerator.process_index
    if batch_size % world:
        raise ValueError(f"batch_size ({batch_size}) must be a multiple of the {world} processes, "
                         f"so that each takes an equal share of every global batch")
    per = batch_size // world
    return world, rank, slice(rank * per, (rank + 1) * per)


def train_loop(trainer: Trainer, schedule: Schedule, checkpoints: Checkpoints, *,
               accelerator=None, log: Callable[[int, dict], None] | None = None) -> LoopResult:
    """Train ``trainer.model`` in place (see the module docstring); ``log(step, figures)`` is
    called on the main process only."""
    world = 1 if accelerator is None else accelerator.num_processes
    main = accelerator is None or accelerator.process_index == 0
    model = trainer.model
    # 1. resume from the matching checkpoint, if any
    step, last = checkpoints.resume(trainer, accelerator, main)
    result = LoopResult(step=step, resumed_from=step, last=last)
    # 2. several processes: DDP wraps the model (or what trainer.prepare says)
    trained, opt = model, trainer.opt
    if world > 1:
        trained, opt = (trainer.prepare or accelerator.prepare)(model, opt)
    params = [p for p in model.parameters() if p.requires_grad]
    trained.train()
    window: dict[str, list[float]] = {}
    while step < schedule.steps:
        # 3. one update: learning rate, loss, backward, clipping, optimiser step, EMA
        lr = trainer.lr_at(step)
        loss, stats = _update(trainer, trained, opt, params, step, lr, schedule.grad_clip,
                              accelerator if world > 1 else None)
        step += 1
        # 4. the figures (over all processes with reduce_stats), checked finite, into the window
        if trainer.reduce_stats:
            stats = mean_over_processes(accelerator, stats)
        _check_finite(trainer, loss, stats, step, lr)
        for k, v in stats.items():
            window.setdefault(k, []).append(v)
        # 5. every log_every steps and the last: the window's means, maybe an evaluation, log
        if schedule.due(step, schedule.log_every):
            result.last, window = {k: sum(v) / len(v) for k, v in window.items()}, {}
            figures = {"lr": lr, **result.last}
            if trainer.evaluate is not None and schedule.eval_every is not None and \
                    schedule.due(step, schedule.eval_every):
                result.last_eval = _evaluate(trainer, trained)
                figures.update(result.last_eval)
            if log is not None and main:
                log(step, figures)
        # 6. every checkpoint_every steps, the last and at stop_at: a checkpoint
        stopping = schedule.stop_at is not None and step >= schedule.stop_at
        if schedule.due(step, schedule.checkpoint_every) or stopping:
            checkpoints.save(step, model, opt, result.last, main, world)
        if stopping and step < schedule.steps:
            result.stopped = True
            break
    result.step = step
    model.eval()
    return result


def _update(trainer: Trainer, trained: nn.Module, opt: torch.optim.Optimizer,
            params: list[nn.Parameter], step: int, lr: float, grad_clip: float,
            accelerator) -> tuple[torch.Tensor, dict]:
    """One optimiser step at ``lr`` on the batch ``step_fn`` draws: its ``(loss, stats)``.
    ``accelerator`` only with several processes (its backward averages the gradients)."""
    for group in opt.param_groups:
        group["lr"] = lr
    loss, stats = trainer.step_fn(trained)
    opt.zero_grad(set_to_none=True)
    if accelerator is not None:
        accelerator.backward(loss)
    else:
        loss.backward()
    if grad_clip > 0:
        stats["grad_norm"] = float(nn.utils.clip_grad_norm_(params, grad_clip))
    opt.step()
    if trainer.after_update is not None:
        trainer.after_update(step)
    return loss, stats


def _check_finite(trainer: Trainer, loss: torch.Tensor, stats: dict, step: int, lr: float) -> None:
    value = float(loss.detach()) if "loss" not in stats else stats["loss"]
    if not math.isfinite(value):
        raise FloatingPointError(f"{trainer.name} loss became {value} at step {step}; lower "
                                 f"{trainer.lr_key} (the learning rate was {lr:.3g} at this step)")


def _evaluate(trainer: Trainer, trained: nn.Module) -> dict[str, float]:
    trainer.model.eval()   # every process computes it (no collective): the same on all
    figures = trainer.evaluate()
    trained.train()
    return figures


def run_summary(result: LoopResult, *, steps: int, started: float, model: nn.Module,
                evaluate: Callable[[], dict[str, float]], **extra: Any) -> dict:
    """A guide trainer's summary: a run stopped at ``stop_at`` says where; a finished one has
    ``extra``, the parameter count and the last held-out figures (computed again when the run
    resumed at its end, so none were)."""
    if result.stopped:
        return {"steps": steps, "stopped_at": result.step, "resumed_from": result.resumed_from,
                "wall_s": time.perf_counter() - started}
    last_eval = result.last_eval or evaluate()
    return {"steps": steps, "resumed_from": result.resumed_from,
            "wall_s": time.perf_counter() - started, **extra,
            "num_parameters": sum(p.numel() for p in model.parameters()), **last_eval}
