"""Figures of the report: test error curves per method (mean over seeds, band from the lowest to
the highest seed: with 3 seeds a +-std band would say more than the data, and it stays positive
on the log scale).

A task whose metric is its loss (a user's regression or language model) is drawn as its test
loss instead (``metric="loss"``; a log axis while every value is positive).

Uses matplotlib's non-interactive Agg backend; nothing is shown, the PNG is written to a file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["ONE_PANEL", "PANELS", "error_curves", "log_ticks", "panels", "plot_test_error",
           "error_figure"]


def _test_value(record: Mapping[str, float], metric: str) -> float | None:
    """The test error in % of a record, or its test loss for ``metric="loss"``."""
    if metric == "loss":
        return record["test_loss"]
    return None if record["test_acc"] is None else 100.0 * (1.0 - record["test_acc"])


def error_curves(runs: Sequence[Sequence[Mapping[str, float]]], metric: str = "accuracy"
                 ) -> tuple[list[int], list[float], list[float], list[float]]:
    """Epochs (0-based, as ``Method.end_epoch`` numbers them) and the mean, min and max over runs
    of the test error in % (``metric="loss"``: the test loss), over the epochs every run reached
    and some run evaluated (the benchmark evaluates 10 of them)."""
    length = min(len(curve) for curve in runs)
    epochs: list[int] = []
    means: list[float] = []
    lows: list[float] = []
    highs: list[float] = []
    for i in range(length):
        values = [v for curve in runs if (v := _test_value(curve[i], metric)) is not None]
        if not values:
            continue
        epochs.append(i)
        means.append(sum(values) / len(values))
        lows.append(min(values))
        highs.append(max(values))
    return epochs, means, lows, highs


# Panels of the figure: each paper's protocol, its methods beside the arms it compares them with.
PANELS: dict[str, tuple[str, ...]] = {
    "PWA (Kobayashi, Tables 1c and 2)": ("sgdm@pwa", "pwa", "pwa-end-only", "lookahead@pwa",
                                         "adabound@pwa"),
    "PWA on adaptive methods (Table 3, half budget)": (
        "adam-const@pwa", "pwa-adam@pwa", "amsgrad-const@pwa", "pwa-amsgrad@pwa",
        "adabound-const@pwa", "pwa-adabound@pwa"),
    "SGDL (Wu et al.)": ("sgd@sgdl", "sgdm@sgdl", "sgdl"),
    "TSO-ALRA (Ida & Fujiwara)": ("sgd@tso-alra", "adam@tso-alra", "amsgrad@tso-alra",
                                  "tso-alra"),
    "Gadam / GadamX (Granziol et al.)": ("sgdm@gadam", "swa", "adamw@gadam", "gadam",
                                         "padam@gadam", "gadamx", "gadam-auto",
                                         "gadam-lookahead"),
    "Averaged SGD / SAM (Nitanda et al.)": ("sgdm@gadam", "swa", "asgd", "sam@nitanda",
                                            "sam-avg@nitanda", "sam-avg"),
    "Reference: schedule-free AdamW": ("sgdm@gadam", "adamw@gadam", "gadam",
                                       "schedule-free-adamw"),
}


#: up to this many methods share one panel (a small selection is compared directly).
ONE_PANEL = 6


def panels(methods: Sequence[str]) -> dict[str, list[str]]:
    """One panel for up to :data:`ONE_PANEL` methods; else the panels of :data:`PANELS` that have
    a method of ``methods``, and methods in no panel go to "other"."""
    if len(methods) <= ONE_PANEL:
        return {"": list(methods)}
    chosen = {title: [m for m in members if m in methods] for title, members in PANELS.items()}
    chosen = {title: members for title, members in chosen.items() if members}
    placed = {m for members in chosen.values() for m in members}
    rest = [m for m in methods if m not in placed]
    if rest:
        chosen["other"] = rest
    return chosen


def log_ticks(low: float, high: float) -> list[float]:
    """Readable ticks for a log axis from ``low`` to ``high``: the 1-2-5 series of each decade,
    or finer series when that leaves fewer than three inside, or evenly spaced round values for
    a very narrow range."""
    for mantissas in ((1, 2, 5), (1, 1.5, 2, 3, 4, 5, 6, 8),
                      (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9)):
        ticks = [m * 10.0 ** e for e in range(math.floor(math.log10(low)) - 1,
                                              math.ceil(math.log10(high)) + 1)
                 for m in mantissas]
        inside = [t for t in ticks if low <= t <= high]
        if len(inside) >= 3:
            return inside
    return _linear_ticks(low, high)


def _linear_ticks(low: float, high: float) -> list[float]:
    """Evenly spaced round values (step 1, 2 or 5 times a power of ten), 3 or more in range."""
    step = 10.0 ** math.floor(math.log10(high - low))
    for factor in (1, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01):
        k = step * factor
        ticks = [round(i * k, 12) for i in range(math.ceil(low / k), math.floor(high / k) + 1)]
        if len(ticks) >= 3:
            return ticks
    return [low, high]


def _tick_label(value: float, _pos: int = 0) -> str:
    return f"{value:g}"


def _y_limits(curves: Sequence[list[float]]) -> tuple[float, float] | None:
    """Log-scale limits around every finite positive value (nothing is cut off)."""
    values = [v for c in curves for v in c if math.isfinite(v) and v > 0]
    if not values:
        return None
    return min(values) * 0.85, max(values) * 1.15


def plot_test_error(curves: Mapping[str, Sequence[Sequence[Mapping[str, float]]]], title: str,
                    path: str | Path, metric: str = "accuracy") -> Path:
    """Write a PNG of test error (or loss) vs epoch (:func:`error_figure`)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = error_figure(curves, title, metric)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def error_figure(curves: Mapping[str, Sequence[Sequence[Mapping[str, float]]]],
                 title: str, metric: str = "accuracy"):
    """The figure: a small selection of methods in one panel, more in one panel per paper
    (:func:`panels`); one line (mean over seeds) and band (min-max) per method; the error on a
    log axis with plain tick labels (1-2-5 series), epochs 0-based on integer ticks."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    data = {m: error_curves(runs, metric) for m, runs in curves.items() if runs}
    data = {m: d for m, d in data.items() if d[0]}
    groups = panels(list(data)) or {"": []}
    cols = min(2, len(groups))
    rows = math.ceil(len(groups) / cols)
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator

    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 3.6 * rows), dpi=100,
                             squeeze=False, layout="constrained")
    cmap = plt.get_cmap("tab10")
    for ax, (panel, members) in zip(axes.flat, groups.items()):
        colour = {m: cmap(i % 10) for i, m in enumerate(members)}
        for method in members:
            epochs, mean, low, high = data[method]
            ax.plot(epochs, mean, color=colour[method], lw=1.5,
                    label=f"{method} (n={len(curves[method])})")
            ax.fill_between(epochs, low, high, color=colour[method], alpha=0.15, lw=0)
        limits = _y_limits([data[m][1] for m in members])
        if any(v <= 0 for m in members for v in data[m][2]):  # a loss may reach 0 or below
            limits = None
        if limits is not None:
            ax.set_yscale("log")
            ax.set_ylim(*limits)
            ax.yaxis.set_major_locator(FixedLocator(log_ticks(*limits)))
            ax.yaxis.set_major_formatter(FuncFormatter(_tick_label))
            ax.yaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("epoch (0-based)")
        ax.set_ylabel("test loss" if metric == "loss" else "test error (%)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
    for ax in list(axes.flat)[len(groups):]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig
