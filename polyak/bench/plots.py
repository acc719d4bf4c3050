"""Figures of the report: test error curves per method (mean over seeds, band from the lowest to
the highest seed: with 3 seeds a +-std band would say more than the data, and it stays positive
on the log scale).

Uses matplotlib's non-interactive Agg backend; nothing is shown, the PNG is written to a file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["PANELS", "error_curves", "panels", "plot_test_error"]


def error_curves(runs: Sequence[Sequence[Mapping[str, float]]]
                 ) -> tuple[list[int], list[float], list[float], list[float]]:
    """Epochs (1-based) and the mean, min and max over runs of the test error in %, over the
    epochs every run reached."""
    length = min(len(curve) for curve in runs)
    epochs: list[int] = []
    means: list[float] = []
    lows: list[float] = []
    highs: list[float] = []
    for i in range(length):
        values = [100.0 * (1.0 - curve[i]["test_acc"]) for curve in runs
                  if curve[i]["test_acc"] is not None]
        if not values:
            break
        epochs.append(i + 1)
        means.append(sum(values) / len(values))
        lows.append(min(values))
        highs.append(max(values))
    return epochs, means, lows, highs


# Panels of the figure: each paper's methods beside the baselines it compares against.
PANELS: dict[str, tuple[str, ...]] = {
    "PWA (Kobayashi)": ("sgdm", "pwa", "swa", "lookahead", "adabound"),
    "PWA on adaptive methods (Table 3)": ("adam", "pwa-adam", "amsgrad", "pwa-amsgrad",
                                          "adabound", "pwa-adabound"),
    "SGDL (Wu et al.)": ("sgd", "sgdm", "sgdl"),
    "TSO-ALRA (Ida & Fujiwara)": ("sgdm", "adam", "amsgrad", "tso-alra"),
    "Gadam / GadamX (Granziol et al.)": ("adamw", "gadam", "padam", "gadamx", "swa",
                                         "gadam-auto", "gadam-lookahead"),
    "Averaged SGD / SAM (Nitanda et al.)": ("sgdm", "asgd", "sam", "sam-avg", "asam"),
    "Reference: schedule-free AdamW": ("sgdm", "adamw", "gadam", "schedule-free-adamw"),
    "AdaBound / AMSBound (PWA baselines)": ("adam", "amsgrad", "adabound", "amsbound"),
}


def panels(methods: Sequence[str]) -> dict[str, list[str]]:
    """The panels that have a method of ``methods``; methods in no panel go to "other"."""
    chosen = {title: [m for m in members if m in methods] for title, members in PANELS.items()}
    chosen = {title: members for title, members in chosen.items() if members}
    placed = {m for members in chosen.values() for m in members}
    rest = [m for m in methods if m not in placed]
    if rest:
        chosen["other"] = rest
    return chosen


def _y_limits(curves: Sequence[list[float]]) -> tuple[float, float] | None:
    """Log-scale limits that show the second half of training, where methods separate."""
    tail = [v for c in curves for v in c[len(c) // 3:] if math.isfinite(v) and v > 0]
    if not tail:
        return None
    return min(tail) * 0.85, max(tail) * 1.15


def plot_test_error(curves: Mapping[str, Sequence[Sequence[Mapping[str, float]]]], title: str,
                    path: str | Path) -> Path:
    """Write a PNG of test error vs epoch: one panel per paper (:data:`PANELS`), one line (mean
    over seeds) and band (min-max) per method."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {m: error_curves(runs) for m, runs in curves.items() if runs}
    data = {m: d for m, d in data.items() if d[0]}
    groups = panels(list(data)) or {"": []}
    cols = min(2, len(groups))
    rows = math.ceil(len(groups) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 3.6 * rows), dpi=100,
                             squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, (panel, members) in zip(axes.flat, groups.items()):
        colour = {m: cmap(i % 10) for i, m in enumerate(members)}
        for method in members:
            epochs, mean, low, high = data[method]
            ax.plot(epochs, mean, color=colour[method], lw=1.5,
                    label=f"{method} (n={len(curves[method])})")
            ax.fill_between(epochs, low, high, color=colour[method], alpha=0.15, lw=0)
        limits = _y_limits([data[m][1] for m in members])
        if limits is not None:
            ax.set_yscale("log")
            ax.set_ylim(*limits)
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test error (%)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
    for ax in list(axes.flat)[len(groups):]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
