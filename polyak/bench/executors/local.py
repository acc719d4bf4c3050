"""The default executor: this machine's ``spawn`` process pool (nothing to install or start).

``workers`` worker processes with one torch thread each (``None``: one per CPU core, or 1 when
a run trains on CUDA); with one worker, or one run, the runs execute in the calling process
(:func:`run_inline`). Workers are ``spawn``-ed (safe with torch), ignore Ctrl-C (the driver
handles it) and only train (:func:`~polyak.bench.executors.execute_job`); at most ``workers``
runs are in flight, each claimed from the runner's queue when a worker is free
(:func:`run_pool`). A worker that dies (killed, out of memory) fails its run, and the pool is
rebuilt for the rest. On any exception the runs in flight are released and the workers ended.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import signal
from collections.abc import Callable
from typing import Any

import torch

from polyak.bench.executors import execute_job, held_keys

__all__ = ["LocalExecutor", "run_inline", "run_pool"]

Done = Callable[[Any, Any], None]


class LocalExecutor:
    """Run the grid in ``workers`` local processes (see the module docstring)."""

    name = "local"

    def __init__(self, workers: int | None = None) -> None:
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                    or workers < 1):
            raise ValueError(f"Invalid workers: {workers!r} (allowed: an integer >= 1)")
        self.workers = workers

    def resolve(self, jobs: list[Any]) -> int:
        """The number of workers for ``jobs``."""
        if self.workers is not None:
            return self.workers
        on_gpu = any(job.task.device != "cpu" for job in jobs)
        return 1 if on_gpu else (os.cpu_count() or 1)

    def close(self) -> None:
        """Nothing to release: the pool lives only while :meth:`run` runs."""

    def describe(self, jobs: list[Any]) -> str:
        return f"{min(self.resolve(jobs), max(len(jobs), 1))} workers"

    def run(self, store: Any, claims: Any, done: Done) -> None:
        workers = self.resolve(claims.queue)
        if workers == 1 or len(claims.queue) <= 1:
            run_inline(store, claims, done)
        else:
            run_pool(store, claims, workers, done)


def _init_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    torch.set_num_threads(1)


def _new_pool(workers: int) -> cf.ProcessPoolExecutor:
    return cf.ProcessPoolExecutor(max_workers=workers, initializer=_init_worker,
                                  mp_context=multiprocessing.get_context("spawn"))


def run_inline(store: Any, claims: Any, done: Done) -> None:
    """The runs one after the other in this process, with one torch thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        while (job := claims.wait()) is not None:
            try:
                result = execute_job(job)
            except BaseException:  # Ctrl-C, or a checkpoint that cannot be written
                store.release(held_keys([job]))
                raise
            done(job, result)
    finally:
        torch.set_num_threads(threads)


def run_pool(store: Any, claims: Any, workers: int, done: Done) -> None:
    """The runs in a pool of ``workers`` spawned processes, at most ``workers`` in flight."""
    from polyak.bench.train import RunResult

    workers = min(workers, len(claims.queue))
    pool, running = _new_pool(workers), {}
    try:
        while claims or running:
            while claims and len(running) < workers:
                job = claims.take() if running else claims.wait()
                if job is None:
                    break
                running[pool.submit(execute_job, job)] = job
            if not running:
                continue
            finished, _ = cf.wait(running, timeout=claims.poll if claims else None,
                                  return_when=cf.FIRST_COMPLETED)
            broken = False
            for future in finished:
                job = running[future]
                try:  # a CheckpointError comes back from here: the job is still released
                    result = future.result()
                except cf.process.BrokenProcessPool as exc:  # a worker died (killed, OOM...)
                    result, broken = RunResult(status="failed", error=f"worker died: {exc}"), True
                del running[future]
                done(job, result)
            if broken:
                pool.shutdown(wait=False, cancel_futures=True)
                pool = _new_pool(workers)
    except BaseException:
        store.release(held_keys(running.values()))
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
