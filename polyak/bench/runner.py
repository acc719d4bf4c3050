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

Runs of one seed whose trajectories are identical by construction (the same base, schedule and
training hyper-parameters; only a non-feeding average differs, e.g. ``sgdm@pwa`` and
``pwa-end-only``) are one unit of work: claimed together, trained once with every member's
average observing the one trajectory, one resume checkpoint for the group, and one store row
per member with the metrics its own run gives (:mod:`polyak.bench.sharing`).
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
from polyak.bench.posthoc import PosthocPolicy
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
    trajectory: str | None = None  # runs with the same one train once (polyak.bench.sharing)
    posthoc: PosthocPolicy | None = None  # snapshots and post-hoc averages (polyak.bench.posthoc)

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
        if self.posthoc is not None:  # its state holds the snapshots': not the plain run's
            identity["posthoc"] = True
        return self.resume.for_run(identity)

    @property
    def keys(self) -> tuple[RunKey, ...]:
        """The store rows this unit of work writes (one; a shared group's: one per member)."""
        return (self.key,)

    @property
    def members(self) -> tuple[Job, ...]:
        return (self,)

    def execute(self) -> RunResult:
        """Train the run (and evaluate its post-hoc averages when asked): in the worker."""
        from polyak.bench.sharing import execute

        return execute(self)

    def split(self, result: Any) -> list[tuple[Job, RunResult]]:
        """Each member with its result (a shared group returns one per member)."""
        return [(self, result)]


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


def _check_spec(task: Task, spec: str, epochs: int, share: bool = True
                ) -> tuple[int, str | None]:
    """Build the recipe once on a fresh model: unknown names/keys/values raise here. Returns
    the forward-backward passes per step (2 for SAM, else 1), the run's relative cost, and its
    trajectory key (:func:`polyak.bench.sharing.trajectory_key`; None without ``share``)."""
    from polyak.bench.sharing import trajectory_key

    splits = task.load()
    per_epoch = steps_per_epoch(task, splits)
    method = build_method(task, spec, make_model(task, splits), epochs, per_epoch)
    key = trajectory_key(task, spec, epochs, method, per_epoch) if share else None
    return (2 if method._is_sam() else 1), key


def plan_grid(tasks: list[Task], methods: list[str] | None = None, seeds: int | None = None,
              epochs: int | None = None, checkpoints: CheckpointPolicy | None = None,
              resume: ResumePolicy | None = None, posthoc: PosthocPolicy | None = None,
              share: bool = True) -> list[Job]:
    """Every (task, method, seed) job, seed-major; ``None`` means the task's default.

    Within a seed the costlier runs (SAM's two passes per step) come first, so that the grid
    does not end with one worker finishing a long run while the others wait. With ``share``
    each job carries its trajectory key: :func:`run_grid` trains the jobs of a seed whose
    trajectories are identical by construction once (:mod:`polyak.bench.sharing`).
    ``posthoc``: every run keeps snapshots and evaluates the default post-hoc averages.

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
        checked = {spec: _check_spec(task, spec, n_epochs, share) for spec in specs}
        ordered = sorted(specs, key=lambda spec: -checked[spec][0])  # stable: else as given
        n_seeds = task.seeds if seeds is None else seeds
        jobs += [Job(task, spec, seed, n_epochs, checkpoints, resume, checked[spec][1], posthoc)
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
    (``CheckpointError`` naming a corrupt or foreign file, before anything runs). A shared
    group's checkpoint is removed as soon as one of its runs is finished (the rest train
    without it, alone or in a smaller group)."""
    from polyak.bench.sharing import units

    for unit in [*jobs, *(u for u in units(jobs) if len(u.members) > 1)]:
        if unit.checkpoint is None or not unit.checkpoint.path.exists():
            continue
        if any(store.status(key) in FINAL for key in unit.keys):
            unit.checkpoint.remove()
        else:
            unit.checkpoint.load()


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

    def done(unit: Any, result: Any) -> None:  # a Job, or a shared group and its results
        for job, one in unit.split(result):
            _record(store, job, one, summary)
            progress.console.print(_describe(job, one), highlight=False, soft_wrap=True)
            progress.advance(bar)
            if on_result is not None:
                on_result(job, one)
        if len(unit.members) > 1 and unit.checkpoint is not None and \
                any(store.status(key) in FINAL for key in unit.keys):
            unit.checkpoint.remove()

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
    """The runs left to do, handed out as this bench manages to claim them: units of work,
    each a Job or a shared group of jobs trained once (:func:`polyak.bench.sharing.units`)."""

    def __init__(self, store: Store, todo: list[Job], elsewhere: Callable[[Job], None],
                 poll: float) -> None:
        from polyak.bench.sharing import units

        self.store, self.queue, self.elsewhere, self.poll = store, units(todo), elsewhere, poll

    def __bool__(self) -> bool:
        return bool(self.queue)

    def take(self) -> Any:
        """The first unit of the queue this bench can claim now, as far as it can claim it
        (a group's members held by other benches stay queued; ``None``: nothing can be
        claimed: the rest are held by other benches, or the queue is empty)."""
        from polyak.bench.sharing import unit_of

        for unit in list(self.queue):
            claimed, held = [], []
            for job in unit.members:
                if self.store.claim(job.key) is not None:
                    claimed.append(job)
                elif self.store.status(job.key) in FINAL:
                    self.elsewhere(job)
                else:
                    held.append(job)
            index = self.queue.index(unit)
            self.queue[index:index + 1] = [unit_of(held)] if held else []
            if claimed:
                return unit_of(claimed)
        return None

    def wait(self) -> Any:
        """Like :meth:`take`, but waits while other benches hold every remaining job."""
        while self.queue:
            job = self.take()
            if job is not None or not self.queue:
                return job
            time.sleep(self.poll)
        return None
