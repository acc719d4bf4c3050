"""The default executor: this machine's ``spawn`` process pool (nothing to install or start).

``workers`` worker processes with one torch thread each (``None``: one per CPU core, or 1 when
a run trains on CUDA); with one worker, or one run, the runs execute in the calling process. A
worker that dies (killed, out of memory) fails its run, and the pool is rebuilt for the rest.
The loops themselves are :func:`polyak.bench.runner._run_inline` and ``_run_pool``.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["LocalExecutor"]


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

    def run(self, store: Any, claims: Any, done: Any) -> None:
        from polyak.bench import runner

        workers = self.resolve(claims.queue)
        if workers == 1 or len(claims.queue) <= 1:
            runner._run_inline(store, claims, done)
        else:
            runner._run_pool(store, claims, workers, done)
