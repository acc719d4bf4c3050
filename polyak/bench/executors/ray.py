"""Runs of a grid as Ray tasks (``pip install "polyak[ray]"``; ``--executor ray``).

One Ray task per run, declaring ``num_cpus=cpus_per_run`` (the task sets torch's thread count to
match) and ``num_gpus=gpus_per_run`` (a fraction lets several small runs share a GPU; Ray sets
``CUDA_VISIBLE_DEVICES``, so ``cuda`` is the GPU Ray assigned). Results come back to the driver,
which alone writes the SQLite store; runs are handed out as the runner claims them, at most one
per free slot of the cluster (its CPUs / ``cpus_per_run``, and its GPUs / ``gpus_per_run``).

Connection: ``address`` (``--ray-address``), else ``RAY_ADDRESS``, names a running cluster to
join; without either a local Ray instance is started on this machine (no dashboard) and shut
down by :meth:`RayExecutor.close`. Every node must be able to import polyak and read the data
and the ``--checkpoint-dir`` (a shared file system).

Faults: a task whose worker process or node dies is retried by Ray, at most ``max_retries``
times; the retry reads the run's resume checkpoint (when the grid saves them) and continues
from the last saved epoch, so the result is the uninterrupted run's. A run that raises is not
retried: it comes back as a failed result with its traceback. A run still failing after its
retries is recorded as failed naming the Ray error.
"""

from __future__ import annotations

import math
import os
from typing import Any

from polyak.bench.executors import execute_job, held_keys

__all__ = ["RayExecutor"]


def _ray_work(job: Any, threads: int) -> Any:
    """The body of one Ray task (module level: Ray pickles it by reference)."""
    return execute_job(job, threads)


def _check(name: str, value: Any, ok: bool, allowed: str) -> None:
    if isinstance(value, bool) or not ok:
        raise ValueError(f"Invalid {name}: {value!r} (allowed: {allowed})")


class RayExecutor:
    """Execute runs as Ray tasks (see the module docstring)."""

    name = "ray"

    def __init__(self, address: str | None = None, cpus_per_run: float = 1,
                 gpus_per_run: float = 0, max_retries: int = 3) -> None:
        number = isinstance(cpus_per_run, (int, float)) and math.isfinite(cpus_per_run)
        _check("cpus-per-run", cpus_per_run, number and cpus_per_run > 0, "a number > 0")
        number = isinstance(gpus_per_run, (int, float)) and math.isfinite(gpus_per_run)
        _check("gpus-per-run", gpus_per_run, number and gpus_per_run >= 0,
               "a number >= 0; fractions share a GPU")
        _check("max-retries", max_retries, isinstance(max_retries, int) and max_retries >= 0,
               "an integer >= 0")
        self.address, self.max_retries = address, max_retries
        self.cpus_per_run, self.gpus_per_run = cpus_per_run, gpus_per_run
        self._started = False

    @property
    def threads(self) -> int:
        """torch threads of each run: its CPUs, rounded down, at least 1."""
        return max(1, int(self.cpus_per_run))

    def connect(self) -> Any:
        """The ``ray`` module, connected (joining ``address``/``RAY_ADDRESS`` or starting a local
        instance); an existing connection of this process is used as it is."""
        try:
            import ray
        except ImportError:
            raise ValueError('--executor ray needs Ray: pip install "polyak[ray]"') from None
        if not ray.is_initialized():
            address = self.address or os.environ.get("RAY_ADDRESS")
            quiet = {"log_to_driver": False, "configure_logging": False}
            if address:
                ray.init(address=address, **quiet)
            else:
                ray.init(include_dashboard=False, **quiet)
                self._started = True
        return ray

    def close(self) -> None:
        """Shut down the Ray instance this executor started (a joined cluster is left running)."""
        if self._started:
            import ray

            ray.shutdown()
            self._started = False

    def slots(self, ray: Any) -> int:
        """Runs the cluster can hold at once with the declared resources."""
        resources = ray.cluster_resources()
        slots = resources.get("CPU", 1.0) / self.cpus_per_run
        if self.gpus_per_run > 0:
            slots = min(slots, resources.get("GPU", 0.0) / self.gpus_per_run)
        if slots < 1:
            raise ValueError(f"Invalid resources per run: the cluster ({resources.get('CPU', 0)} "
                             f"CPUs, {resources.get('GPU', 0)} GPUs) cannot hold one run of "
                             f"{self.cpus_per_run} CPUs and {self.gpus_per_run} GPUs")
        return int(slots)

    def describe(self, jobs: list[Any]) -> str:
        return f"ray, {self.cpus_per_run} CPU + {self.gpus_per_run} GPU per run"

    def run(self, store: Any, claims: Any, done: Any) -> None:
        ray = self.connect()
        task = ray.remote(_ray_work).options(
            num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run,
            max_retries=self.max_retries, retry_exceptions=False)
        slots, running = self.slots(ray), {}
        try:
            while claims or running:
                while claims and len(running) < slots:
                    job = claims.take() if running else claims.wait()
                    if job is None:
                        break
                    running[task.remote(job, self.threads)] = job
                if not running:
                    continue
                ready, _ = ray.wait(list(running), num_returns=1,
                                    timeout=claims.poll if claims else None)
                for ref in ready:
                    job = running.pop(ref)
                    done(job, self._result(ray, ref))
        except BaseException:
            store.release(held_keys(running.values()))
            for ref in running:
                ray.cancel(ref, force=True)
            raise

    def _result(self, ray: Any, ref: Any) -> Any:
        from polyak.bench.train import RunResult

        try:
            return ray.get(ref)
        except ray.exceptions.RayError as exc:  # the worker or node died on every try
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return RunResult(status="failed", error=f"{type(exc).__name__} after "
                             f"{self.max_retries} retries: {first}\n{str(exc)[-4000:]}")
