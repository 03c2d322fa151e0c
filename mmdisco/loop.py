"""The one training loop of the project: tiny bases, the discriminator (text-conditional or not)
and the critic all train through ``train_loop``; each trainer only says how to draw a batch and
compute its loss (``step_fn``), what its learning-rate schedule is and what it evaluates.

What the loop does, the same for every trainer:

- resume: the checkpoint in ``checkpoint_dir`` is used only when its fingerprint (everything the
  run is made from: data, config, seed) matches; it holds the model, the optimiser, the
  generator state, ``extra`` states (e.g. a base's EMA weights) and the last logged figures, so
  a resumed run ends with exactly the weights of an uninterrupted one. With several processes
  the main process reads it and broadcasts it (no shared file system needed);
- data parallelism: with an ``accelerate.Accelerator`` of more than one process, ``prepare``
  wraps the model (DDP) and the gradients are averaged by ``accelerator.backward``; every
  process draws the same global batch from its copy of the generator (``step_fn``'s business)
  and the checkpoint holds the unwrapped state dict, so a run resumes with any process count;
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from mmdisco import checkpoint


@dataclass(frozen=True)
class Schedule:
    """When the loop logs, evaluates, checkpoints, and how it clips."""

    steps: int
    log_every: int
    checkpoint_every: int
    eval_every: int | None = None       # None: nothing to evaluate
    grad_clip: float = 0.0              # max global gradient norm; 0 = off


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
        from accelerate.utils import broadcast_object_list

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


def train_loop(*, name: str, model: nn.Module, opt: torch.optim.Optimizer, schedule: Schedule,
               lr_at: Callable[[int], float], step_fn: Callable[[nn.Module], tuple[torch.Tensor, dict]],
               generator: torch.Generator, checkpoint_dir: Path, fingerprint: str,
               lr_key: str, accelerator=None, log: Callable[[int, dict], None] | None = None,
               evaluate: Callable[[], dict[str, float]] | None = None,
               extra: dict[str, tuple[Callable[[], Any], Callable[[Any], None]]] | None = None,
               after_update: Callable[[int], None] | None = None,
               prepare: Callable[[nn.Module, torch.optim.Optimizer], tuple] | None = None,
               reduce_stats: bool = False, stop_at: int | None = None) -> LoopResult:
    """Train ``model`` in place (see the module docstring); ``step_fn(trained)`` draws the
    global batch and returns ``(loss of this process's share, stats)``, ``trained`` being
    ``model`` or its DDP wrapper. ``extra``: named ``(get, set)`` state kept in checkpoints.
    ``prepare(model, opt)`` replaces ``accelerator.prepare`` (what DDP should wrap);
    ``reduce_stats``: average the stats over processes (equal shares of one batch);
    ``lr_key``: the param named in the non-finite-loss error."""
    from mmdisco.distributed import barrier

    world = 1 if accelerator is None else accelerator.num_processes
    main = accelerator is None or accelerator.process_index == 0
    extra = extra or {}
    state = load_shared(checkpoint_dir, fingerprint, accelerator, main)
    step, last = 0, {}
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        for key, (_, set_state) in extra.items():
            set_state(state[key])
        step, last = int(state["step"]), dict(state.get("last", {}))
    result = LoopResult(step=step, resumed_from=step, last=last)
    trained = model
    if world > 1:
        trained, opt = (prepare or accelerator.prepare)(model, opt)
    params = [p for p in model.parameters() if p.requires_grad]
    trained.train()
    window: dict[str, list[float]] = {}
    while step < schedule.steps:
        lr = lr_at(step)
        for group in opt.param_groups:
            group["lr"] = lr
        loss, stats = step_fn(trained)
        opt.zero_grad(set_to_none=True)
        if world > 1:
            accelerator.backward(loss)
        else:
            loss.backward()
        if schedule.grad_clip > 0:
            stats["grad_norm"] = float(nn.utils.clip_grad_norm_(params, schedule.grad_clip))
        opt.step()
        if after_update is not None:
            after_update(step)
        step += 1
        if reduce_stats:
            stats = mean_over_processes(accelerator, stats)
        value = float(loss.detach()) if "loss" not in stats else stats["loss"]
        if not math.isfinite(value):
            raise FloatingPointError(f"{name} loss became {value} at step {step}; lower {lr_key} "
                                     f"(the learning rate was {lr:.3g} at this step)")
        for k, v in stats.items():
            window.setdefault(k, []).append(v)
        if step % schedule.log_every == 0 or step == schedule.steps:
            result.last = {k: sum(v) / len(v) for k, v in window.items()}
            window = {}
            figures = {"lr": lr, **result.last}
            if evaluate is not None and schedule.eval_every is not None and \
                    (step % schedule.eval_every == 0 or step == schedule.steps):
                model.eval()   # every process computes it (no collective): the same on all
                result.last_eval = evaluate()
                trained.train()
                figures.update(result.last_eval)
            if log is not None and main:
                log(step, figures)
        stopping = stop_at is not None and step >= stop_at
        if step % schedule.checkpoint_every == 0 or step == schedule.steps or stopping:
            if main:   # the unwrapped module's state dict: loads with any process count
                checkpoint.save(checkpoint_dir, step, {
                    "model": model.state_dict(), "optimizer": opt.state_dict(),
                    "generator": generator.get_state(), "last": result.last,
                    **{key: get() for key, (get, _) in extra.items()}}, fingerprint)
            if world > 1:
                barrier()
        if stopping and step < schedule.steps:
            result.stopped = True
            break
    result.step = step
    model.eval()
    return result
