"""Learning-rate tuning on the validation set: the fairness step of the benchmark.

For each method, ``polyak tune`` runs the spec ``<method>:lr=<x>`` for every ``x`` of a
logarithmic grid around the recipe's published default (multipliers ``1/10, 1/3, 1, 3, 10`` by
default), ``seeds`` seeds each, with the task's budget (or ``epochs``), and keeps the learning
rate with the highest mean final validation accuracy of the reported weights (ties: lower mean
validation NLL; a diverged run counts as accuracy 0). The test set is never looked at.
When the winner lies on an edge of the grid, the grid is extended past that edge by the grid's
outer ratio (about 3x) and the new point is run, up to ``max_extend`` times per method, so that
no method is handicapped by a grid centred on a poor default. The winners are merged into a
JSON file (by default the task's shipped file), recording the command, grid, seeds, epochs and
every grid point's mean validation accuracy.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polyak
from polyak.bench.models import get_model
from polyak.bench.resume import ResumePolicy
from polyak.bench.runner import GridSummary, Job, run_grid
from polyak.bench.store import Store
from polyak.bench.tasks import Task
from polyak.bench.train import _LR_IN_SPEC

__all__ = ["DEFAULT_GRID", "default_lr", "tune_jobs", "pick_best", "tune", "TuneResult"]

DEFAULT_GRID = (0.1, 1 / 3, 1.0, 3.0, 10.0)


def default_lr(task: Task, spec: str, epochs: int) -> float:
    """The learning rate the recipe uses by default (no tuned value applied)."""
    if _LR_IN_SPEC.search(spec):
        raise ValueError(f"Invalid method for tuning: {spec!r} sets lr itself")
    splits = task.load()
    model = get_model(task.model, **task.model_kwargs)
    steps = math.ceil(len(splits.x_train) / task.batch_size)
    return float(polyak.recipe(spec, model, epochs=epochs, steps_per_epoch=steps).lr)


def _with_lr(spec: str, lr: float) -> str:
    return f"{spec}{',' if ':' in spec else ':'}lr={lr:.6g}"


def tune_jobs(task: Task, methods: Sequence[str], grid: Sequence[float], seeds: int,
              epochs: int) -> dict[str, list[tuple[float, list[Job]]]]:
    """method -> [(lr, jobs over seeds)] for every grid multiplier."""
    if not grid or any(not (math.isfinite(g) and g > 0) for g in grid):
        raise ValueError(f"Invalid grid: {list(grid)} (allowed: positive multipliers)")
    out: dict[str, list[tuple[float, list[Job]]]] = {}
    for method in methods:
        base = default_lr(task, method, epochs)
        out[method] = [_point(task, method, base * mult, seeds, epochs) for mult in grid]
    return out


def pick_best(scores: Sequence[tuple[float, float, float]]) -> float:
    """The lr of the best ``(lr, mean val acc, mean val loss)``: highest acc, then lowest loss."""
    return max(scores, key=lambda s: (s[1], -s[2] if math.isfinite(s[2]) else -math.inf))[0]


@dataclass
class TuneResult:
    lrs: dict[str, float]
    scores: dict[str, list[tuple[float, float, float]]]
    summary: GridSummary
    path: Path | None


def _score(store: Store, jobs: list[Job]) -> tuple[float, float]:
    accs, losses = [], []
    for job in jobs:
        run = store.run(job.key)
        ok = run is not None and run["status"] == "complete"
        curve = store.metrics(run["id"]) if ok else []
        ok = ok and bool(curve)
        accs.append(curve[-1]["val_acc"] if ok else 0.0)
        losses.append(curve[-1]["val_loss"] if ok else math.inf)
    return sum(accs) / len(accs), sum(losses) / len(losses)


def tune(store: Store, task: Task, plan: dict[str, list[tuple[float, list[Job]]]],
         grid: Sequence[float], seeds: int, epochs: int, workers: int | None = None,
         out: str | Path | None = None, command: str = "", show_progress: bool = True,
         max_extend: int = 3, executor: Any = None, resume: ResumePolicy | None = None
         ) -> TuneResult:
    """Run the ``plan`` of :func:`tune_jobs` (resumable through ``store``), pick each method's
    lr and merge the winners into ``out`` (default: the task's tuned file). ``executor``: where
    the runs execute (default: the local pool of ``workers``; see :func:`run_grid`); ``resume``:
    the runs' mid-run checkpoints (:mod:`polyak.bench.resume`)."""
    plan = {m: list(points) for m, points in plan.items()}
    for round_ in range(max_extend + 1):
        jobs = [dataclasses.replace(job, resume=resume)
                for points in plan.values() for _, js in points for job in js]
        summary = run_grid(store, jobs, workers=workers, show_progress=show_progress,
                           executor=executor)
        if summary.interrupted:
            return TuneResult({}, {}, summary, None)
        scores = {m: [(lr, *_score(store, js)) for lr, js in pts] for m, pts in plan.items()}
        lrs = {m: pick_best(s) for m, s in scores.items()}
        if round_ == max_extend or not _extend(plan, lrs, task, seeds, epochs):
            break
    path = Path(out) if out is not None else task.tuned_file()
    _merge(path, task, lrs, scores, grid, seeds, epochs, command)
    return TuneResult(lrs, scores, summary, path)


def _extend(plan: dict[str, list[tuple[float, list[Job]]]], lrs: dict[str, float], task: Task,
            seeds: int, epochs: int) -> bool:
    """Add one grid point past the edge each edge winner sits on; whether any was added."""
    added = False
    for method, points in plan.items():
        if len(points) < 2:
            continue
        grid_lrs = [lr for lr, _ in points]
        if lrs[method] == grid_lrs[-1]:
            new = _point(task, method, grid_lrs[-1] * grid_lrs[-1] / grid_lrs[-2], seeds, epochs)
            points.append(new)
        elif lrs[method] == grid_lrs[0]:
            new = _point(task, method, grid_lrs[0] * grid_lrs[0] / grid_lrs[1], seeds, epochs)
            points.insert(0, new)
        else:
            continue
        added = True
    return added


def _point(task: Task, method: str, lr: float, seeds: int, epochs: int
           ) -> tuple[float, list[Job]]:
    spec = _with_lr(method, lr)
    return float(spec.rsplit("lr=", 1)[1]), [Job(task, spec, s, epochs) for s in range(seeds)]


def _merge(path: Path, task: Task, lrs: dict[str, float],
           scores: dict[str, list[tuple[float, float, float]]], grid: Sequence[float],
           seeds: int, epochs: int, command: str) -> None:
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise ValueError(f"Invalid tuned learning-rate file {path}: {exc}") from None
    data.update(task=task.name, polyak_version=polyak.__version__, epochs=epochs, seeds=seeds,
                grid=[round(g, 6) for g in grid], selection="max mean final val acc")
    data.setdefault("commands", [])
    if command and command not in data["commands"]:
        data["commands"].append(command)
    data["lr"] = {**data.get("lr", {}), **lrs}
    data["val_acc"] = {**data.get("val_acc", {}),
                       **{m: {f"{lr:.6g}": round(acc, 5) for lr, acc, _ in s}
                          for m, s in scores.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
