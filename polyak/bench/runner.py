"""The benchmark grid: (task x method x seed) runs in worker processes, results in the store.

The runs are trained by an executor (:mod:`polyak.bench.executors`: by default this machine's
pool of ``spawn``-ed processes with one torch thread each, or a Ray cluster); workers only train
and return results. The parent is the one writer of the store: it claims a run under a lease
when it hands it to a worker (at most ``workers`` in flight; a heartbeat thread renews the
leases) and writes the finished run with all its metrics in one transaction, so an interrupted
bench keeps every completed run and the next bench runs only the missing ones. Runs another live
bench holds are waited for (polled) and taken over if its lease expires.

With ``resume`` (a :class:`~polyak.bench.resume.ResumePolicy`) every run saves its full state
every few epochs and a run that finds its checkpoint continues from it (bit for bit on the
CPU): a killed bench loses at most the epochs since the last save, and the console line of a
continued run says where it resumed (``done ... (resumed after epoch 10)``). Before anything
runs the checkpoints of unfinished runs are read and checked (a corrupt or foreign one stops the
bench with one line naming it); a run's checkpoint is removed once the run is in the store, and
stale ones of finished runs are removed at the start. An exception inside a run is recorded as
``failed`` with its traceback (retried by the next bench) and never stops the grid; a
non-finite loss is recorded as ``diverged``. With ``workers=1`` the runs execute in-process.
Runs on CUDA (``task.device``) default to one worker: one run at a time on the one GPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from polyak.bench.checkpoints import CheckpointPolicy
from polyak.bench.executors.local import LocalExecutor
from polyak.bench.resume import ResumePolicy, RunCheckpoint
from polyak.bench.store import FINAL, Heartbeat, RunKey, Store
from polyak.bench.tasks import Task
from polyak.bench.train import (
    RunResult,
    build_method,
    make_model,
    run_config,
    run_identity,
    steps_per_epoch,
)

__all__ = ["Job", "GridSummary", "plan_grid", "run_grid", "default_methods", "check_checkpoints"]


@dataclass(frozen=True)
class Job:
    """One run of the grid."""

    task: Task
    spec: str
    seed: int
    epochs: int
    checkpoints: CheckpointPolicy | None = None  # not part of the run's identity
    resume: ResumePolicy | None = None  # mid-run checkpoints; not part of the identity

    @cached_property
    def key(self) -> RunKey:
        """The run's identity (computed once: the tuned lr it records cannot change under it)."""
        return RunKey(self.task.name, self.spec, self.seed, self.epochs,
                      run_config(self.task, self.spec, self.epochs))

    @cached_property
    def checkpoint(self) -> RunCheckpoint | None:
        """The run's resume checkpoint (``None`` without a resume policy)."""
        if self.resume is None or not self.resume.enabled:
            return None
        identity = run_identity(self.task, self.spec, self.seed, self.epochs)
        return self.resume.for_run(identity)


@dataclass
class GridSummary:
    """Counts of what a ``run_grid`` call did."""

    total: int = 0
    skipped: int = 0          # already complete or diverged in the store (or by another bench)
    complete: int = 0
    diverged: int = 0
    failed: int = 0
    interrupted: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def executed(self) -> int:
        return self.complete + self.diverged + self.failed


def default_methods() -> tuple[list[str], list[tuple[str, str]]]:
    """Every arm of the papers' protocols (:func:`polyak.bench.protocols.default_methods`) split
    into (available, [(unavailable, reason)])."""
    from polyak.bench import protocols

    ok, missing = [], []
    for name in protocols.default_methods():
        available, reason = protocols.parse(name).available()
        if available:
            ok.append(name)
        else:
            missing.append((name, reason))
    return ok, missing


def _check_spec(task: Task, spec: str, epochs: int) -> int:
    """Build the recipe once on a fresh model: unknown names/keys/values raise here. Returns
    the forward-backward passes per step (2 for SAM, else 1), the run's relative cost."""
    splits = task.load()
    method = build_method(task, spec, make_model(task, splits), epochs,
                          steps_per_epoch(task, splits))
    return 2 if method._is_sam() else 1


def plan_grid(tasks: list[Task], methods: list[str] | None = None, seeds: int | None = None,
              epochs: int | None = None, checkpoints: CheckpointPolicy | None = None,
              resume: ResumePolicy | None = None) -> list[Job]:
    """Every (task, method, seed) job, seed-major; ``None`` means the task's default.

    Within a seed the costlier runs (SAM's two passes per step) come first, so that the grid
    does not end with one worker finishing a long run while the others wait.

    ``methods=None`` means the available paper methods. Every spec is validated (and every
    task's data generated) before anything runs, so bad input fails before the store is touched.
    """
    for name, value in (("seeds", seeds), ("epochs", epochs)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise ValueError(f"Invalid {name}: {value!r} (allowed: an integer >= 1)")
    specs = default_methods()[0] if methods is None else list(dict.fromkeys(methods))
    if not specs:
        raise ValueError("No methods to run")
    jobs = []
    for task in tasks:
        n_epochs = task.epochs if epochs is None else epochs
        cost = {spec: _check_spec(task, spec, n_epochs) for spec in specs}
        ordered = sorted(specs, key=lambda spec: -cost[spec])  # stable: else as given
        n_seeds = task.seeds if seeds is None else seeds
        jobs += [Job(task, spec, seed, n_epochs, checkpoints, resume)
                 for seed in range(n_seeds) for spec in ordered]
    return jobs


def _record(store: Store, job: Job, result: RunResult, summary: GridSummary) -> None:
    if result.status == "failed":
        store.fail(job.key, result.error or "failed")
        summary.failed += 1
        summary.errors.append(f"{job.spec} seed {job.seed}: {(result.error or '').splitlines()[0]}")
        return
    if not store.finish(job.key, result):  # the lease expired and another bench took it over
        summary.errors.append(f"{job.spec} seed {job.seed}: lease lost, result not written")
        return
    if job.checkpoint is not None:
        job.checkpoint.remove()
    if result.status == "diverged":
        summary.diverged += 1
    else:
        summary.complete += 1


def _describe(job: Job, result: RunResult) -> str:
    if result.status == "failed":
        return f"[red]failed[/] {job.spec} seed {job.seed}"
    last = result.records[-1] if result.records else {}
    state = "[green]done[/]" if result.status == "complete" else "[yellow]diverged[/]"
    if job.task.metric == "loss":  # the loss is the task's metric
        val, test = (last.get(k) if last.get(k) is not None else float("nan")
                     for k in ("val_loss", "test_loss"))
        scores = f"val loss {val:.4g}, test loss {test:.4g}"
    else:
        val, test = (100 * (last.get(k) or float("nan")) for k in ("val_acc", "test_acc"))
        scores = f"val acc {val:.2f}%, test acc {test:.2f}%"
    return (f"{state} {job.task.name} {job.spec} seed {job.seed}{_resumed(result)}: {scores} "
            f"({result.wall_time:.1f} s)")


def _resumed(result: RunResult) -> str:
    """" (resumed after epoch 10)": the epochs done when the run continued from its checkpoint
    (the store's ``resumed`` column), every continuation in order; "" for a run in one go."""
    done = list(result.resumed_from)
    if not done:
        return ""
    return f" (resumed after epoch{'s' if len(done) > 1 else ''} {', '.join(map(str, done))})"


def check_checkpoints(store: Store, jobs: list[Job]) -> None:
    """Remove the resume checkpoints of finished runs; read and check those of the others
    (``CheckpointError`` naming a corrupt or foreign file, before anything runs)."""
    for job in jobs:
        if job.checkpoint is None or not job.checkpoint.path.exists():
            continue
        if store.status(job.key) in FINAL:
            job.checkpoint.remove()
        else:
            job.checkpoint.load()


def run_grid(store: Store, jobs: list[Job], workers: int | None = None,
             console: Console | None = None, show_progress: bool = True,
             on_result: Callable[[Job, RunResult], None] | None = None,
             executor: Any = None, poll: float = 5.0) -> GridSummary:
    """Run the ``jobs`` the store does not hold as complete/diverged; write each as it ends.

    ``workers=None``: one per CPU core, or 1 when a job trains on CUDA (one GPU, one run at a
    time; runs sharing a GPU would only queue on it). ``executor`` (e.g. a
    :class:`~polyak.bench.executors.ray.RayExecutor`) runs the jobs elsewhere instead of the local
    pool; the results still come back here, the store's one writer. Runs another bench holds
    are polled every ``poll`` seconds until they finish there or their lease expires."""
    workers = LocalExecutor(workers).resolve(jobs)  # checked; None: one per core, 1 on CUDA
    summary = GridSummary(total=len(jobs))
    check_checkpoints(store, jobs)
    store.plan([job.key for job in jobs])
    todo = [job for job in jobs if store.status(job.key) not in FINAL]
    summary.skipped = len(jobs) - len(todo)
    console = console or Console(stderr=True)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, disable=not show_progress)

    def done(job: Job, result: RunResult) -> None:
        _record(store, job, result, summary)
        progress.console.print(_describe(job, result), highlight=False, soft_wrap=True)
        progress.advance(bar)
        if on_result is not None:
            on_result(job, result)

    def elsewhere(job: Job) -> None:  # finished by another bench sharing the store
        summary.skipped += 1
        progress.advance(bar)

    with progress:
        executor = executor if executor is not None else LocalExecutor(workers)
        where = executor.describe(todo)
        bar = progress.add_task(f"polyak bench ({where})",
                                total=len(jobs), completed=summary.skipped)
        try:
            with Heartbeat(store):
                claims = _Claims(store, todo, elsewhere, poll)
                executor.run(store, claims, done)
        except KeyboardInterrupt:
            summary.interrupted = True
    return summary


class _Claims:
    """The runs left to do, handed out as this bench manages to claim them."""

    def __init__(self, store: Store, todo: list[Job], elsewhere: Callable[[Job], None],
                 poll: float) -> None:
        self.store, self.queue, self.elsewhere, self.poll = store, list(todo), elsewhere, poll

    def __bool__(self) -> bool:
        return bool(self.queue)

    def take(self) -> Job | None:
        """The first job of the queue this bench can claim now (``None``: none can be: the
        rest are held by other benches, or the queue is empty)."""
        for job in list(self.queue):
            if self.store.claim(job.key) is not None:
                self.queue.remove(job)
                return job
            if self.store.status(job.key) in FINAL:
                self.queue.remove(job)
                self.elsewhere(job)
        return None

    def wait(self) -> Job | None:
        """Like :meth:`take`, but waits while other benches hold every remaining job."""
        while self.queue:
            job = self.take()
            if job is not None or not self.queue:
                return job
            time.sleep(self.poll)
        return None
