"""Figures of the analysis tools, written to PNG files.

- :func:`plot_igd`: SGDL paper Figure 2 (left, middle): spectral radius of the IGD epoch map and
  the final error ``||x - x*||`` against the step size, with the bounds marked.
- :func:`plot_nqm`: expected loss against step on the noisy quadratic model, averaging against
  learning-rate decay (the Gadam paper's Sec. 4 argument).
- :func:`plot_probe`: loss (and accuracy) along a segment or against the two-point-average
  interval (phase-wise paper Figures 2 and 3).

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
    fig.savefig(path, dpi=120)
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
             steps_per_epoch: int = 1) -> Path:
    """Expected loss against epoch for each method of ``results`` (name -> per-step losses)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, losses in results.items():
        x = np.arange(len(losses)) / steps_per_epoch
        ax.semilogy(x, np.where(np.isfinite(losses), losses, np.nan), label=name)
    ax.set_xlabel("epoch" if steps_per_epoch > 1 else "step")
    ax.set_ylabel("expected loss E[L]")
    ax.set_title("noisy quadratic model: averaging vs decay")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_probe(probes: Mapping[str, Probe], path: str | Path, *, xlabel: str = "alpha") -> Path:
    """Loss (left) and accuracy (right, when defined) of named probes, e.g. train and test."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, probe in probes.items():
        left.plot(probe.x, probe.loss, marker="o", ms=3, label=name)
        if np.all(np.isfinite(probe.accuracy)):
            right.plot(probe.x, probe.accuracy, marker="o", ms=3, label=name)
    for ax, label in ((left, "loss"), (right, "accuracy")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    out = _save(fig, path)
    plt.close(fig)
    return out
