"""Post-hoc averages in the benchmark: snapshots of every run, a default family, its evaluation.

``polyak bench --posthoc`` (:class:`PosthocPolicy`) makes every run keep
:class:`~polyak.averaging.Snapshots` of its trajectory (the iterate at every epoch end, and
EDM2's two power-EMA profiles, sigma_rel 0.05 and 0.10, updated after every optimizer step) in

    <checkpoint dir>/<task>/<method>/seed<k>/snapshots-<epochs>ep-<config hash>/

with the meta ``polyak posthoc`` needs (task and its config, methods, seed, epochs, the runs'
identities, the last lr phase). A shared group (:mod:`polyak.bench.sharing`) writes one
directory, in its first member's place, and links the others' to it. Right after training, in the
worker, the :data:`DEFAULT_FAMILY` of averages is reconstructed from the files
(:func:`polyak.averaging.reconstruct_many`, a few averages per pass) and each is evaluated on
the validation and test splits exactly as the bench evaluates a method's reported weights
(BatchNorm recalibrated on the training set); the rows come back in ``RunResult.posthoc`` and
the store keeps them (table ``posthoc``).

The family (one place: :data:`DEFAULT_FAMILY`; ``polyak posthoc`` takes the same options):
uniform windows ``[a, end]`` with ``a`` a fraction of the epochs trained; EMAs over the epoch
snapshots with half-lives in epochs; the mean of the ``k`` latest snapshots (``k = 1``: the
last iterate); PWA's exponential weighting of the last constant-lr phase (``gamma =
0.9^(80/T)``, the run's last phase of its schedule; the last quarter for a schedule without
phases); power EMAs of relative width ``sigma_rel`` (EDM2's least squares over the profiles,
with the error bound :func:`~polyak.averaging.power_ema_fit` reports).

Width (the common axis of the landscape): the standard deviation of an average's weights over
training time, time measured in optimizer steps relative to the run's length, i.e.
``sqrt(sum_i w_i (t_i - tbar)^2)`` with ``t_i = step_i / T``; for a power EMA its
``sigma_rel`` (EDM2 defines it so). The last iterate has width 0; the uniform average of the
whole run about 0.29.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["Family", "DEFAULT_FAMILY", "Candidate", "PosthocPolicy", "candidates", "width",
           "evaluate", "evaluation_parts", "last_phase", "snapshot_observer",
           "SNAPSHOT_PROFILES"]

SNAPSHOT_PROFILES = (0.05, 0.10)  # EDM2's two stored power-EMA profiles (sigma_rel)
CHUNK = 8  # averages reconstructed per pass over the files (one accumulator each)


def _numbers(name: str, values: Any, low: float, high: float | None, integer: bool = False,
             closed: bool = True) -> tuple:
    ok = isinstance(values, (tuple, list))
    out = []
    for v in values if ok else ():
        good = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) \
            and (v >= low if closed else v > low) and (high is None or v < high) \
            and (not integer or float(v).is_integer())
        if not good:
            ok = False
            break
        out.append(int(v) if integer else float(v))
    if not ok:
        bound = f"{'>=' if closed else '>'} {low:g}" + (f" and < {high:g}" if high else "")
        kind = "integers" if integer else "numbers"
        raise ValueError(f"Invalid {name}: {values!r} (a list of {kind} {bound})")
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class Family:
    """The post-hoc averages to evaluate (see the module docstring): ``windows``: starts of
    uniform windows as fractions of the epochs trained, 0 <= a < 1; ``half_lives``: EMA
    half-lives in epochs (> 0); ``latest``: numbers of latest snapshots (>= 1); ``pwa``: PWA's
    weighting of the last phase; ``sigma_rels``: power-EMA widths (0 < sigma_rel < 0.3)."""

    windows: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 0.9)
    half_lives: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)
    latest: tuple[int, ...] = (1, 2, 4, 8)
    pwa: bool = True
    sigma_rels: tuple[float, ...] = (0.02, 0.04, 0.06, 0.08, 0.10, 0.13, 0.16, 0.20, 0.25)

    def __post_init__(self) -> None:
        from polyak.averaging.power_ema import SIGMA_REL_MAX

        object.__setattr__(self, "windows", _numbers("windows", self.windows, 0.0, 1.0))
        object.__setattr__(self, "half_lives", _numbers("half-lives", self.half_lives, 0.0,
                                                        None, closed=False))
        object.__setattr__(self, "latest", _numbers("latest", self.latest, 1, None, True))
        object.__setattr__(self, "sigma_rels", _numbers("sigma-rels", self.sigma_rels, 0.0,
                                                        SIGMA_REL_MAX, closed=False))
        if not isinstance(self.pwa, bool):
            raise ValueError(f"Invalid pwa: {self.pwa!r} (True or False)")


#: the default family of ``polyak bench --posthoc`` and ``polyak posthoc``
DEFAULT_FAMILY = Family()


@dataclass(frozen=True)
class Candidate:
    """One post-hoc average: short ``name`` (the store's key), ``family``, its ``param``
    (window start epoch, half-life, k, phase start or sigma_rel), what
    :func:`~polyak.averaging.reconstruct_many` takes (``average``), ``width`` and the
    reconstruction ``error`` bound (power EMAs; 0 for the exact families)."""

    name: str
    family: str
    param: float
    average: Any = field(repr=False)
    width: float
    error: float = 0.0


def width(snaps: Any, weights: Sequence[float]) -> float:
    """``sqrt(sum_i w_i (t_i - tbar)^2)``, ``t_i`` = snapshot i's step / the last one's."""
    entries = list(snaps.entries)
    total = max(entries[-1].step, 1)
    times = [e.step / total for e in entries]
    mean = sum(w * t for w, t in zip(weights, times))
    return math.sqrt(max(sum(w * (t - mean) ** 2 for w, t in zip(weights, times)), 0.0))


def last_phase(snaps: Any) -> int:
    """The first epoch of the run's last constant-lr phase (``meta["last_phase"]``, which the
    bench records from the recipe's schedule), else the start of the last quarter."""
    epochs = snaps.entries[-1].epoch + 1
    start = snaps.meta.get("last_phase")
    if isinstance(start, int) and 0 <= start < epochs:
        return start
    return epochs - max(1, epochs // 4)


def candidates(snaps: Any, family: Family = DEFAULT_FAMILY) -> list[Candidate]:
    """The family's averages over the snapshot directory ``snaps`` (a
    :class:`~polyak.averaging.SnapshotDir` of per-epoch snapshots); k beyond the snapshots is
    left out, and so is a repeated window (two fractions that round to the same epoch)."""
    from polyak.averaging import (
        ema_weights,
        latest_weights,
        power_ema_fit,
        pwa_weights,
        uniform_weights,
    )

    epochs = snaps.entries[-1].epoch + 1
    out: list[Candidate] = []
    for k in family.latest:
        if k <= len(snaps):
            w = latest_weights(snaps, k)
            out.append(Candidate(f"latest({k})", "latest", k, w, width(snaps, w)))
    for h in family.half_lives:
        w = ema_weights(snaps, half_life=h)
        out.append(Candidate(f"ema(h={h:g})", "ema", h, w, width(snaps, w)))
    for start in dict.fromkeys(min(int(round(a * epochs)), epochs - 1) for a in family.windows):
        w = uniform_weights(snaps, start=start)
        out.append(Candidate(f"uniform[{start}:]", "uniform", start, w, width(snaps, w)))
    if family.pwa:
        start = last_phase(snaps)
        w = pwa_weights(snaps, start=start)
        out.append(Candidate(f"pwa[{start}:]", "pwa", start, w, width(snaps, w)))
    if snaps.gammas:
        for s in family.sigma_rels:
            fit = power_ema_fit(snaps, s)
            out.append(Candidate(f"power-ema({s:g})", "power-ema", s, fit, s, fit.error))
    return out


def _key(candidate: Candidate) -> tuple:
    """Candidates with the same weights (``uniform[a:]`` is ``latest(E - a)``) share a key."""
    average = candidate.average
    return tuple(average) if isinstance(average, list) else (candidate.name,)


def evaluate(snaps: Any, family: Family, model: torch.nn.Module, score: Any, splits: Any,
             bn_loader: Iterable[Any] | None) -> list[dict[str, Any]]:
    """One row per candidate: name, family, param, width, error and the validation and test
    (loss, accuracy) of the average, BatchNorm recalibrated on ``bn_loader``; ``score(x, y)``
    is the bench's evaluation of ``model``."""
    from polyak.averaging import applied, reconstruct_many

    found = candidates(snaps, family)
    unique = list({_key(c): c for c in reversed(found)}.values())[::-1]  # each evaluated once
    scores: dict[tuple, tuple[Any, Any]] = {}
    for i in range(0, len(unique), CHUNK):
        part = unique[i:i + CHUNK]
        states = reconstruct_many(snaps, [c.average for c in part], model=model)
        for c, state in zip(part, states):
            with applied(model, state, bn_loader=bn_loader):
                scores[_key(c)] = (score(splits.x_val, splits.y_val),
                                   score(splits.x_test, splits.y_test))
        del states
    rows = []
    for c in found:
        val, test = scores[_key(c)]
        rows.append({"name": c.name, "family": c.family, "param": float(c.param),
                     "width": c.width, "error": c.error, "val_loss": val[0], "val_acc": val[1],
                     "test_loss": test[0], "test_acc": test[1]})
    return rows


def evaluation_parts(task: Any, seed: int) -> tuple[torch.nn.Module, Any, Any, Any]:
    """(model, score, splits, bn_loader): a fresh model of ``task`` on its device and the
    bench's evaluation of it (:func:`polyak.bench.train.evaluate` through the task's evaluation
    transform; the training split in order for BatchNorm)."""
    from polyak.bench import train
    from polyak.bench.device import prepare_model

    splits, mean, std = train.task_splits(task)
    model = prepare_model(train.make_model(task, splits), task.device, autocast=task.autocast)
    _, score, bn_loader, _ = train._loop(task, splits, model, None, seed, mean, std)
    return model, score, splits, bn_loader


@dataclass(frozen=True)
class PosthocPolicy:
    """Where a bench's runs keep their snapshots (``root``: the checkpoint directory) and the
    family they evaluate after training."""

    root: Path
    family: Family = DEFAULT_FAMILY

    def directory(self, job: Any) -> Path:
        """The snapshot directory of the run ``job`` (a ``polyak.bench.runner.Job``)."""
        from polyak.bench.checkpoints import checkpoint_dir

        return checkpoint_dir(self.root, job.task.name, job.spec, job.seed) / \
            f"snapshots-{job.epochs}ep-{job.key.hash}"

    def observer(self, model: torch.nn.Module, jobs: Sequence[Any]) -> Any:
        """The Snapshots of the trajectory of ``jobs`` (one run, or a shared group), in the
        first one's directory (the others' linked to it)."""
        directory = self.directory(jobs[0])
        if directory.is_symlink():  # it was linked to a group's; this run writes its own
            directory.unlink()
        for job in jobs[1:]:
            _link(self.directory(job), directory)
        return snapshot_observer(model, jobs, directory)

    def evaluate(self, jobs: Sequence[Any]) -> list[dict[str, Any]]:
        """The family's rows for the trajectory ``jobs`` trained (in the worker)."""
        from polyak.averaging import SnapshotDir

        first = jobs[0]
        model, score, splits, bn_loader = evaluation_parts(first.task, first.seed)
        return evaluate(SnapshotDir(self.directory(first)), self.family, model, score, splits,
                        bn_loader)


def snapshot_observer(model: torch.nn.Module, jobs: Sequence[Any], directory: str | Path
                      ) -> Any:
    """:class:`~polyak.averaging.Snapshots` of the trajectory the runs ``jobs`` (Jobs of
    one task, seed and budget) train, every epoch with EDM2's two profiles, to ``directory``
    (another run's snapshots there are replaced; a resumed run's kept), with the meta
    ``polyak posthoc`` reads: task, its config, methods, seed, epochs, the last lr phase's
    first epoch and each run's identity."""
    from polyak.averaging import Snapshots

    first = jobs[0]
    meta = {"task": first.task.name, "task_config": first.task.config(),
            "methods": [j.spec for j in jobs], "seed": first.seed, "epochs": first.epochs,
            "last_phase": _last_phase_of(first), "runs": {j.spec: _identity(j) for j in jobs}}
    return Snapshots(model, directory, every="epoch", profiles=SNAPSHOT_PROFILES, meta=meta,
                     overwrite=True)


def _identity(job: Any) -> dict[str, Any]:
    from polyak.bench.train import run_identity

    return run_identity(job.task, job.spec, job.seed, job.epochs)


def _last_phase_of(job: Any) -> int | None:
    """The first epoch of the last constant-lr phase of the run's schedule (None: no phases)."""
    from polyak._budget import schedule_rule
    from polyak._recipe_parts import _budget_epochs
    from polyak.bench import protocols
    from polyak.bench.train import resolve_overrides, steps_per_epoch

    rec = protocols.parse(job.spec)
    rec = rec.with_overrides(**resolve_overrides(job.task, job.spec, job.epochs))
    hp = rec.hyperparameters(job.epochs, steps_per_epoch(job.task, job.task.load()))
    run = _budget_epochs(hp.get("budget", 1.0), job.epochs)
    phases = schedule_rule(hp["schedule"]).phases(run)
    return None if not phases else run - phases[-1]


def _link(path: Path, target: Path) -> None:
    """``path`` -> ``target`` as a relative symbolic link (replacing an old directory there)."""
    import shutil

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    os.symlink(os.path.relpath(target, path.parent), path, target_is_directory=True)
