"""The report of a benchmark: per task a results table, a test-error figure and the paper claims.

Results table (one row per method, ranked by mean final test accuracy): finished runs
(``complete`` and ``diverged`` counted apart; statistics use complete runs only, a diverged
run is reported, never averaged in), final test accuracy and NLL as mean +- std over seeds,
the best epoch (0-based, as ``end_epoch`` numbers it: the highest mean validation accuracy of
the reported weights:
the test set is not used to choose it), wall time per run, and Welch's t-test of the final test
accuracy against the method's baseline (``polyak.recipes.BASELINES``): the difference in
percentage points with its 95 % CI and the p-value.

The report is Markdown: printed to stdout and written to ``<out>/report.md``, with the figures
``<out>/<task>-test-error.png`` beside it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polyak
from polyak.bench.claims import CLAIMS, Claim, ClaimResult, evaluate_claim
from polyak.bench.plots import plot_test_error
from polyak.bench.stats import mean_std, welch
from polyak.bench.store import Store

__all__ = ["MethodRow", "TaskReport", "collect", "task_report", "to_markdown", "write_report",
           "baseline_of"]

Curve = Sequence[Mapping[str, Any]]


@dataclass
class MethodRow:
    """One row of a task's results table."""

    method: str
    complete: int
    diverged: int
    failed: int
    acc_mean: float
    acc_std: float
    nll_mean: float
    nll_std: float
    best_epoch: int | None
    time_per_run: float
    rank: int | None = None
    baseline: str | None = None
    vs_baseline: Any = None  # stats.Welch of the accuracy difference (pp) or None


@dataclass
class TaskReport:
    task: str
    epochs: int
    description: str
    rows: list[MethodRow]
    claims: list[ClaimResult]
    curves: dict[str, list[Curve]] = field(default_factory=dict)
    figure: Path | None = None


def baseline_of(spec: str) -> str | None:
    """The baseline a method spec is tested against (by its recipe name, overrides dropped)."""
    return polyak.recipes.BASELINES.get(spec.split(":", 1)[0].strip())


def collect(store: Store, keys: Sequence[Any]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """task -> method -> runs (store rows with their ``curve``) for the given run keys."""
    wanted = {(k.task, k.method, k.seed, k.epochs, k.hash) for k in keys}
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for run in store.runs():
        ident = (run["task"], run["method"], run["seed"], run["epochs"], run["config_hash"])
        if ident not in wanted:
            continue
        run["curve"] = store.metrics(run["id"]) if run["status"] in ("complete", "diverged") else []
        out.setdefault(run["task"], {}).setdefault(run["method"], []).append(run)
    return out


def _best_epoch(curves: list[Curve]) -> int | None:
    if not curves:
        return None
    length = min(len(c) for c in curves)
    means = [sum(c[i]["val_acc"] or 0.0 for c in curves) / len(curves) for i in range(length)]
    return max(range(length), key=lambda i: (means[i], -i)) if length else None


def _method_row(method: str, runs: list[dict[str, Any]]) -> MethodRow:
    done = [r for r in runs if r["status"] == "complete" and r["curve"]]
    acc = [100.0 * r["curve"][-1]["test_acc"] for r in done]
    nll = [r["curve"][-1]["test_loss"] for r in done]
    times = [r["wall_time"] for r in runs if r["wall_time"] is not None]
    return MethodRow(
        method=method, complete=len(done),
        diverged=sum(r["status"] == "diverged" for r in runs),
        failed=sum(r["status"] == "failed" for r in runs),
        acc_mean=mean_std(acc)[0], acc_std=mean_std(acc)[1],
        nll_mean=mean_std(nll)[0], nll_std=mean_std(nll)[1],
        best_epoch=_best_epoch([r["curve"] for r in done]),
        time_per_run=sum(times) / len(times) if times else math.nan)


def task_report(task: str, epochs: int, description: str,
                runs_by_method: Mapping[str, list[dict[str, Any]]],
                claims: Sequence[Claim] = CLAIMS, baseline: str | None = None) -> TaskReport:
    """Rows (ranked, with the baseline tests) and claim verdicts of one task. ``baseline``: the
    method every other one is tested against (default: each method's own, BASELINES)."""
    rows = [_method_row(m, runs) for m, runs in runs_by_method.items()]
    ranked = sorted((r for r in rows if r.complete), key=lambda r: -r.acc_mean)
    for rank, row in enumerate(ranked, 1):
        row.rank = rank
    rows = ranked + [r for r in rows if not r.complete]
    curves = {m: [r["curve"] for r in runs if r["status"] == "complete" and r["curve"]]
              for m, runs in runs_by_method.items()}
    finals = {m: [100.0 * c[-1]["test_acc"] for c in cs] for m, cs in curves.items()}
    for row in rows:
        base = baseline if baseline is not None else baseline_of(row.method)
        if base is None or base == row.method:
            continue
        if not finals.get(base):
            row.baseline = f"{base} (not run)"
        elif finals[row.method]:
            row.baseline, row.vs_baseline = base, welch(finals[row.method], finals[base])
    results = [evaluate_claim(c, curves, epochs) for c in claims]
    return TaskReport(task, epochs, description, rows, results, curves)


def _pm(mean: float, std: float, digits: int) -> str:
    if math.isnan(mean):
        return "—"
    return f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}")


def _ci(low: float, high: float, digits: int = 2) -> str:
    return "—" if math.isnan(low) else f"[{low:+.{digits}f}, {high:+.{digits}f}]"


def _p(p: float) -> str:
    return "—" if math.isnan(p) else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")


def _rows_markdown(report: TaskReport) -> list[str]:
    lines = ["| rank | method | runs | test acc (%) | test NLL | best epoch | s/run "
             "| baseline | Δ acc (pp) [95% CI] | p |",
             "|---:|---|---|---:|---:|---:|---:|---|---:|---:|"]
    for r in report.rows:
        runs = f"{r.complete}"
        runs += f" (+{r.diverged} diverged)" if r.diverged else ""
        runs += f" (+{r.failed} failed)" if r.failed else ""
        test = r.vs_baseline
        vs = (f"{test.diff:+.2f} {_ci(test.low, test.high)}", _p(test.p)) if test else ("—", "—")
        time = "—" if math.isnan(r.time_per_run) else f"{r.time_per_run:.1f}"
        lines.append(
            f"| {r.rank or '—'} | {r.method} | {runs} | {_pm(r.acc_mean, r.acc_std, 2)} | "
            f"{_pm(r.nll_mean, r.nll_std, 4)} | {'—' if r.best_epoch is None else r.best_epoch} | "
            f"{time} | "
            f"{r.baseline or '—'} | {vs[0]} | {vs[1]} |")
    return lines


def _claims_markdown(report: TaskReport) -> list[str]:
    lines = ["| paper | claim | A vs B | metric | gain of A [95% CI] | p | verdict |",
             "|---|---|---|---|---:|---:|---|"]
    for res in report.claims:
        c = res.claim
        where = "final" if c.at == 1.0 else f"epoch {max(1, round(c.at * report.epochs))}"
        metric = f"{'test acc' if c.metric == 'test_acc' else 'test NLL'} ({where})"
        if c.direction == "matches":
            metric += f", ±{c.margin:g} {c.unit}"
        gain = "—" if math.isnan(res.diff) else (
            f"{res.diff:+.{2 if c.unit == 'pp' else 4}f} {c.unit} "
            f"{_ci(res.low, res.high, 2 if c.unit == 'pp' else 4)}")
        verdict = f"**{res.verdict}**" if res.verdict in ("supported", "contradicted") \
            else res.verdict
        lines.append(f"| {c.paper} | {c.text} | {c.a} vs {c.b} (n={res.n_a}/{res.n_b}) | "
                     f"{metric} | {gain} | {_p(res.p)} | {verdict} |")
    return lines


def to_markdown(reports: Sequence[TaskReport], notes: Sequence[str] = ()) -> str:
    """The whole report as Markdown."""
    lines = [f"# polyak benchmark report (polyak {polyak.__version__})", ""]
    lines += [f"- {n}" for n in notes] + ([""] if notes else [])
    for rep in reports:
        lines += [f"## {rep.task} ({rep.epochs} epochs)", "", rep.description, "",
                  "Final test accuracy and NLL of the weights each method reports, mean ± std "
                  "over seeds; Δ acc: Welch t-test against the method's baseline.", ""]
        lines += _rows_markdown(rep) + [""]
        missing = sorted({r.baseline.split()[0] for r in rep.rows
                          if r.baseline and r.baseline.endswith("(not run)")})
        if missing:
            lines += [f"Baselines not run: {', '.join(missing)}. Run them too (`--methods`), "
                      "or compare with a method that was run: `polyak report --baseline NAME`.",
                      ""]
        if rep.figure is not None:
            lines += [f"![test error of {rep.task}]({rep.figure.name})", "",
                      "The curves show the epochs at which the runs evaluated the reported "
                      "weights (full test set, BatchNorm recalibrated): 10 evenly spaced epochs "
                      "of the budget, the last one included.", ""]
        lines += ["### Paper claims", ""] + _claims_markdown(rep) + [""]
        failures = [f"- {m}: {n} failed run(s)" for m, n in
                    ((r.method, r.failed) for r in rep.rows) if n]
        if failures:
            lines += ["Failed runs (retried by the next `polyak bench`):", "", *failures, ""]
    return "\n".join(lines)


def write_report(store: Store, keys: Sequence[Any], out_dir: str | Path,
                 tasks: Mapping[str, tuple[int, str]], notes: Sequence[str] = (),
                 claims: Sequence[Claim] = CLAIMS,
                 baseline: str | None = None) -> tuple[str, list[TaskReport]]:
    """Build the reports of ``keys``, write ``report.md`` and the figures; the Markdown.

    ``tasks`` maps a task name to its (epochs, description); ``baseline`` as in
    :func:`task_report`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reports, collected = [], collect(store, keys)
    notes = [*notes, *machine_notes(collected)]
    for task, by_method in collected.items():
        epochs, description = tasks[task]
        rep = task_report(task, epochs, description, by_method, claims, baseline)
        if any(rep.curves.values()):
            rep.figure = plot_test_error(rep.curves, f"{task}: test error ({epochs} epochs)",
                                         out_dir / f"{task}-test-error.png")
        reports.append(rep)
    text = to_markdown(reports, notes)
    tmp = out_dir / "report.md.tmp"
    tmp.write_text(text + "\n")
    tmp.replace(out_dir / "report.md")
    return text, reports


def budgets_in_store(store: Store, task: str) -> list[int]:
    """The epoch budgets of ``task``'s runs in the store, largest first."""
    return sorted({run["epochs"] for run in store.runs(task)}, reverse=True)


def machine_notes(collected: Mapping[str, Mapping[str, list[dict[str, Any]]]]) -> list[str]:
    """A warning per task whose finished runs come from more than one torch build / CPU kernel
    set (runs are bit-for-bit reproducible only on the same machine and torch build; across
    CPUs they differ in the last bits, and after many epochs in the reported digits)."""
    notes = []
    for task, by_method in collected.items():
        machines = {(r.get("torch_version"), r.get("cpu_capability"))
                    for runs in by_method.values() for r in runs
                    if r["status"] in ("complete", "diverged")}
        known = sorted(f"torch {t} on {c}" for t, c in machines if t is not None)
        if len(machines) > 1:
            unknown = " and runs from a polyak that did not record it" \
                if any(t is None for t, _ in machines) else ""
            notes.append(f"{task}: the compared runs come from different machines "
                         f"({', '.join(known)}{unknown}); differences between them mix the "
                         "methods' effect with floating-point differences of the machines")
    return notes


def keys_in_store(store: Store, tasks: Sequence[Any], methods: Sequence[str] | None = None,
                  epochs: int | None = None) -> list[Any]:
    """Run keys of the store that the current configuration of ``tasks`` would produce.

    Per task: runs of ``epochs`` (default the task's budget) whose config hash matches what
    ``polyak bench`` computes today (task config and tuned learning rate), for ``methods``
    (default every method stored for the task), over every seed stored.
    """
    from polyak.bench.runner import Job

    keys = []
    for task in tasks:
        n_epochs = task.epochs if epochs is None else epochs
        expected: dict[str, str] = {}
        for run in store.runs(task.name):
            spec = run["method"]
            if run["epochs"] != n_epochs or (methods is not None and spec not in methods):
                continue
            if spec not in expected:
                expected[spec] = Job(task, spec, 0, n_epochs).key.hash
            if run["config_hash"] == expected[spec]:
                keys.append(Job(task, spec, run["seed"], n_epochs).key)
    return keys
