"""Run one task per item in a few worker processes, results in input order; a task that runs
past its time limit has its worker killed and replaced.

Its own pool because a ``ProcessPoolExecutor`` cannot kill one hung worker (a decoder stuck on
a damaged file, a read blocked on a named pipe): it can only wait or break the whole pool.
Workers start from a forkserver that preloads the task's module (cheap restarts, no forked
threads), so a script that starts a pool needs the ``if __name__ == "__main__":`` guard.
"""
from __future__ import annotations

import dataclasses
import math
import multiprocessing as mp
import time
from collections import deque
from multiprocessing.connection import wait as wait_ready
from typing import Any, Callable, Iterator, Sequence

import torch


class WorkerStartError(RuntimeError):
    """A worker process ended before it was ready (a script without the main guard)."""


@dataclasses.dataclass(frozen=True)
class WorkerLost:
    """The result of a task whose worker was killed past the time limit (``timed_out``) or
    died on its own (with ``exitcode``)."""

    timed_out: bool
    exitcode: int | None


def _worker_loop(conn: Any, task: Callable, args: tuple) -> None:
    """Worker process: announce readiness, then answer (index, item) tasks until None."""
    torch.set_num_threads(1)   # the processes are the parallelism
    conn.send(("ready", None))
    while True:
        message = conn.recv()
        if message is None:
            return
        i, item = message
        conn.send((i, task(item, *args)))


class _Worker:
    """One worker process with its pipe, current task and deadline."""

    def __init__(self, ctx: Any, task: Callable, args: tuple):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_loop, args=(child, task, args), daemon=True)
        self.proc.start()
        child.close()
        self.ready, self.task, self.deadline = False, None, math.inf

    def submit(self, i: int, item: Any, timeout_s: float) -> None:
        self.conn.send((i, item))
        self.task, self.deadline = i, time.monotonic() + timeout_s

    def lost(self) -> WorkerLost:
        """What became of the current task of a worker that hung or died."""
        return WorkerLost(timed_out=self.proc.is_alive() and time.monotonic() >= self.deadline,
                          exitcode=self.proc.exitcode)

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
        else:
            try:
                self.conn.send(None)
            except OSError:
                self.proc.kill()
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


def _pool_context(task: Callable) -> Any:
    """A forkserver context that preloads the task's module."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([task.__module__])
    return ctx


def run_pool(task: Callable, items: Sequence, args: tuple = (), *, workers: int,
             timeout_s: float) -> Iterator[tuple[int, Any]]:
    """Yield (index, ``task(item, *args)``) in input order, or (index, WorkerLost) for an item
    whose worker hung past ``timeout_s`` or died; ``task`` must be a module-level function."""
    ctx = _pool_context(task)
    if not items:
        return
    pool = [_Worker(ctx, task, args) for _ in range(min(workers, len(items)))]
    todo = deque(enumerate(items))
    done: dict[int, Any] = {}
    next_out = 0
    try:
        while next_out < len(items):
            for w in pool:
                if w.ready and w.task is None and todo:
                    w.submit(*todo.popleft(), timeout_s)
            busy = min((w.deadline for w in pool), default=math.inf)
            wait_s = None if busy == math.inf else max(0.0, busy - time.monotonic())
            ready = wait_ready([w.conn for w in pool] + [w.proc.sentinel for w in pool],
                               timeout=wait_s)
            for j, w in enumerate(pool):
                result = _collect(w, ready)
                if result is None:
                    continue
                if result == "restart":
                    if not w.ready:
                        raise WorkerStartError("a worker process failed to start")
                    if w.task is not None:
                        done[w.task] = w.lost()
                    w.stop(kill=True)
                    pool[j] = _Worker(ctx, task, args)
                    continue
                done[result[0]] = result[1]
            while next_out in done:
                yield next_out, done.pop(next_out)
                next_out += 1
    finally:
        for w in pool:
            w.stop(kill=w.task is not None)


def _collect(w: _Worker, ready: list) -> Any:
    """A finished (index, result), "restart" for a hung or dead worker, or None."""
    if w.conn in ready:
        try:
            msg = w.conn.recv()
        except (EOFError, OSError):
            return "restart"
        if msg[0] == "ready":
            w.ready = True
            return None
        w.task, w.deadline = None, math.inf
        return msg
    if w.proc.sentinel in ready or time.monotonic() >= w.deadline:
        return "restart"
    return None
