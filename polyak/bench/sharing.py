"""Runs whose training trajectories are identical by construction train once.

Two runs of a grid follow the same trajectory when they are the same task, seed and epoch budget,
their recipes resolve (tuned values applied) to the same base optimizer and the same values of
every hyper-parameter that drives training - the base's own (lr, momentum, weight decay,
schedule, ...), ``warmup``, ``budget`` and whatever the schedule reads (SWA's schedule reads
``avg_start`` and ``avg_ratio``) - and each one's averaging is **non-feeding**: nothing of it
reaches the iterate. Non-feeding, checked on the built Method: no averaging, ``Uniform``,
``EMA`` or ``FinalPhase`` (never ``PhaseWise``, which writes its aggregate into the model); no
averaging trigger, no optimizer switch, no stop trigger but the budget's ``AtEpoch``; an
optimizer without an evaluation point or epoch events (not Lookahead, schedule-free or
TSO-ALRA). :func:`trajectory_key` is that value, None for a run that shares with nothing. In the
default grid: ``sgdm@pwa`` with ``pwa-end-only``, ``adam-const@pwa`` with ``pwa-adam@pwa`` and the
AMSGrad and AdaBound pairs.

How a group trains (:func:`train_shared`): the *carrier* - the first member's recipe without its
averaging - is trained by :func:`polyak.bench.train.train_run` itself, so the trajectory is the
one each member's own run follows; every member's own Method is built on the same model and
attached to the carrier's as an observer (:class:`Follower`), so it sees every optimizer step
(its average collects as in its own run) and every epoch end (its own ``end_epoch``, then at the
curve epochs the evaluation of the weights it reports under its own ``eval_weights``, BatchNorm
recalibrated). A member's record of an epoch is the trajectory's (training loss and accuracy,
lr, time) with its own validation and test metrics: one store row per member, with exactly the
metrics its separate run gives (tested bit for bit on the CPU, also across a kill and resume of
the group). A member whose average meets non-finite weights, whose reported weights score
non-finite, or whose code raises ends alone (diverged, or failed with its traceback) as its own
run would, and the others go on; when the trajectory itself ends (a non-finite loss), the members
still following it end with it. The group's resume checkpoint (one file) holds the carrier's
state with every member's Method, records and status in it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from polyak.averaging import EMA, FinalPhase, NonFiniteWeights, Uniform
from polyak.bench import ddp, protocols, train
from polyak.bench.divergence import exploded
from polyak.bench.resume import CheckpointError, RunCheckpoint
from polyak.bench.train import (
    RunResult,
    _score_reported,
    build_method,
    curve_epochs,
    resolve_overrides,
    run_identity,
)

__all__ = ["trajectory_key", "units", "unit_of", "SharedJob", "Follower", "train_shared",
           "execute", "NON_FEEDING"]

NON_FEEDING = (Uniform, EMA, FinalPhase)  # averages that never write into the model


def _plain(value: Any) -> Any:
    """JSON of a hyper-parameter value (a rule by its kind and numbers, not its provenance)."""
    if dataclasses.is_dataclass(value):
        return {"rule": type(value).__name__,
                **{f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                   if f.name != "source"}}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


class _Reads(dict):
    """A dict that records the keys read from it (what a schedule rule uses)."""

    def __init__(self, values: dict[str, Any]) -> None:
        super().__init__(values)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)


def _feeds(method: Any) -> bool:
    """Whether anything but the optimizer and schedule can move the iterate of ``method``."""
    from polyak.triggers import AtEpoch

    opt = method.optimizer
    evaluation_point = callable(getattr(opt, "train", None)) and \
        callable(getattr(opt, "eval", None))
    return (method.averaging is not None and type(method.averaging) not in NON_FEEDING) or \
        method.averaging_trigger is not None or bool(method.switches) or \
        (method.stop_trigger is not None and not isinstance(method.stop_trigger, AtEpoch)) or \
        evaluation_point or callable(getattr(opt, "end_epoch", None))


def trajectory_key(task: Any, spec: str, epochs: int, method: Any, steps_per_epoch: int
                   ) -> str | None:
    """The value two runs of ``task`` (same seed and epochs) share exactly when their
    trajectories are identical by construction (module docstring); None when ``spec``'s built
    ``method`` has a feeding piece. ``method`` is the spec's Method on a fresh model."""
    from polyak import _recipe_parts as parts
    from polyak._budget import schedule_rule

    if _feeds(method):
        return None
    rec = protocols.parse(spec)
    rec = rec.with_overrides(**resolve_overrides(task, spec, epochs))
    hp = rec.hyperparameters(epochs, steps_per_epoch)
    reads = _Reads(hp)
    schedule_rule(hp["schedule"]).build(parts._budget_epochs(hp.get("budget", 1.0), epochs),
                                        reads)
    keys = set(parts.BASES[rec.base].defaults) | set(parts.COMMON_DEFAULTS) | reads.read
    training = {k: _plain(hp[k]) for k in sorted(keys) if k in hp}
    return json.dumps({"base": rec.base, "hyperparameters": training}, sort_keys=True)


# ---------------------------------------------------------------------- units of work
@dataclass(frozen=True)
class SharedJob:
    """Runs (``polyak.bench.runner.Job``) of one trajectory, trained once (a unit of work for
    the executors: ``keys``, ``execute()``, ``checkpoint``; ``split`` pairs each member with
    its result)."""

    members: tuple[Any, ...]

    def __post_init__(self) -> None:
        if len(self.members) < 2:
            raise ValueError("Invalid shared group: it needs two runs or more")

    task = property(lambda self: self.members[0].task)
    seed = property(lambda self: self.members[0].seed)
    epochs = property(lambda self: self.members[0].epochs)

    @property
    def keys(self) -> tuple[Any, ...]:
        return tuple(j.key for j in self.members)

    @cached_property
    def checkpoint(self) -> RunCheckpoint | None:
        """The group's resume checkpoint: its identity names every member's run."""
        from polyak.bench.store import config_hash

        first = self.members[0]
        if first.resume is None or not first.resume.enabled:
            return None
        runs = [run_identity(j.task, j.spec, j.seed, j.epochs) for j in self.members]
        identity = {**runs[0], "method": "+".join(j.spec for j in self.members),
                    "config_hash": config_hash({"shared": [r["config_hash"] for r in runs]})}
        if first.posthoc is not None:
            identity["posthoc"] = True
        return first.resume.for_run(identity)

    def execute(self) -> list[RunResult]:
        return execute(self)

    def split(self, result: Any) -> list[tuple[Any, RunResult]]:
        """A list of results (one per member), or one result (a failure) for all of them."""
        if isinstance(result, list):
            return list(zip(self.members, result))
        return [(job, result) for job in self.members]


def unit_of(jobs: Sequence[Any]) -> Any:
    """One job as it is, several as a :class:`SharedJob`."""
    return jobs[0] if len(jobs) == 1 else SharedJob(tuple(jobs))


def units(jobs: Sequence[Any]) -> list[Any]:
    """The jobs as units of work, in order (a group at its first member's place): jobs of the
    same task, seed, epochs and trajectory key form a :class:`SharedJob`."""
    groups: dict[tuple, list[Any]] = {}
    order: list[list[Any]] = []
    for job in jobs:
        if getattr(job, "trajectory", None) is None:
            order.append([job])
            continue
        key = (job.task.name, json.dumps(job.task.config(), sort_keys=True, default=str),
               job.seed, job.epochs, job.trajectory, job.checkpoints, job.resume, job.posthoc)
        if key not in groups:
            groups[key] = []
            order.append(groups[key])
        groups[key].append(job)
    return [unit_of(group) for group in order]


def failed_result(exc: BaseException) -> RunResult:
    """A failed run's result carrying the traceback (as the executors record one)."""
    text = "".join(traceback.format_exception(exc))
    return RunResult(status="failed", error=f"{type(exc).__name__}: {exc}\n{text[-4000:]}")


def execute(unit: Any) -> RunResult | list[RunResult]:
    """Train a Job or a :class:`SharedJob` (in the worker) and, with ``posthoc``, evaluate the
    post-hoc averages of its trajectory; a group gives one result per member."""
    members = list(unit.members)
    first = members[0]
    policy = first.posthoc

    def snapshots(model: Any, *_: Any) -> list[Any]:
        return [policy.observer(model, members)] if policy is not None else []

    if len(members) == 1:
        results = [train.train_run(first.task, first.spec, first.seed, first.epochs,
                                   checkpoints=first.checkpoints, resume=first.checkpoint,
                                   attach=snapshots)]
    else:
        results = train_shared(unit, snapshots)
    if policy is not None and any(r.status == "complete" for r in results):
        rows = policy.evaluate(members)
        for result in results:
            if result.status == "complete":
                result.posthoc = [dict(row) for row in rows]
    return results[0] if len(members) == 1 else results


# ---------------------------------------------------------------------- one trajectory
class Follower:
    """One member of a shared group, observing the carrier's Method (module docstring): its own
    Method gets every step and epoch end, and its result is built as its own run's."""

    def __init__(self, job: Any, method: Any, model: Any, score: Any, splits: Any,
                 bn_loader: Any) -> None:
        self.job, self.method, self.model = job, method, model
        self.score, self.splits, self.bn_loader = score, splits, bn_loader
        self.curve = curve_epochs(job.epochs)
        self.result = RunResult(status="complete")
        self.live, self.finished = True, False
        self._scores: tuple[Any, Any] = ((None, None), (None, None))

    def _end(self, status: str, error: str | None) -> None:
        self.result.status, self.result.error = status, error
        self.live, self.finished = False, True

    def _fail(self, exc: BaseException) -> None:
        failed = failed_result(exc)
        self._end(failed.status, failed.error)

    def step(self) -> None:
        if not self.live:
            return
        try:
            self.method._after_step()   # counts the step, then the averaging's collection
        except NonFiniteWeights as exc:
            self._end("diverged", f"non-finite value in epoch {self.method.epochs_done}: {exc}")
        except Exception as exc:  # noqa: BLE001  (this member's failure, not the group's)
            self._fail(exc)

    def end_epoch(self, epoch: int) -> None:
        if not self.live:
            return
        try:
            self.method.end_epoch(epoch, val_loss=None, val_acc=None, bn_loader=self.bn_loader)
        except NonFiniteWeights as exc:
            self._end("diverged", f"non-finite value in epoch {epoch}: {exc}")
            return
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)
            return
        self._scores = ((None, None), (None, None))
        if epoch in self.curve or epoch == self.job.epochs - 1 or self.method.should_stop:
            try:
                self._scores = _score_reported(self.method, self.score, self.splits,
                                               self.bn_loader, None)
            except Exception as exc:  # noqa: BLE001
                self._fail(exc)

    def on_epoch(self, record: dict[str, Any]) -> None:
        """The trajectory's record of the epoch just ended (after every observer's
        ``end_epoch``): this member's own record of it."""
        if not self.live:
            return
        (val_loss, val_acc), (test_loss, test_acc) = self._scores
        epoch = record["epoch"]
        self.result.records.append(dict(record, val_loss=val_loss, val_acc=val_acc,
                                        test_loss=test_loss, test_acc=test_acc))
        job = self.job
        if job.checkpoints is not None:
            ddp.on_rank0(job.checkpoints.maybe_save, self.model, task=job.task.name,
                         method=job.spec, seed=job.seed, epoch=epoch, epochs=job.epochs,
                         lr=record["lr"])
        why = None if val_loss is None or not (math.isfinite(val_loss)
                                              and math.isfinite(test_loss)) \
            else exploded(max(val_loss, test_loss), self.splits.num_classes)
        if val_loss is not None and not (math.isfinite(val_loss) and math.isfinite(test_loss)):
            self._end("diverged", f"non-finite loss of the reported weights in epoch {epoch}")
        elif why is not None:   # train_run's rule for the reported weights (bench.divergence)
            self._end("diverged", f"exploded loss of the reported weights in epoch {epoch}: "
                      f"{why}")
        elif self.method.should_stop or epoch == job.epochs - 1:
            self.live, self.finished = False, True

    def outcome(self, carried: RunResult) -> RunResult:
        """This member's result once the trajectory (``carried``, the carrier's) has ended."""
        result = self.result
        if not self.finished:  # the trajectory ended first: the member's run ends with it
            result.status, result.error = carried.status, carried.error
            if carried.status == "complete":
                result.status = "failed"
                result.error = "the shared trajectory ended before this run's last epoch"
        result.wall_time = carried.wall_time
        result.resumed_from, result.machines = list(carried.resumed_from), list(carried.machines)
        return result

    def state_dict(self) -> dict[str, Any]:
        return {"type": "Follower", "method": self.job.spec, "state": self.method.state_dict(),
                "records": [dict(r) for r in self.result.records],
                "status": self.result.status, "error": self.result.error,
                "live": self.live, "finished": self.finished}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("type") != "Follower" or state.get("method") != self.job.spec:
            raise ValueError(f"Invalid state_dict: it is not the shared-run state of "
                             f"{self.job.spec} (it is {state.get('type')} of "
                             f"{state.get('method')})")
        self.method.load_state_dict(state["state"])
        self.result.records = [dict(r) for r in state["records"]]
        self.result.status, self.result.error = state["status"], state["error"]
        self.live, self.finished = bool(state["live"]), bool(state["finished"])


def train_shared(group: SharedJob, extra: Any = None) -> list[RunResult]:
    """Train the group's trajectory once; one result per member (module docstring).
    ``extra(model)`` gives more observers of the trajectory (the post-hoc snapshots), attached
    before the members."""
    first = group.members[0]
    carrier = dataclasses.replace(protocols.parse(first.spec), averaging=None)
    followers: list[Follower] = []

    def attach(model: Any, method: Any, score: Any, bn_loader: Any, splits: Any) -> list[Any]:
        for job in group.members:
            member = build_method(job.task, job.spec, model, job.epochs, method.steps_per_epoch)
            followers.append(Follower(job, member, model, score, splits, bn_loader))
        return [*(extra(model) if extra is not None else ()), *followers]

    def on_epoch(record: dict[str, Any]) -> None:
        for follower in followers:
            follower.on_epoch(record)

    try:  # the carrier evaluates nothing but its last epoch (curve_points=0)
        carried = train.train_run(first.task, carrier, first.seed, first.epochs,
                                  on_epoch=on_epoch, resume=group.checkpoint, curve_points=0,
                                  attach=attach)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001  (the trajectory failed: members still following it)
        if not followers:
            raise
        carried = failed_result(exc)
    return [f.outcome(carried) for f in followers]
