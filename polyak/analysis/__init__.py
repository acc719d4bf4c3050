"""Theory and diagnostics tools of the papers.

- :mod:`~polyak.analysis.hessian`: largest Hessian eigenvalue (power iteration on exact
  Hessian-vector products) and the stable learning rates it implies; Hutchinson trace.
- :mod:`~polyak.analysis.least_squares`: incremental gradient descent on regularized least
  squares, its exact epoch map and spectral radius (SGDL paper, Sec. 5).
- :mod:`~polyak.analysis.nqm`: exact expected-loss trajectories on the noisy quadratic model for
  SGD, momentum, preconditioning, decay and averaging (Gadam paper, Sec. 4).
- :mod:`~polyak.analysis.probes`: loss along segments and of two-point averages (phase-wise
  paper, Figures 2-3); :mod:`~polyak.analysis.diversity`: iterate diversity (Gadam Figure 4).
- :mod:`~polyak.analysis.plots`: the figures, as PNG files.
"""

from __future__ import annotations

from polyak.analysis._weights import recalibrate_bn
from polyak.analysis.diversity import Diversity, diversity, symmetric_kl, total_variation
from polyak.analysis.hessian import (
    TopEigenvalue,
    TraceEstimate,
    hessian_trace,
    hvp,
    top_hessian_eigenvalue,
)
from polyak.analysis.least_squares import (
    LeastSquares,
    gd_bound,
    igd_critical_step,
    igd_curves,
    igd_fixed_point,
    igd_map,
    igd_spectral_radius,
    igd_sufficient_bound,
    random_least_squares,
    run_igd,
    sigmoid_least_squares,
)
from polyak.analysis.nqm import (
    EMA,
    NoisyQuadratic,
    PhaseWise,
    Tail,
    compare_methods,
    expected_loss,
    step_decay_lrs,
)
from polyak.analysis.plots import plot_igd, plot_nqm, plot_probe
from polyak.analysis.probes import Probe, evaluate, segment_losses, two_point_average_losses

__all__ = [
    # curvature and stable learning rates
    "top_hessian_eigenvalue", "TopEigenvalue", "hessian_trace", "TraceEstimate", "hvp",
    # least squares (SGDL Sec. 5)
    "LeastSquares", "random_least_squares", "sigmoid_least_squares", "igd_map",
    "igd_spectral_radius", "igd_sufficient_bound", "gd_bound", "igd_critical_step",
    "igd_fixed_point", "run_igd", "igd_curves", "plot_igd",
    # noisy quadratic model (Gadam Sec. 4)
    "NoisyQuadratic", "expected_loss", "step_decay_lrs", "Tail", "EMA", "PhaseWise",
    "compare_methods", "plot_nqm",
    # probes and diversity
    "segment_losses", "two_point_average_losses", "Probe", "evaluate", "recalibrate_bn",
    "plot_probe", "diversity", "Diversity", "symmetric_kl", "total_variation",
]
