"""Several processes (GPUs, hosts) over Hugging Face Accelerate; one process needs nothing.

Launch any stage with ``accelerate launch [--num_processes N ...] -m mmdisco.cli STAGE ...`` or
``torchrun --nproc_per_node N -m mmdisco.cli STAGE ...`` (``docs/scaling.md``). Without a
launcher this module sees one process — rank 0 of 1, the main one — and every helper is a
no-op: no process group, no collective, the code paths of a plain run.

What is shared between processes, and how:

- work is split by ``shard`` (items, contiguous) or ``batch_shard`` (whole batches of a batching
  fixed by the caller, strided over ranks). Splitting whole batches keeps every batch the same
  tensor computation whatever the process count, so sampling with per-item seeds gives
  bit-identical outputs with 1 or N processes for the same batch size, on the same hardware
  and thread count. A different batch size changes the batches' shapes, hence the summation
  order of batched kernels: the same samples up to float rounding, not the same bits;
- results come back by a COLLECTIVE gather (``gather_items``: ``accelerate.utils.gather``, i.e.
  ``torch.distributed.all_gather``, of rows padded to the longest shard, plus their item
  indices), so every rank ends up with the whole result in item order. No shard files: nothing
  needs a filesystem shared between hosts, nothing is left behind by a crash, and outputs are
  small next to the models (a fake bank is tens of MB). Only the main process then writes
  (``mmdisco.io.atomic_path``), logs to MLflow and saves checkpoints;
- ``barrier`` (``wait_for_everyone``) orders writes before reads across ranks.

Accelerate is imported inside the helpers that use it: a plain single-process run never
needs it, and it adds about a second to every command's start.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Sequence

import torch

from mmdisco import tracking
from mmdisco.devices import resolve_device


def cpu_only() -> bool:
    """Whether the processes run on the CPU (gloo): asked for (``accelerate launch --cpu``,
    ``ACCELERATE_USE_CPU``) or no CUDA device. Accelerate needs the flag to group CPU processes."""
    from accelerate.utils import parse_flag_from_env

    return parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()


def state():
    """Accelerate's process state (a shared singleton: creating it twice is free)."""
    from accelerate import PartialState

    return PartialState(cpu=cpu_only())


def launched() -> bool:
    """Whether a launcher (torchrun, accelerate launch) started this process with others."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def world_size() -> int:
    return state().num_processes if launched() else 1


def rank() -> int:
    return state().process_index if launched() else 0


def is_main() -> bool:
    return rank() == 0


def device(preference: str | torch.device = "auto") -> torch.device:
    """Where this rank computes: Accelerate's device (``cuda:<local rank>`` on GPUs, one per
    rank) when launched with several processes; else ``preference`` (the ``device`` param):
    ``auto`` is the first GPU when there is one and the CPU otherwise, ``cpu`` / ``cuda[:N]``
    as named."""
    if launched():
        return state().device
    return resolve_device(preference)


def shard(n_items: int, *, rank_: int | None = None, world: int | None = None) -> range:
    """This rank's contiguous slice of ``range(n_items)``: disjoint, covering, deterministic,
    sizes differing by at most one (the first ``n_items % world`` ranks take one more)."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    if not 0 <= r < w:
        raise ValueError(f"rank {r} is outside a world of {w} processes")
    base, extra = divmod(n_items, w)
    lo = r * base + min(r, extra)
    return range(lo, lo + base + (r < extra))


def batches(n_items: int, batch_size: int) -> list[tuple[int, int]]:
    """The global batches ``[lo, hi)`` of ``range(n_items)``: fixed by ``batch_size`` only."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [(lo, min(lo + batch_size, n_items)) for lo in range(0, n_items, batch_size)]


def batch_shard(n_items: int, batch_size: int, *, rank_: int | None = None,
                world: int | None = None) -> list[tuple[int, int]]:
    """This rank's global batches: batch ``b`` goes to rank ``b mod world`` (strided, so the
    smaller last batch does not always land on the same rank)."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    return batches(n_items, batch_size)[r::w]


def barrier() -> None:
    """Every rank waits here for the others (nothing to wait for in one process).

    CPU processes (gloo) call ``torch.distributed.barrier()`` themselves: Accelerate's
    ``wait_for_everyone`` passes ``device_ids=[local rank]``, which fails on a host that has
    fewer CUDA devices than CPU processes ("invalid device ordinal")."""
    if world_size() == 1:
        return
    if state().device.type == "cpu":
        torch.distributed.barrier()
    else:
        state().wait_for_everyone()


def gather_items(local: torch.Tensor, indices: Sequence[int] | torch.Tensor,
                 total: int) -> torch.Tensor:
    """Rows computed by every rank, put back in item order: ``out[indices[j]] = local[j]``.

    Each item of ``range(total)`` must come from exactly one rank. Every rank gets the whole
    ``[total, ...]`` result on the CPU. A rank may contribute no rows (then any row shape).
    """
    indices = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
    if len(indices) != len(local):
        raise ValueError(f"{len(local)} rows but {len(indices)} indices")
    if world_size() == 1:
        out = local.new_empty((total, *local.shape[1:]))
        seen = torch.zeros(total, dtype=torch.long)
        seen.index_add_(0, indices, torch.ones_like(indices))
        if not bool((seen == 1).all()):
            raise ValueError("gather_items: every item must be given exactly once")
        out[indices] = local
        return out
    from accelerate.utils import gather, gather_object

    meta = gather_object([(len(local), tuple(local.shape[1:]), local.dtype)])
    n_max = max(m[0] for m in meta)
    row_shape, dtype = next(((s, d) for n, s, d in meta if n),
                            (tuple(local.shape[1:]), local.dtype))
    if any(n and (s, d) != (row_shape, dtype) for n, s, d in meta):
        raise ValueError(f"gather_items: ranks gave rows of different shapes or dtypes: {meta}")
    dev = state().device
    padded = torch.zeros((n_max, *row_shape), dtype=dtype, device=dev)
    if len(local):
        padded[:len(local)] = local.to(dev)
    idx = torch.full((n_max,), -1, dtype=torch.long, device=dev)
    idx[:len(indices)] = indices.to(dev)
    rows, idx = gather(padded).cpu(), gather(idx).cpu()
    keep = idx >= 0
    rows, idx = rows[keep], idx[keep]
    if len(idx) != total or not torch.equal(idx.sort().values, torch.arange(total)):
        raise ValueError(f"gather_items: the ranks gave items {idx.sort().values.tolist()[:8]}…, "
                         f"not each of range({total}) once")
    out = torch.empty((total, *row_shape), dtype=dtype)
    out[idx] = rows
    return out


def map_batches(fn, n_items: int, batch_size: int) -> tuple[list[torch.Tensor], list]:
    """Run ``fn(lo, hi) -> (tensors, info)`` on this rank's global batches; gather each tensor
    output in item order on every rank. Returns ``(tensors, infos)``: ``infos`` holds every
    rank's per-batch ``info`` (e.g. timings), main rank first."""
    outs: list[list[torch.Tensor]] = []
    infos, indices = [], []
    for lo, hi in batch_shard(n_items, batch_size):
        tensors, info = fn(lo, hi)
        outs.append(list(tensors))
        infos.append(info)
        indices.extend(range(lo, hi))
    n_out = len(outs[0]) if outs else None
    if world_size() > 1:
        from accelerate.utils import gather_object

        n_out = next(n for n in gather_object([n_out]) if n is not None)
        infos = gather_object(infos)
    merged = []
    for k in range(n_out):
        local = torch.cat([o[k] for o in outs]) if outs else torch.empty(0)
        merged.append(gather_items(local, indices, n_items))
    return merged, infos


def accelerator(**kwargs):
    """An ``accelerate.Accelerator`` when launched with several processes, else ``None`` (the
    trainers then run exactly their one-process code, with nothing wrapped)."""
    if world_size() == 1:
        return None
    from accelerate import Accelerator

    return Accelerator(**{"cpu": cpu_only(), **kwargs})


def to_device(model, dev: torch.device | None = None):
    """``model`` on this rank's device (left alone on the CPU, where it already is)."""
    dev = device() if dev is None else dev
    return model if dev.type == "cpu" else model.to(dev)


@contextlib.contextmanager
def main_run(stage: str, params: dict | None = None) -> Iterator:
    """The stage's MLflow run on the main process (``tracking.stage_run``); ``None`` elsewhere,
    so that N processes log one run, not N."""
    if not is_main():
        yield None
        return
    with tracking.stage_run(stage, params) as run:
        yield run
