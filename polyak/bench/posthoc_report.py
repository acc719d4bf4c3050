"""The report's post-hoc section and the "averaging landscape" figure (``polyak bench --posthoc``,
``polyak posthoc``).

Choice on validation only: in each run the post-hoc average with the highest validation accuracy
is chosen (ties: the lower validation loss, then the first in the family's order); its test
accuracy is paired by seed against the test accuracy of the weights the method itself reports
(the last epoch's), as the results table's comparisons are (:func:`polyak.bench.stats.paired`:
mean gain in percentage points, its 95 % CI and the p-value, unadjusted).

The landscape: validation (dashed) and test (solid) accuracy of every post-hoc average, mean over
the runs, against its width (:mod:`polyak.bench.posthoc`: the standard deviation of its weights
over training time relative to the run's length; EDM2's sigma_rel for power EMAs), one line per
family, one panel per method, the method's own test accuracy as a dotted line.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["choose", "posthoc_markdown", "landscape_figure", "plot_landscape", "FAMILY_ORDER"]

FAMILY_ORDER = ("latest", "ema", "uniform", "pwa", "power-ema")
Rows = Sequence[Mapping[str, Any]]


def choose(rows: Rows, split: str = "val") -> Mapping[str, Any]:
    """The row with the highest ``<split>_acc`` (ties: lower ``<split>_loss``, then first)."""
    scored = [r for r in rows if r.get(f"{split}_acc") is not None]
    if not scored:
        raise ValueError(f"Invalid rows: none has {split}_acc")
    return min(enumerate(scored), key=lambda ir: (-ir[1][f"{split}_acc"],
                                                  ir[1][f"{split}_loss"], ir[0]))[1]


def _by_method(collected: Mapping[str, list[dict[str, Any]]], store: Any
               ) -> dict[str, list[tuple[Any, float, list[dict[str, Any]]]]]:
    """Method -> [(seed, own final test acc, post-hoc rows)] of its complete runs that have
    post-hoc rows."""
    out: dict[str, list[tuple[Any, float, list[dict[str, Any]]]]] = {}
    for method, runs in collected.items():
        for run in sorted(runs, key=lambda r: r.get("seed", 0)):
            if run["status"] != "complete" or not run.get("curve"):
                continue
            rows = store.posthoc(run["id"])
            if rows:
                out.setdefault(method, []).append((run["seed"], run["curve"][-1]["test_acc"],
                                                   rows))
    return out


def posthoc_markdown(store: Any, task: str, collected: Mapping[str, list[dict[str, Any]]],
                     out_dir: str | Path) -> list[str]:
    """The post-hoc section of one task (empty when no run has post-hoc rows) and its figure
    ``<out_dir>/<task>-posthoc-landscape.png``."""
    from polyak.bench.stats import mean_std, paired

    data = _by_method(collected, store)
    if not data:
        return []
    lines = [f"### Post-hoc averages ({task})", "",
             "Each run's default post-hoc averages (`polyak bench --posthoc`: uniform windows, "
             "EMAs, the latest snapshots, PWA's weighting of the last phase, power EMAs), "
             "BatchNorm recalibrated; per run the one with the best validation accuracy is "
             "chosen (the test split is never read to choose), and its test accuracy is paired "
             "by seed against the weights the method reports (unadjusted p).", "",
             "| method | chosen on validation (runs) | post-hoc test acc (%) | own test acc (%) "
             "| Δ acc (pp) [95% CI] | p |", "|---|---|---:|---:|---:|---:|"]
    for method, runs in data.items():
        chosen = [choose(rows) for _, _, rows in runs]
        post = [100.0 * c["test_acc"] for c in chosen]
        own = [100.0 * acc for _, acc, _ in runs]
        test = paired(post, own)
        names = ", ".join(f"{n} ({k})" for n, k in Counter(c["name"] for c in chosen)
                          .most_common(3))
        ci = "—" if math.isnan(test.low) else f"[{test.low:+.2f}, {test.high:+.2f}]"
        p = "—" if math.isnan(test.p) else (f"{test.p:.3f}" if test.p >= 0.001
                                            else f"{test.p:.1e}")
        pm = [mean_std(v) for v in (post, own)]
        cells = [f"{m:.2f}" + ("" if math.isnan(s) else f" ± {s:.2f}") for m, s in pm]
        lines.append(f"| {method} | {names} | {cells[0]} | {cells[1]} | {test.diff:+.2f} {ci} "
                     f"| {p} |")
    path = plot_landscape({m: [rows for _, _, rows in runs] for m, runs in data.items()},
                          Path(out_dir) / f"{task}-posthoc-landscape.png",
                          f"{task}: the averaging landscape",
                          own={m: [acc for _, acc, _ in runs] for m, runs in data.items()})
    lines += ["", f"![averaging landscape of {task}]({path.name})", "",
              "The landscape: validation (dashed) and test (solid) accuracy of each post-hoc "
              "average, mean over the runs, against its width (the standard deviation of its "
              "weights over training time relative to the run's length; sigma_rel for power "
              "EMAs); dotted: the method's own weights.", ""]
    return lines


def _mean_curves(runs: Sequence[Rows]) -> dict[str, list[tuple[float, float, float]]]:
    """Family -> [(width, mean val acc %, mean test acc %)] sorted by width, over the averages
    every run has."""
    names = [r["name"] for r in runs[0]]
    common = [n for n in names if all(any(r["name"] == n for r in rows) for rows in runs)]
    out: dict[str, list[tuple[float, float, float]]] = {}
    for name in common:
        found = [next(r for r in rows if r["name"] == name) for rows in runs]
        mean = [sum(100.0 * f[k] for f in found) / len(found) for k in ("val_acc", "test_acc")]
        out.setdefault(found[0]["family"], []).append(
            (sum(f["width"] for f in found) / len(found), *mean))
    return {f: sorted(points) for f, points in out.items()}


def landscape_figure(panels: Mapping[str, Sequence[Rows]], title: str,
                     own: Mapping[str, Sequence[float]] | None = None) -> Any:
    """One panel per entry of ``panels`` (a title -> the rows of each run)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    cols = min(4, len(panels)) or 1
    rows = math.ceil(len(panels) / cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), dpi=90,
                             squeeze=False, layout="constrained")
    cmap = plt.get_cmap("tab10")
    for ax, (name, runs) in zip(axes.flat, panels.items()):
        curves = _mean_curves(runs)
        for i, family in enumerate(f for f in FAMILY_ORDER if f in curves):
            width, val, test = zip(*curves[family])
            colour = cmap(i)
            ax.plot(width, test, "o-", color=colour, ms=3, lw=1.2, label=family)
            ax.plot(width, val, "o--", color=colour, ms=2, lw=0.8, alpha=0.7)
        if own and own.get(name):
            ax.axhline(100.0 * sum(own[name]) / len(own[name]), color="k", ls=":", lw=1,
                       label="own weights (test)")
        ax.set_title(f"{name} (n={len(runs)})", fontsize=9)
        ax.set_xlabel("width (std of the weights / run length)", fontsize=8)
        ax.set_ylabel("accuracy (%)", fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, frameon=False)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"{title}: test (solid) and validation (dashed)", fontsize=10)
    return fig


def plot_landscape(panels: Mapping[str, Sequence[Rows]], path: str | Path, title: str,
                   own: Mapping[str, Sequence[float]] | None = None) -> Path:
    """Write :func:`landscape_figure` as a PNG; returns the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = landscape_figure(panels, title, own)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
