"""Figures of the report: test error curves per method (mean over seeds, band from the lowest to
the highest seed: with 3 seeds a +-std band would say more than the data, and it stays positive
on the log scale).

Uses matplotlib's non-interactive Agg backend; nothing is shown, the PNG is written to a file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["error_curves", "plot_test_error"]


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


def plot_test_error(curves: Mapping[str, Sequence[Sequence[Mapping[str, float]]]], title: str,
                    path: str | Path) -> Path:
    """Write a PNG of test error vs epoch, one line (mean) and band (min-max) per method."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(11, 6.5), dpi=110)
    cmap = plt.get_cmap("tab20")
    styles = ("-", "--", ":", "-.")
    finite_means: list[float] = []
    for i, (method, runs) in enumerate(curves.items()):
        if not runs:
            continue
        epochs, mean, low, high = error_curves(runs)
        if not epochs:
            continue
        color, style = cmap(i % 20), styles[(i // 20 + i) % len(styles)]
        ax.plot(epochs, mean, style, color=color, lw=1.4, label=f"{method} (n={len(runs)})")
        ax.fill_between(epochs, low, high, color=color, alpha=0.15, lw=0)
        finite_means += [m for m in mean if math.isfinite(m) and m > 0]
    ax.set_xlabel("epoch")
    ax.set_ylabel("test error (%)")
    ax.set_title(title)
    if finite_means:
        ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
