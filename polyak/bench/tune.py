"""Tuning on the validation split with the papers' protocols: Optuna ask-and-tell, polyak's runner.

Each recipe declares how its paper chose its hyper-parameters (:class:`polyak.recipes.Tuning`):

- a **grid** (``sgdm``: lr in {0.001, 0.01, 0.05, 0.1}; ``tso-alra``: lr x switch epoch; ``adam``:
  lr x beta1): an Optuna study with a ``GridSampler`` over it. The driver *asks* the study for
  trials, turns each into runs (``<method>:<hp>=<value>,...`` x ``seeds``), runs them all on the
  bench's worker pool (:func:`polyak.bench.runner.run_grid`), and *tells* each trial its score;
- a grid **relative** to another recipe's winner (``sgdl``: 10x..13x momentum SGD's tuned lr),
  run once that recipe is tuned;
- a **shared** tuning (``gadam`` reuses ``adamw``'s values, ``swa`` and ``pwa`` ``sgdm``'s, ``asgd``
  ``sgdm``'s with the lr doubled): no trials, the shared recipe's winner (times the scale);
- none: the published defaults (AdaBound in the PWA paper).

Fairness: every tuned recipe gets the same trial budget (``trials``, default the largest grid
among the recipes tuned, so every grid is run completely; a larger grid is sampled by the
seeded ``GridSampler``), the same seeds and epochs, and is selected on the mean final validation
accuracy of the weights it reports (ties: the lower mean validation NLL; a diverged run counts as
accuracy 0). The test split is never read. Budget rules in a grid (TSO-ALRA's switch epochs, "5,
10, 25 of 164") are resolved at the tuning budget.

Resuming: the runs are the store's (identity: task, spec, seed, epochs, config), so an interrupted
tuning re-run with the same command asks the same trials (the sampler is seeded) and runs only the
missing runs. :func:`write_tuned` writes the winners (``method -> {hp: value}``) with the protocol,
grids, every trial's score and the command to a file of the user's; ``polyak bench --tuned FILE``
reads it. The package's shipped files are never written.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polyak
from polyak import _recipe_parts as parts
from polyak.bench.resume import ResumePolicy
from polyak.bench.runner import GridSummary, Job, run_grid
from polyak.bench.store import Store
from polyak.bench.tasks import NO_TUNED_FILE, Task

__all__ = ["TuneResult", "Trial", "plan_methods", "grid_of", "pick_best", "tune", "write_tuned"]

SELECTION = ("max mean final validation accuracy of the reported weights over the seeds "
             "(ties: lower mean validation NLL; diverged = accuracy 0); test split not read")


@dataclass
class Trial:
    """One grid point of one method: its hyper-parameters, runs and (once run) score."""

    method: str
    params: dict[str, Any]
    jobs: list[Job]
    val_acc: float = math.nan
    val_loss: float = math.nan

    @property
    def spec(self) -> str:
        return self.jobs[0].spec


@dataclass
class TuneResult:
    tuned: dict[str, dict[str, Any]]
    trials: dict[str, list[Trial]]
    shared: dict[str, str]
    summary: GridSummary = field(default_factory=GridSummary)
    interrupted: bool = False


def plan_methods(methods: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """(grid methods, relative-grid methods, shared methods) for ``methods``, adding the recipes
    they depend on; a method with no tuning at all is left out."""
    order: list[str] = []

    def visit(name: str) -> None:
        rec = polyak.recipes.parse(name)
        if rec.overrides:
            raise ValueError(f"Invalid method for tuning: {name!r} (allowed: recipe names; the "
                             "tuner sets the hyper-parameters)")
        if rec.tuning.shares is not None:
            visit(rec.tuning.shares)
        if name not in order:
            order.append(name)

    for name in methods:
        visit(name)
    recs = {n: polyak.recipes.parse(n).tuning for n in order}
    grid = [n for n in order if recs[n].tuned and not recs[n].relative]
    relative = [n for n in order if recs[n].relative]
    shared = [n for n in order if recs[n].shares is not None and not recs[n].tuned]
    return grid, relative, shared


def grid_of(method: str, epochs: int, steps_per_epoch: int,
            base: dict[str, Any] | None = None) -> dict[str, list[Any]]:
    """The method's grid at this budget: rules resolved, duplicates dropped, relative values
    multiplied by ``base`` (the shared recipe's tuned values)."""
    tuning = polyak.recipes.parse(method).tuning
    out: dict[str, list[Any]] = {}
    for hp, values in tuning.grid.items():
        resolved = [v(epochs, steps_per_epoch) if isinstance(v, parts.Rule) else v
                    for v in values]
        if tuning.relative:
            if base is None or hp not in base:
                raise ValueError(f"{method}: the grid of {hp} is relative to "
                                 f"{tuning.shares}'s tuned value, which is missing")
            resolved = [float(f"{v * base[hp]:.6g}") for v in resolved]
        out[hp] = list(dict.fromkeys(resolved))
    return out


def _spec(method: str, params: dict[str, Any]) -> str:
    # the run's name in the store (its identity); values are numbers, so text is exact enough
    return f"{method}:" + ",".join(f"{k}={v!r}" for k, v in params.items())


def _ask(task: Task, method: str, grid: dict[str, list[Any]], trials: int, seeds: int,
         epochs: int, sampler_seed: int, resume: ResumePolicy | None = None
         ) -> tuple[Any, list[tuple[Any, Trial]]]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", study_name=method,
                                sampler=optuna.samplers.GridSampler(grid, seed=sampler_seed))
    asked = []
    for _ in range(min(trials, math.prod(len(v) for v in grid.values()))):
        trial = study.ask()
        params = {hp: trial.suggest_categorical(hp, values) for hp, values in grid.items()}
        jobs = [Job(task, _spec(method, params), s, epochs, resume=resume)
                for s in range(seeds)]
        asked.append((trial, Trial(method, params, jobs)))
    return study, asked


def _score(store: Store, trial: Trial) -> None:
    accs, losses = [], []
    for job in trial.jobs:
        run = store.run(job.key)
        curve = store.metrics(run["id"]) if run and run["status"] == "complete" else []
        accs.append(curve[-1]["val_acc"] if curve else 0.0)
        loss = curve[-1]["val_loss"] if curve else math.inf
        losses.append(loss if loss is not None and math.isfinite(loss) else math.inf)
    trial.val_acc, trial.val_loss = sum(accs) / len(accs), sum(losses) / len(losses)


def _tell(study: Any, trial: Any, value: float) -> None:
    """``study.tell``; a ``GridSampler`` whose grid is exhausted calls ``study.stop()``, which
    Optuna refuses outside ``optimize`` after the trial is stored: that refusal is harmless."""
    try:
        study.tell(trial, value)
    except RuntimeError as exc:
        if "Study.stop" not in str(exc):
            raise


def pick_best(trials: Sequence[Trial]) -> Trial:
    """The trial with the highest mean validation accuracy, then the lowest mean NLL."""
    return max(trials, key=lambda t: (t.val_acc, -t.val_loss))


def _run_stage(store: Store, task: Task, methods: dict[str, dict[str, list[Any]]], trials: int,
               seeds: int, epochs: int, sampler_seed: int, workers: int | None,
               show_progress: bool, result: TuneResult, executor: Any = None,
               resume: ResumePolicy | None = None) -> bool:
    """Ask every method's trials, run them together, tell the scores; False if interrupted."""
    studies = {m: _ask(task, m, g, trials, seeds, epochs, sampler_seed, resume)
               for m, g in methods.items()}
    jobs = [job for _, asked in studies.values() for _, t in asked for job in t.jobs]
    summary = run_grid(store, jobs, workers=workers, show_progress=show_progress,
                       executor=executor)
    for name in ("total", "skipped", "complete", "diverged", "failed"):
        setattr(result.summary, name, getattr(result.summary, name) + getattr(summary, name))
    if summary.interrupted:
        result.interrupted = True
        return False
    for method, (study, asked) in studies.items():
        for trial, record in asked:
            _score(store, record)
            _tell(study, trial, record.val_acc)
        result.trials[method] = [t for _, t in asked]
        result.tuned[method] = dict(pick_best(result.trials[method]).params)
    return True


def tune(store: Store, task: Task, methods: Sequence[str], epochs: int, seeds: int = 1,
         trials: int | None = None, workers: int | None = None, sampler_seed: int = 0,
         show_progress: bool = True, executor: Any = None,
         resume: ResumePolicy | None = None) -> TuneResult:
    """Tune ``methods`` (and the recipes they share tuning with) on ``task``; see the module.
    ``executor``: where the runs execute (default: the local pool of ``workers``; see
    :func:`polyak.bench.runner.run_grid`); ``resume``: the runs' mid-run checkpoints
    (:mod:`polyak.bench.resume`)."""
    from polyak.bench.train import steps_per_epoch

    task = task.replace(tuned_path=NO_TUNED_FILE)  # trials run from the recipes' defaults
    spe = steps_per_epoch(task, task.load())
    grid_methods, relative, shared = plan_methods(methods)
    grids = {m: grid_of(m, epochs, spe) for m in grid_methods}
    sizes = [polyak.recipes.parse(m).tuning.size() for m in (*grid_methods, *relative)]
    budget = trials if trials is not None else max(sizes, default=1)
    if budget < 1:
        raise ValueError(f"Invalid trials: {budget!r} (allowed: an integer >= 1)")
    result = TuneResult({}, {}, {})
    if not _run_stage(store, task, grids, budget, seeds, epochs, sampler_seed, workers,
                      show_progress, result, executor, resume):
        return result
    rel = {m: grid_of(m, epochs, spe, result.tuned[polyak.recipes.parse(m).tuning.shares])
           for m in relative}
    if rel and not _run_stage(store, task, rel, budget, seeds, epochs, sampler_seed, workers,
                              show_progress, result, executor, resume):
        return result
    for method in shared:
        tuning = polyak.recipes.parse(method).tuning
        source = result.tuned.get(tuning.shares, {})
        result.tuned[method] = {k: float(f"{v * tuning.scale[k]:.6g}") if k in tuning.scale
                                else v for k, v in source.items()}
        result.shared[method] = tuning.shares
    return result


def write_tuned(path: str | Path, task: Task, result: TuneResult, epochs: int, seeds: int,
                command: str, trials: int | None = None) -> Path:
    """Merge ``result`` into the JSON file ``path`` (methods tuned again are replaced)."""
    path = Path(path)
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise ValueError(f"Invalid tuned hyper-parameter file {path}: {exc}") from None
        if data.get("task") not in (None, task.name) or data.get("epochs") not in (None, epochs):
            raise ValueError(f"Invalid out: {path} holds {data.get('task')} tuned at "
                             f"{data.get('epochs')} epochs (this is {task.name} at {epochs})")
    sizes = {m: len(ts) for m, ts in result.trials.items()}
    data.update(task=task.name, epochs=epochs, seeds=seeds, polyak_version=polyak.__version__,
                selection=SELECTION, trials_per_method=max(sizes.values(), default=0)
                if trials is None else trials)
    data.setdefault("commands", [])
    if command and command not in data["commands"]:
        data["commands"].append(command)
    for key in ("tuned", "protocol", "grid", "scores", "shared"):
        data.setdefault(key, {})
    data["tuned"].update(result.tuned)
    data["shared"].update(result.shared)
    for method in result.tuned:
        data["protocol"][method] = polyak.recipes.parse(method).tuning.protocol
    for method, ts in result.trials.items():
        data["grid"][method] = {hp: sorted({t.params[hp] for t in ts}) for hp in ts[0].params}
        data["scores"][method] = [{"params": t.params, "val_acc": round(t.val_acc, 5),
                                   "val_loss": round(t.val_loss, 5)
                                   if math.isfinite(t.val_loss) else None} for t in ts]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path
