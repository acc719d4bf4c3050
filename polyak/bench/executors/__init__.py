"""How the runs of a grid are executed: the local spawn pool (default) or a Ray cluster.

An executor trains the runs the runner hands it and gives every result back to the driver,
which alone writes the SQLite store. The contract, ``executor.run(store, claims, done)``:

- ``claims`` is the runner's queue of runs to do: true while runs remain; ``take()`` claims the
  next run this bench can have now (``None``: none right now), ``wait()`` blocks until one can be
  claimed or none remain, ``poll`` is the seconds to wait between tries;
- each claimed job is trained by :func:`execute_job` somewhere (a worker process, a Ray worker on
  any node) and its :class:`~polyak.bench.train.RunResult` is passed to ``done(job, result)`` in
  the calling process, in the order results arrive;
- on any exception (Ctrl-C included) the executor puts the runs it still holds back with
  ``store.release(keys)`` and re-raises.

A claimed "job" is a unit of work: a ``Job``, or a shared group of runs trained once
(:class:`polyak.bench.sharing.SharedJob`); ``job.keys`` are the store rows it holds, and its
result goes back to ``done`` as it came (the runner splits a group's).

A run that raises is a result with ``status="failed"`` and the traceback (:func:`execute_job`
catches it); a worker that dies (killed, out of memory, node lost) is the executor's business:
the pool records it as failed, Ray retries it up to ``max_retries`` times, and with resume
checkpoints the retry continues from the run's last checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["execute_job", "make_executor", "held_keys", "EXECUTORS"]

EXECUTORS = ("local", "ray")


def execute_job(job: Any, threads: int | None = None) -> Any:
    """Train one job (``polyak.bench.runner.Job`` or a shared group) with ``threads`` torch
    threads; a run that raises comes back as a failed result carrying its traceback."""
    from polyak.bench.resume import CheckpointError
    from polyak.bench.sharing import failed_result

    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return job.execute()
    except CheckpointError:  # the disk or the checkpoint, not the run: the bench stops
        raise
    except Exception as exc:  # a failing run must not stop the grid
        return failed_result(exc)


def held_keys(jobs: Any) -> list[Any]:
    """The store keys of the units of work ``jobs`` (to release them)."""
    return [key for job in jobs for key in job.keys]


def make_executor(name: str, *, workers: int | None = None, address: str | None = None,
                  cpus_per_run: float = 1, gpus_per_run: float = 0, max_retries: int = 3) -> Any:
    """The executor called ``name`` ("local" or "ray") with its options checked."""
    if name not in EXECUTORS:
        raise ValueError(f"Invalid executor: {name!r} (allowed: {', '.join(EXECUTORS)})")
    if name == "local":
        if address is not None:
            raise ValueError("Invalid ray-address: only used with --executor ray")
        from polyak.bench.executors.local import LocalExecutor

        return LocalExecutor(workers)
    from polyak.bench.executors.ray import RayExecutor

    return RayExecutor(address=address, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run,
                       max_retries=max_retries)
