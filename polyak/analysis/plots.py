"""Figures of the analysis tools, written to PNG files.

- :func:`plot_igd`: SGDL paper Figure 2 (left, middle): spectral radius of the IGD epoch map and
  the final error ``||x - x*||`` against the step size, with the bounds marked.
- :func:`plot_nqm`: expected loss against step on the noisy quadratic model, averaging against
  learning-rate decay (the Gadam paper's Sec. 4 argument).
- :func:`plot_probe`: loss (and accuracy) along a segment, and the two-point averages against the
  earlier checkpoint (phase-wise paper Figures 2 and 3), titled with the run and the diversity.

matplotlib is imported inside each function, with the non-interactive Agg backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from polyak.analysis.least_squares import (
    LeastSquares,
    gd_bound,
    igd_critical_step,
    igd_curves,
    igd_sufficient_bound,
)
from polyak.analysis.probes import Probe

__all__ = ["plot_igd", "plot_nqm", "plot_probe"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise FileNotFoundError(f"Invalid output path: directory {path.parent} does not exist")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")   # titles and legends are never cut off
    return path


def plot_igd(problem: LeastSquares, path: str | Path, *, ts: np.ndarray | None = None,
             epochs: int = 100) -> Path:
    """Spectral radius and final error of IGD against the step size ``t`` (SGDL Figure 2)."""
    A, mu, D = problem.A, problem.mu, problem.D
    bound = igd_sufficient_bound(A, mu, D)
    critical = igd_critical_step(A, mu, D)
    if ts is None:
        top = 1.5 * max(bound, critical if np.isfinite(critical) else bound)
        ts = np.linspace(top / 150, top, 150)
    rho, final = igd_curves(problem, ts, epochs)
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.semilogy(ts, rho, color="C0", label=r"$\rho(K_N(t))$")
    left.axhline(1.0, color="gray", lw=0.8)
    cap = 1e4 * float(np.linalg.norm(problem.x_star))  # the error from x0 = 0, times 1e4
    right.semilogy(ts, np.where(final < cap, final, np.nan), color="C0")
    right.set_ylabel(rf"$\|x_{{{epochs}}} - x^*\|$")
    marks = [(bound, "C1", "2N/rho(muD+A'A)"), (gd_bound(problem.hessian), "C2", "2/lambda_max")]
    if np.isfinite(critical):
        marks.append((critical, "C3", "measured critical t"))
    for ax in (left, right):
        for value, color, label in marks:
            ax.axvline(value, color=color, ls="--", lw=1, label=f"{label} = {value:.3g}")
        ax.set_xlabel("step size t")
    left.set_ylabel("spectral radius")
    left.legend(fontsize=8)
    left.set_title(f"IGD epoch map, N={A.shape[0]}, n={A.shape[1]}, mu={mu:g}")
    right.set_title(f"error after {epochs} epochs from x0 = 0")
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_nqm(results: Mapping[str, np.ndarray], path: str | Path, *,
             steps_per_epoch: int = 1, subtitle: str | None = None) -> Path:
    """Expected loss against epoch for each method of ``results`` (name -> per-step losses).

    The subtitle says what is plotted (``subtitle`` adds the problem's settings); when every
    curve ends above where it starts it also says why: the start is below the noise floor the
    learning rate settles at, so the methods differ by how low a floor they reach."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.8))
    for name, losses in results.items():
        x = np.arange(len(losses)) / steps_per_epoch
        ax.semilogy(x, np.where(np.isfinite(losses), losses, np.nan), label=name)
    ax.set_xlabel("epoch" if steps_per_epoch > 1 else "step")
    ax.set_ylabel("expected loss E[L]")
    _plain_log_ticks(ax)
    lines = ["exact expected loss E[L] of the weights each method reports, after every step "
             "(no sampling)"]
    if subtitle:
        lines.append(subtitle)
    if results and all(np.isfinite(v[-1]) and v[-1] > v[0] for v in results.values()):
        lines.append("every curve rises: the start is below the noise floor of these learning "
                     "rates; lower is better")
    ax.set_title("noisy quadratic model: averaging vs decay\n" + "\n".join(lines), fontsize=9)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    out = _save(fig, path)
    plt.close(fig)
    return out


def _plain_log_ticks(ax) -> None:
    """Log-axis ticks at 1, 2, 5 per decade labelled as plain numbers (no 10^k, no 6x10^1)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def plot_probe(probes: Mapping[str, Probe], path: str | Path, *, xlabel: str = "alpha",
               title: str | None = None, pairs: Probe | None = None,
               pairs_label: str = "earlier checkpoint", diversity: str | None = None) -> Path:
    """Loss and accuracy of named probes along a segment (e.g. train and test; PWA Figure 2),
    and with ``pairs`` a third panel: the two-point averages ``(theta_last + theta_k)/2`` against
    the earlier checkpoint (PWA Figure 3). ``title`` names the run; ``xlabel`` says what alpha
    is; ``diversity`` (Gadam Figure 4's measure, as text) goes under the title."""
    plt = _pyplot()
    n = 3 if pairs is not None else 2
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 4.2))
    left, right = axes[0], axes[1]
    for name, probe in probes.items():
        left.plot(probe.x, probe.loss, marker="o", ms=3, label=name)
        if np.all(np.isfinite(probe.accuracy)):
            right.plot(probe.x, probe.accuracy, marker="o", ms=3, label=name)
    for ax, label in ((left, "loss"), (right, "accuracy")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    left.set_title("along the segment: loss", fontsize=10)
    right.set_title("along the segment: accuracy", fontsize=10)
    if pairs is not None:
        _pairs_panel(axes[2], pairs, pairs_label)
    heading = [t for t in (title, diversity) if t]
    if heading:
        fig.suptitle("\n".join(heading), fontsize=10)
    out = _save(fig, path)
    plt.close(fig)
    return out


def _pairs_panel(ax, pairs: Probe, xlabel: str) -> None:
    ax.plot(pairs.x, pairs.loss, marker="o", ms=3, color="C3", label="test loss")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test loss")
    ax.set_title("two-point averages (theta_last + theta_k)/2", fontsize=10)
    if np.all(np.isfinite(pairs.accuracy)):
        acc = ax.twinx()
        acc.plot(pairs.x, pairs.accuracy, marker="s", ms=3, color="C2", label="test accuracy")
        acc.set_ylabel("test accuracy")
        handles = ax.get_legend_handles_labels()[0] + acc.get_legend_handles_labels()[0]
        ax.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="center right")
