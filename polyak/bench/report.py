"""The report of a benchmark: per task a results table, a test-error figure and the paper claims.

Results table (one row per method, ranked by mean final test accuracy): finished runs
(``complete`` and ``diverged`` counted apart; statistics use complete runs only, a diverged
run is reported, never averaged in), final test accuracy and NLL as mean +- std over seeds,
the best epoch (0-based, as ``end_epoch`` numbers it: the highest mean validation accuracy of
the reported weights: the test set is not used to choose it), wall time per run, and the paired
t-test (over the seeds both ran; Welch's test without common seeds) of the final test accuracy
against the method's baseline (``polyak.recipes.BASELINES``): the difference in percentage points
with its 95 % CI and the p-value (unadjusted: a description of the table, not a verdict).

Claims (:mod:`polyak.bench.claims`, defined per paper in :mod:`polyak.bench.protocols`): those
whose two arms both ran, each with the paper's own figure beside the gain [95 % CI], raw p and
Holm-adjusted p across the claims table, the verdict on the adjusted p, and for inconclusive claims
the smallest effect the run could detect (power 0.8) and the seeds the observed effect would need.
A claim whose arm diverged or collapsed to chance level on some seeds is "unstable", with the
counts in words. Below the claims, a card per paper: what it ran, what polyak ran (the tuned
values, and any tuned at the end of its grid), and every remaining deviation
(:mod:`polyak.bench.cards`).

A user's own task (:mod:`polyak.bench.own_report`) opens with a recommendation, and its claims
section is "the papers' comparisons on your task"; when the task's metric is its loss the table
ranks by the final test loss (lower is better) and the claims are read on it.

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
from polyak.bench import own_report, protocols
from polyak.bench.cards import cards_markdown
from polyak.bench.claims import ALPHA, Claim, ClaimResult, evaluate_claims
from polyak.bench.plots import plot_test_error
from polyak.bench.stats import mean_std, paired, welch
from polyak.bench.store import Store

__all__ = ["MethodRow", "TaskReport", "collect", "task_report", "to_markdown", "write_report",
           "baseline_of", "claims_summary"]

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
    vs_baseline: Any = None  # stats.Test of the accuracy difference (pp) or None


@dataclass
class TaskReport:
    task: str
    epochs: int
    description: str
    rows: list[MethodRow]
    claims: list[ClaimResult]
    curves: dict[str, list[Curve]] = field(default_factory=dict)
    figure: Path | None = None
    seeds: dict[str, list[Any]] = field(default_factory=dict)
    tuned: dict[str, dict[str, Any]] = field(default_factory=dict)
    edges: dict[str, list[str]] = field(default_factory=dict)
    troubles: dict[str, str] = field(default_factory=dict)
    unread: int = 0   # claims of the protocols not evaluated: an arm was not run
    outside: str = ""  # why the papers' claims do not cover this task (Task.outside_claims)
    metric: str = "accuracy"  # or "loss": a user's task whose loss is its metric
    own: bool = False  # a user's task: recommendation first, the papers' comparisons on it
    dropped: list[Claim] = field(default_factory=list)  # claims not read on a loss metric


def baseline_of(spec: str) -> str | None:
    """The baseline a method spec is tested against (its arm's, else its recipe's; overrides
    dropped); the table falls back to the recipe's when the arm's was not run."""
    return protocols.baseline_of(spec)


CHANCE_FACTOR = 1.5  # a run ending below 1.5x chance accuracy has collapsed (not learned)


def troubles_of(runs_by_method: Mapping[str, list[dict[str, Any]]],
                num_classes: int | None) -> dict[str, str]:
    """Method -> what went wrong on some seeds, in words: runs that diverged, and complete runs
    whose final test accuracy is below 1.5x chance (1/num_classes)."""
    out = {}
    for method, runs in runs_by_method.items():
        finished = [r for r in runs if r["status"] in ("complete", "diverged")]
        diverged = sum(r["status"] == "diverged" for r in finished)
        bits = [f"{diverged} of {len(finished)} runs diverged"] if diverged else []
        if num_classes:
            floor = CHANCE_FACTOR / num_classes
            low = sum(1 for r in finished if r["status"] == "complete" and r["curve"]
                      and (r["curve"][-1]["test_acc"] or 0.0) < floor)
            if low:
                bits.append(f"{low} of {len(finished)} runs at chance level (test accuracy "
                            f"< {100 * floor:.0f} %)")
        if bits:
            out[method] = ", ".join(bits)
    return out


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


def _best_epoch(curves: list[Curve], metric: str = "accuracy") -> int | None:
    if not curves:
        return None
    length = min(len(c) for c in curves)
    if metric == "loss":  # the lowest mean validation loss (epochs not evaluated: None)
        means = [sum(math.inf if c[i]["val_loss"] is None else c[i]["val_loss"]
                     for c in curves) / len(curves) for i in range(length)]
        return min(range(length), key=lambda i: (means[i], i)) if length else None
    means = [sum(c[i]["val_acc"] or 0.0 for c in curves) / len(curves) for i in range(length)]
    return max(range(length), key=lambda i: (means[i], -i)) if length else None


def _method_row(method: str, runs: list[dict[str, Any]], metric: str = "accuracy") -> MethodRow:
    done = [r for r in runs if r["status"] == "complete" and r["curve"]]
    acc = [100.0 * r["curve"][-1]["test_acc"] for r in done] if metric == "accuracy" else []
    nll = [r["curve"][-1]["test_loss"] for r in done]
    times = [r["wall_time"] for r in runs if r["wall_time"] is not None]
    return MethodRow(
        method=method, complete=len(done),
        diverged=sum(r["status"] == "diverged" for r in runs),
        failed=sum(r["status"] == "failed" for r in runs),
        acc_mean=mean_std(acc)[0], acc_std=mean_std(acc)[1],
        nll_mean=mean_std(nll)[0], nll_std=mean_std(nll)[1],
        best_epoch=_best_epoch([r["curve"] for r in done], metric),
        time_per_run=sum(times) / len(times) if times else math.nan)


def task_report(task: str, epochs: int, description: str,
                runs_by_method: Mapping[str, list[dict[str, Any]]],
                claims: Sequence[Claim] | None = None, baseline: str | None = None,
                num_classes: int | None = None, metric: str = "accuracy") -> TaskReport:
    """Rows (ranked, with the baseline tests) and claim verdicts of one task. ``claims``: by
    default the protocols' claims whose two arms both ran; ``baseline``: the method every
    other one is tested against (default: each method's own); ``num_classes``: for the chance
    level below which a run counts as collapsed; ``metric``: "loss" ranks and compares by the
    test loss and reads the claims on it (:func:`polyak.bench.own_report.claims_on_loss`)."""
    rows = [_method_row(m, runs, metric) for m, runs in runs_by_method.items()]
    ranked = sorted((r for r in rows if r.complete),
                    key=lambda r: r.nll_mean if metric == "loss" else -r.acc_mean)
    for rank, row in enumerate(ranked, 1):
        row.rank = rank
    rows = ranked + [r for r in rows if not r.complete]
    done = {m: sorted((r for r in runs if r["status"] == "complete" and r["curve"]),
                      key=lambda r: r.get("seed", 0)) for m, runs in runs_by_method.items()}
    curves = {m: [r["curve"] for r in rs] for m, rs in done.items()}
    seeds = {m: [r.get("seed", (m, i)) for i, r in enumerate(rs)]  # no seed: never paired
             for m, rs in done.items()}
    finals = {m: {s: own_report.final_score(c, "test", metric) for s, c in zip(seeds[m], curves[m])}
              for m in curves}
    for row in rows:
        options = [baseline] if baseline is not None else protocols.baselines_of(row.method)
        options = [b for b in options if b != row.method]
        if not options:
            continue
        base = next((b for b in options if finals.get(b)), options[0])
        if not finals.get(base):
            row.baseline = f"{base} (not run)"
        elif finals[row.method]:
            row.baseline, row.vs_baseline = base, _compare(finals[row.method], finals[base])
    unread = 0
    if claims is None:
        claims = protocols.claims_of(set(runs_by_method))
        unread = len(protocols.CLAIMS) - len(claims)
    dropped: list[Claim] = []
    if metric == "loss":
        claims, dropped = own_report.claims_on_loss(claims)
    troubles = troubles_of(runs_by_method, num_classes)
    results = evaluate_claims(claims, curves, epochs, seeds=seeds, troubles=troubles)
    return TaskReport(task, epochs, description, rows, results, curves, seeds=seeds,
                      troubles=troubles, unread=unread, metric=metric, dropped=dropped)


def _compare(a: dict[Any, float], b: dict[Any, float]) -> Any:
    """Paired test over the common seeds (at least two), else Welch's test."""
    common = sorted(set(a) & set(b), key=str)
    if len(common) >= 2:
        return paired([a[s] for s in common], [b[s] for s in common])
    return welch(list(a.values()), list(b.values()))


def _pm(mean: float, std: float, digits: int) -> str:
    if math.isnan(mean):
        return "—"
    return f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}")


def _ci(low: float, high: float, digits: int = 2) -> str:
    return "—" if math.isnan(low) else f"[{low:+.{digits}f}, {high:+.{digits}f}]"


def _p(p: float) -> str:
    return "—" if math.isnan(p) else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")


def _rows_markdown(report: TaskReport) -> list[str]:
    loss = report.metric == "loss"  # the loss is the metric: no accuracy column
    lines = ["| rank | method | runs | test acc (%) | test NLL | best epoch | s/run "
             "| baseline | Δ acc (pp) [95% CI] | p |",
             "|---:|---|---|---:|---:|---:|---:|---|---:|---:|"] if not loss else [
             "| rank | method | runs | test loss | best epoch | s/run | baseline "
             "| Δ loss [95% CI] | p |", "|---:|---|---|---:|---:|---:|---|---:|---:|"]
    for r in report.rows:
        runs = f"{r.complete}"
        runs += f" (+{r.diverged} diverged)" if r.diverged else ""
        runs += f" (+{r.failed} failed)" if r.failed else ""
        test = r.vs_baseline
        digits = 4 if loss else 2
        vs = (f"{test.diff:+.{digits}f} {_ci(test.low, test.high, digits)}", _p(test.p)) \
            if test else ("—", "—")
        time = "—" if math.isnan(r.time_per_run) else f"{r.time_per_run:.1f}"
        acc = "" if loss else f"{_pm(r.acc_mean, r.acc_std, 2)} | "
        lines.append(
            f"| {r.rank or '—'} | {r.method} | {runs} | {acc}"
            f"{_pm(r.nll_mean, r.nll_std, 4)} | {'—' if r.best_epoch is None else r.best_epoch} | "
            f"{time} | "
            f"{r.baseline or '—'} | {vs[0]} | {vs[1]} |")
    return lines


def _verdict_cell(res: ClaimResult) -> str:
    if res.verdict in ("supported", "contradicted"):
        return f"**{res.verdict}**"
    if res.verdict == "unstable":
        return f"unstable ({res.note})"
    return res.verdict


def _claims_markdown(report: TaskReport) -> list[str]:
    lines = ["| paper | claim | A vs B | paper's result | metric | gain of A [95% CI] | p "
             "| p (Holm) | verdict | detectable (power 0.8) | seeds for the observed gain |",
             "|---|---|---|---|---|---:|---:|---:|---|---:|---:|"]
    for res in report.claims:
        c = res.claim
        where = "final" if c.at == 1.0 else f"epoch {max(1, round(c.at * report.epochs))}"
        name = "test acc" if c.metric == "test_acc" else \
            "test NLL" if c.loss_unit == "nats" else "test loss"
        metric = f"{name} ({where})"
        if c.direction == "matches":
            metric += f", ±{c.margin:g} {c.unit}"
        digits = 2 if c.unit == "pp" else 4
        gain = "—" if math.isnan(res.diff) else (
            f"{res.diff:+.{digits}f} {c.unit} {_ci(res.low, res.high, digits)}")
        verdict = _verdict_cell(res)
        pairs = f"n={res.n_a}/{res.n_b}" + (", paired" if res.paired else "")
        mde = "—" if math.isnan(res.detectable) else f"{res.detectable:.{digits}f} {c.unit}"
        needed = "—" if res.verdict != "inconclusive" else (
            "> 100000" if res.seeds_needed is None else str(res.seeds_needed))
        lines.append(f"| {c.paper} | {c.text} | {c.a} vs {c.b} ({pairs}) | {c.figure or '—'} "
                     f"| {metric} | {gain} | {_p(res.p)} | {_p(res.p_adjusted)} | {verdict} | "
                     f"{mde} | {needed} |")
    return lines


def _gain(res: Any) -> str:
    digits = 2 if res.claim.unit == "pp" else 4
    return "—" if math.isnan(res.diff) else \
        f"{res.diff:+.{digits}f} {res.claim.unit} {_ci(res.low, res.high, digits)}"


def claims_side_by_side(reports: Sequence[TaskReport]) -> list[str]:
    """The claims of several tasks in one table: the paper's own result, then per task the
    gain of A [95% CI], the Holm-adjusted p (within that task's table) and the verdict."""
    heads = "".join(f" {r.task}: gain of A [95% CI] | p (Holm) | verdict |" for r in reports)
    lines = ["| claim | paper's result |" + heads, "|---|---|" + "---:|---:|---|" * len(reports)]
    by_text = [{res.claim.text: res for res in r.claims} for r in reports]
    claims = {res.claim.text: res.claim for r in reports for res in r.claims}
    for text, claim in claims.items():
        cells = ""
        for found in by_text:
            res = found.get(text)
            cells += " — | — | not in this report |" if res is None else \
                f" {_gain(res)} | {_p(res.p_adjusted)} | {_verdict_cell(res)} |"
        lines.append(f"| {text} | {claim.figure or '—'} |{cells}")
    return lines


def claims_summary(report: TaskReport) -> str:
    """"N supported, N contradicted, N inconclusive (Holm, alpha 0.05)"."""
    counts = {v: sum(r.verdict == v for r in report.claims)
              for v in ("supported", "contradicted", "inconclusive", "unstable", "not run")}
    text = ", ".join(f"{n} {v}" for v, n in counts.items() if n) or "no claim"
    tested = sum(r.verdict not in ("unstable", "not run") for r in report.claims)
    return f"{text} (Holm-adjusted p < {ALPHA:g} across the {tested} claims tested)"


def _evaluated(report: TaskReport) -> str:
    """Which epochs the curves hold points at, read from the runs' records."""
    points = max((sum(r.get("test_acc") is not None for r in curve)
                  for curves in report.curves.values() for curve in curves), default=0)
    if points >= report.epochs:
        return "every epoch"
    return f"{points} evenly spaced epochs of the budget, the last one included"


def to_markdown(reports: Sequence[TaskReport], notes: Sequence[str] = ()) -> str:
    """The whole report as Markdown."""
    lines = [f"# polyak benchmark report (polyak {polyak.__version__})", ""]
    lines += [f"- {n}" for n in notes] + ([""] if notes else [])
    for rep in reports:
        lines += [f"## {rep.task} ({rep.epochs} epochs)", "", rep.description, ""]
        if rep.own:
            lines += own_report.recommendation(rep)
        lines += ["Final test accuracy and NLL of the weights each method reports, mean ± std "
                  "over seeds; Δ acc: paired t-test over the common seeds against the "
                  "method's baseline (unadjusted p)." if rep.metric != "loss" else
                  "Final test loss (the task's metric: lower is better) of the weights each "
                  "method reports, mean ± std over seeds, ranked by it; Δ loss: paired t-test "
                  "over the common seeds against the method's baseline (unadjusted p).", ""]
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
                      f"weights (full test set, BatchNorm recalibrated): {_evaluated(rep)}.", ""]
        lines += [f"### {own_report.CLAIMS_TITLE if rep.own else 'Paper claims'}", ""]
        if rep.own:
            lines += own_report.claims_intro(rep.metric, rep.dropped)
        if rep.outside:
            lines += [f"**Outside the papers' claims:** {rep.task} is not in the papers' "
                      f"regime ({rep.outside}); the verdicts below describe this task, not the "
                      "papers.", ""]
        lines += [claims_summary(rep) + ". Each claim's arms are "
                  "built from the protocol of the paper that makes it (cards below); the "
                  "paper's own result stands beside ours. Gain: improvement of A over B "
                  "(paired over seeds); verdicts on the Holm-adjusted p; for inconclusive "
                  "claims the smallest gain this run could detect (power 0.8, two-sided 0.05, "
                  "the observed spread) and the seeds the observed gain would need.", ""]
        lines += _claims_markdown(rep) + [""]
        if rep.unread:
            lines += [f"{rep.unread} claim(s) of the papers are not in this table: an arm was "
                      "not run (run the default methods to read them all).", ""]
        if rep.claims:
            lines += ["### The papers' protocols", ""]
            lines += cards_markdown(set(rep.curves) | {r.method for r in rep.rows}, rep.tuned,
                                    rep.edges)
        failures = [f"- {m}: {n} failed run(s)" for m, n in
                    ((r.method, r.failed) for r in rep.rows) if n]
        if failures:
            lines += ["Failed runs (retried by the next `polyak bench`):", "", *failures, ""]
    if len(reports) > 1:
        lines += ["## Paper claims across tasks", "", "; ".join(
            f"{r.task}: {claims_summary(r)}" for r in reports) + ".", "",
            *claims_side_by_side(reports), ""]
    return "\n".join(lines)


def write_report(store: Store, keys: Sequence[Any], out_dir: str | Path,
                 tasks: Mapping[str, tuple[int, str]], notes: Sequence[str] = (),
                 claims: Sequence[Claim] | None = None, baseline: str | None = None,
                 extras: Mapping[str, Mapping[str, Any]] | None = None
                 ) -> tuple[str, list[TaskReport]]:
    """Build the reports of ``keys``, write ``report.md`` and the figures; the Markdown.

    ``tasks`` maps a task name to its (epochs, description); ``claims``, ``baseline`` as in
    :func:`task_report`; ``extras`` maps a task name to ``num_classes``, ``tuned`` (method ->
    the values it ran with) and ``edges`` (method -> tuned values at a grid's end) for the
    chance level and the protocol cards, ``metric`` ("accuracy" or "loss") and ``own`` (a
    user's task).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reports, collected = [], collect(store, keys)
    notes = [*notes, *machine_notes(collected)]
    for task, by_method in collected.items():
        epochs, description = tasks[task]
        extra = (extras or {}).get(task, {})
        metric = str(extra.get("metric", "accuracy"))
        rep = task_report(task, epochs, description, by_method, claims, baseline,
                          num_classes=extra.get("num_classes"), metric=metric)
        rep.tuned, rep.edges = dict(extra.get("tuned", {})), dict(extra.get("edges", {}))
        rep.outside, rep.own = str(extra.get("outside_claims", "")), bool(extra.get("own"))
        if any(rep.curves.values()):
            what = "test loss" if metric == "loss" else "test error"
            rep.figure = plot_test_error(rep.curves, f"{task}: {what} ({epochs} epochs)",
                                         out_dir / f"{task}-test-error.png", metric=metric)
        reports.append(rep)
    text = to_markdown(reports, notes)
    from polyak.bench.posthoc_report import posthoc_markdown  # `polyak bench --posthoc` only

    extra = [line for task, by_method in collected.items()
             for line in posthoc_markdown(store, task, by_method, out_dir)]
    if extra:
        text += "\n## Post-hoc averages\n\n" + "\n".join(extra)
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
