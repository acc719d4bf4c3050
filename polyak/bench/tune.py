"""Tuning on the validation split with the papers' protocols: Optuna ask-and-tell, polyak's runner.

Each method (an arm of a paper's protocol, or a recipe) has a :class:`~polyak.bench.protocols.Plan`
saying how its paper chose its hyper-parameters:

- **stages**, tuned in order, each a grid (``sgd@tso-alra``: lr in {1e-1, ..., 1e-4};
  ``tso-alra``: lr x switch epoch; ``sgdm@gadam``: the lr, then the weight decay with that lr
  fixed; Gadam App. B.2). Each stage is an Optuna study with a ``GridSampler`` over it: the driver
  *asks* it for trials, turns each into runs (``<method>:<hp>=<value>,...`` x ``seeds``, every
  value fixed so far written into the spec), runs the trials of every method whose stage is ready
  together on the bench's worker pool (:func:`polyak.bench.runner.run_grid`) and *tells* each
  trial its score;
- a **shared** start: the tuned values of another method (``swa`` starts from, and keeps,
  ``sgdm@gadam``'s; ``padam@gadam`` takes its lr and tunes its own weight decay; ``sgdl``'s grid
  is relative to ``sgdm@sgdl``'s lr), run once that method is tuned;
- neither: the settings the paper fixed (PWA's lr 0.1; AdamW's default lr in the Gadam paper).

Grid values may be rules resolved when their stage runs (epochs scaled to the budget, a
decoupled weight decay per unit lr, multiples of the shared lr): see
:mod:`polyak.bench.protocols`.

Fairness: every stage gets the same trial budget (``trials``, default the largest grid, so every
grid is run completely; a larger grid is sampled by the seeded ``GridSampler``), the same seeds
and epochs, and is selected on the mean final validation accuracy of the weights the method
reports (ties: the lower mean validation NLL; a diverged run counts as accuracy 0); on a task
whose metric is its loss (a user's regression or language model), on the lowest mean final
validation loss (a diverged run counts as an infinite loss). The test split is never read. A
winner at the edge of its grid (the best lr is the largest tried) is recorded in ``edges``: the
report and the tuned file say so.

Resuming: the runs are the store's (identity: task, spec, seed, epochs, config), so an interrupted
tuning re-run with the same command asks the same trials (the samplers are seeded) and runs only
the missing runs. :func:`write_tuned` writes the winners (``method -> {hp: value}``) with the
protocols, grids, every trial's score, the edges and the command to a file of the user's;
``polyak bench --tuned FILE`` reads it. The package's shipped files are never written.
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
from polyak.bench import protocols
from polyak.bench.protocols import Context, Plan
from polyak.bench.resume import ResumePolicy
from polyak.bench.runner import GridSummary, Job, run_grid
from polyak.bench.store import Store
from polyak.bench.tasks import NO_TUNED_FILE, Task

__all__ = ["TuneResult", "Trial", "plan_methods", "grid_of", "pick_best", "tune", "write_tuned",
           "edges_of"]

SELECTION = ("max mean final validation accuracy of the reported weights over the seeds "
             "(ties: lower mean validation NLL; diverged = accuracy 0); test split not read")
SELECTION_LOSS = ("min mean final validation loss (the task's metric) of the reported weights "
                  "over the seeds (diverged = infinite loss); test split not read")


@dataclass
class Trial:
    """One grid point of one stage of one method: its hyper-parameters (the point), the runs
    (whose specs also fix the values chosen before) and, once run, its score."""

    method: str
    params: dict[str, Any]
    jobs: list[Job]
    val_acc: float = math.nan
    val_loss: float = math.nan
    stage: int = 0

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
    edges: dict[str, list[str]] = field(default_factory=dict)


def plan_methods(methods: Sequence[str]) -> list[str]:
    """``methods`` and the methods they share tuning with, each after the one it shares."""
    order: list[str] = []

    def visit(name: str, seen: tuple[str, ...] = ()) -> None:
        rec = protocols.parse(name)
        if rec.overrides:
            raise ValueError(f"Invalid method for tuning: {name!r} (allowed: method names; the "
                             "tuner sets the hyper-parameters)")
        if name in seen:
            raise ValueError(f"Invalid tuning plan: {' -> '.join((*seen, name))} is a cycle")
        shares = protocols.plan(name).shares
        if shares is not None:
            visit(shares, (*seen, name))
        if name not in order:
            order.append(name)

    for name in methods:
        visit(name)
    return order


def _run_epochs(method: str, epochs: int) -> int:
    """The epochs ``method`` trains at a budget of ``epochs`` (its ``budget`` fraction)."""
    hp = {**protocols.parse(method).defaults}
    return parts._budget_epochs(hp.get("budget", 1.0), epochs)


def grid_of(method: str, epochs: int, steps_per_epoch: int, stage: int = 0,
            values: dict[str, Any] | None = None, shared: dict[str, Any] | None = None
            ) -> dict[str, list[Any]]:
    """Stage ``stage`` of ``method``'s plan at this budget: rules resolved against ``values``
    (fixed so far) and ``shared`` (the shared method's tuned values), duplicates dropped."""
    plan = protocols.plan(method)
    values = dict(values or {})
    if shared is None and plan.shares is not None:
        raise ValueError(f"{method}: its grid starts from {plan.shares}'s tuned values, which "
                         "are missing")
    ctx = Context(_run_epochs(method, epochs), steps_per_epoch,
                  {**_fixed(method), **values}, shared or {})
    return plan.grid(stage, ctx)


def _fixed(method: str) -> dict[str, Any]:
    """The method's own values (its defaults), for rules such as a weight decay per unit lr."""
    return dict(protocols.parse(method).defaults)


def _spec(method: str, params: dict[str, Any]) -> str:
    # the run's name in the store (its identity); values are numbers, so text is exact enough
    return f"{method}:" + ",".join(f"{k}={v!r}" for k, v in params.items())


def _ask(task: Task, method: str, stage: int, grid: dict[str, list[Any]], fixed: dict[str, Any],
         trials: int, seeds: int, epochs: int, sampler_seed: int,
         resume: ResumePolicy | None = None) -> tuple[Any, list[tuple[Any, Trial]]]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", study_name=f"{method}/{stage}",
                                sampler=optuna.samplers.GridSampler(grid, seed=sampler_seed))
    asked = []
    for _ in range(min(trials, math.prod(len(v) for v in grid.values()))):
        trial = study.ask()
        params = {hp: trial.suggest_categorical(hp, values) for hp, values in grid.items()}
        spec = _spec(method, {**fixed, **params})
        jobs = [Job(task, spec, s, epochs, resume=resume) for s in range(seeds)]
        asked.append((trial, Trial(method, params, jobs, stage=stage)))
    return study, asked


def _score(store: Store, trial: Trial) -> None:
    accs, losses = [], []
    for job in trial.jobs:
        run = store.run(job.key)
        curve = store.metrics(run["id"]) if run and run["status"] == "complete" else []
        acc = curve[-1]["val_acc"] if curve else 0.0
        accs.append(math.nan if acc is None else acc)  # None: a loss-only task
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


def pick_best(trials: Sequence[Trial], metric: str = "accuracy") -> Trial:
    """The trial with the highest mean validation accuracy, then the lowest mean NLL; with
    ``metric="loss"`` the lowest mean validation loss."""
    if metric == "loss":
        return min(trials, key=lambda t: t.val_loss)
    return max(trials, key=lambda t: (t.val_acc, -t.val_loss))


def edges_of(grid: dict[str, list[Any]], best: dict[str, Any]) -> list[str]:
    """The winner's values at an end of a numeric grid of three or more values."""
    out = []
    for hp, values in grid.items():
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(numbers) < 3 or len(numbers) != len(values) or hp not in best:
            continue
        low, high = min(numbers), max(numbers)
        if best[hp] in (low, high):
            end = "largest" if best[hp] == high else "smallest"
            out.append(f"{hp}={best[hp]:g} is the {end} of its grid ({low:g}..{high:g})")
    return out


@dataclass
class _Progress:
    """One method's way through its plan."""

    plan: Plan
    values: dict[str, Any] | None = None
    stage: int = 0


def _ready(order: list[str], state: dict[str, _Progress], result: TuneResult, epochs: int,
           spe: int) -> dict[str, tuple[dict[str, list[Any]], dict[str, Any]]]:
    """The next stage of every method that can run one now (its shared method is tuned);
    methods with no stage left are finished into ``result``."""
    batch = {}
    for method in order:
        prog = state[method]
        if method in result.tuned:
            continue
        source = prog.plan.shares
        if source is not None and source not in result.tuned:
            continue
        shared = result.tuned.get(source, {}) if source is not None else {}
        if prog.values is None:
            prog.values = prog.plan.start(shared)
        if prog.stage < len(prog.plan.stages):
            grid = grid_of(method, epochs, spe, prog.stage, prog.values,
                           shared if source is not None else None)
            batch[method] = (grid, dict(prog.values))
        else:
            result.tuned[method] = dict(prog.values)
            if source is not None:
                result.shared[method] = source
    return batch


def _run_stage(store: Store, task: Task, batch: dict[str, tuple[dict[str, list[Any]],
                                                                  dict[str, Any]]],
               state: dict[str, _Progress], trials: int, seeds: int, epochs: int,
               sampler_seed: int, workers: int | None, show_progress: bool, result: TuneResult,
               executor: Any = None, resume: ResumePolicy | None = None) -> bool:
    """Ask every ready method's trials, run them together, tell the scores; False if
    interrupted."""
    studies = {m: _ask(task, m, state[m].stage, grid, fixed, trials, seeds, epochs,
                       sampler_seed, resume) for m, (grid, fixed) in batch.items()}
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
            _tell(study, trial, -record.val_loss if task.metric == "loss" else record.val_acc)
        done = [t for _, t in asked]
        result.trials.setdefault(method, []).extend(done)
        best = pick_best(done, task.metric).params
        result.edges.setdefault(method, []).extend(edges_of(batch[method][0], best))
        prog = state[method]
        prog.values = {**(prog.values or {}), **best}
        prog.stage += 1
    return True


def tune(store: Store, task: Task, methods: Sequence[str], epochs: int, seeds: int = 1,
         trials: int | None = None, workers: int | None = None, sampler_seed: int = 0,
         show_progress: bool = True, executor: Any = None,
         resume: ResumePolicy | None = None) -> TuneResult:
    """Tune ``methods`` (and the methods they share tuning with) on ``task``; see the module.
    ``executor``: where the runs execute (default: the local pool of ``workers``; see
    :func:`polyak.bench.runner.run_grid`); ``resume``: the runs' mid-run checkpoints
    (:mod:`polyak.bench.resume`)."""
    from polyak.bench.train import steps_per_epoch

    task = task.replace(tuned_path=NO_TUNED_FILE)  # trials run from the methods' settings
    spe = steps_per_epoch(task, task.load())
    order = plan_methods(methods)
    state = {m: _Progress(protocols.plan(m)) for m in order}
    budget = trials if trials is not None else max((p.plan.size() for p in state.values()),
                                                   default=1) or 1
    if budget < 1:
        raise ValueError(f"Invalid trials: {budget!r} (allowed: an integer >= 1)")
    result = TuneResult({}, {}, {})
    while len(result.tuned) < len(order):
        batch = _ready(order, state, result, epochs, spe)
        if batch and not _run_stage(store, task, batch, state, budget, seeds, epochs,
                                    sampler_seed, workers, show_progress, result, executor,
                                    resume):
            return result
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
                selection=SELECTION_LOSS if task.metric == "loss" else SELECTION,
                trials_per_method=max(sizes.values(), default=0)
                if trials is None else trials)
    data.setdefault("commands", [])
    if command and command not in data["commands"]:
        data["commands"].append(command)
    for key in ("tuned", "protocol", "grid", "scores", "shared", "edges"):
        data.setdefault(key, {})
    data["tuned"].update(result.tuned)
    data["shared"].update(result.shared)
    for method in result.tuned:
        plan = protocols.plan(method)
        data["protocol"][method] = plan.text or plan.describe()
        data["edges"][method] = result.edges.get(method, [])
    for method, ts in result.trials.items():
        stages = sorted({t.stage for t in ts})
        data["grid"][method] = [{hp: sorted({t.params[hp] for t in ts if t.stage == i})
                                 for hp in next(t for t in ts if t.stage == i).params}
                                for i in stages]
        data["scores"][method] = [{"stage": t.stage, "params": t.params,
                                   "val_acc": round(t.val_acc, 5)
                                   if math.isfinite(t.val_acc) else None,
                                   "val_loss": round(t.val_loss, 5)
                                   if math.isfinite(t.val_loss) else None} for t in ts]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path
