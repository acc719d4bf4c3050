"""Power-function EMA and its post-hoc reconstruction by least squares.

Karras et al., "Analyzing and Improving the Training Dynamics of Diffusion Models" (EDM2, 2024),
Sec. 3 and App. C; docs/methods.md, "Post-hoc averages". With ``t`` the optimizer step counted
from 1 and ``theta_t`` the iterate after step ``t``, a power-function EMA of exponent ``gamma``:

    theta_hat(t) = beta(t) theta_hat(t-1) + (1 - beta(t)) theta_t,   beta(t) = (1 - 1/t)^(gamma+1)

(``beta(1) = 0`` copies ``theta_1``). Unrolled, ``theta_hat(T) = sum_tau w_tau theta_tau`` with
the exact discrete weights (the product telescopes)

    w_tau = (tau^(gamma+1) - (tau-1)^(gamma+1)) / T^(gamma+1),   tau = 1..T,  sum_tau w_tau = 1,

a discretisation of the kernel ``p(tau) = (gamma+1) tau^gamma / T^(gamma+1)`` on ``[0, T]``. Its
width relative to the training length is ``sigma_rel = sqrt(gamma+1) / ((gamma+2) sqrt(gamma+3))``
(EDM2 eq. 3), which is decreasing in ``gamma`` for ``gamma > (sqrt(5)-3)/2``.

Reconstruction (EDM2 App. C.3): given stored profiles ``theta_hat_k`` (exponent ``gamma_k``,
taken at step ``t_k``), find coefficients ``x_k`` such that ``sum_k x_k p_k`` best matches the
target kernel ``p*`` (exponent ``gamma*``, at step ``T``) in L2 over continuous time: solve
``A x = b`` with ``A_kl = <p_k, p_l>``, ``b_k = <p_k, p*>`` in the closed form

    <p_a, p_b> = (gamma_a+1)(gamma_b+1) / ((gamma_a+gamma_b+1) max(t_a, t_b))
                 * (min(t_a, t_b) / max(t_a, t_b))^(gamma of the longer one)

then rescale ``x`` to sum to 1 (as EDM2's code does). The reconstruction's error is reported as
``L1 = sum_tau |sum_k x_k w^k_tau - w*_tau|`` over the EXACT discrete weights; since both sides'
weights sum to 1, for every parameter entry and any constant ``c``

    |theta_rec - theta_target| <= L1 * max_tau |theta_tau - c|.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["sigma_rel_to_gamma", "gamma_to_sigma_rel", "power_ema_beta", "power_ema_weights",
           "PowerEMAFit", "power_ema_fit"]

#: below this gamma, sigma_rel grows with gamma: the branch EDM2 uses starts here.
GAMMA_PEAK = (math.sqrt(5.0) - 3.0) / 2.0


def _check_gamma(gamma: float) -> float:
    ok = isinstance(gamma, (int, float)) and not isinstance(gamma, bool)
    if not ok or not math.isfinite(gamma) or gamma <= -1.0:
        raise ValueError(f"Invalid gamma: {gamma!r} (a finite number > -1)")
    return float(gamma)


def gamma_to_sigma_rel(gamma: float) -> float:
    """``sqrt(gamma+1) / ((gamma+2) sqrt(gamma+3))`` (EDM2 eq. 3)."""
    gamma = _check_gamma(gamma)
    return math.sqrt(gamma + 1.0) / ((gamma + 2.0) * math.sqrt(gamma + 3.0))


SIGMA_REL_MAX = gamma_to_sigma_rel(GAMMA_PEAK)


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent ``gamma > (sqrt(5)-3)/2`` of relative width ``sigma_rel`` (bisection on the
    decreasing branch of :func:`gamma_to_sigma_rel`; EDM2 takes the same root of its cubic)."""
    ok = isinstance(sigma_rel, (int, float)) and not isinstance(sigma_rel, bool)
    if not ok or not 0.0 < sigma_rel < SIGMA_REL_MAX:
        raise ValueError(f"Invalid sigma_rel: {sigma_rel!r} (allowed: 0 < sigma_rel < "
                         f"{SIGMA_REL_MAX:.6f})")
    lo, hi = GAMMA_PEAK, 1.0
    while gamma_to_sigma_rel(hi) > sigma_rel:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if gamma_to_sigma_rel(mid) > sigma_rel:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-15 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def power_ema_beta(t: int, gamma: float) -> float:
    """``beta(t) = (1 - 1/t)^(gamma+1)``, the decay of step ``t >= 1`` (``beta(1) = 0``)."""
    return (1.0 - 1.0 / t) ** (gamma + 1.0)


def power_ema_weights(T: int, gamma: float) -> Tensor:
    """The exact weights ``w_tau``, ``tau = 1..T``, of the power EMA at step ``T`` (float64,
    length T), computed as ``(tau/T)^(gamma+1) * (1 - (1 - 1/tau)^(gamma+1))`` without
    cancellation."""
    tau = torch.arange(1, T + 1, dtype=torch.float64)
    g1 = gamma + 1.0
    return (tau / T) ** g1 * -torch.expm1(g1 * torch.log1p(-1.0 / tau))


def _p_dot_p(t_a: Tensor, g_a: Tensor, t_b: Tensor, g_b: Tensor) -> Tensor:
    """``<p_a, p_b>`` of continuous power kernels (broadcast), in the overflow-free ratio form."""
    longer_b = t_a < t_b
    ratio = torch.minimum(t_a, t_b) / torch.maximum(t_a, t_b)
    exponent = torch.where(longer_b, g_b, g_a)
    return (g_a + 1) * (g_b + 1) * ratio ** exponent / ((g_a + g_b + 1) * torch.maximum(t_a, t_b))


@dataclass(frozen=True)
class PowerEMAFit:
    """A least-squares reconstruction of a power EMA from stored profile snapshots.

    ``profile_weights[i][k]``: the coefficient of profile ``k`` of snapshot ``i`` (pass it to
    :func:`polyak.averaging.reconstruct` as ``profile_weights=``); ``error``: the L1 distance of
    the exact per-step weights (see the module docstring); ``sigma_rel``/``gamma``: the target;
    ``step``: the step ``T`` the target EMA is taken at; ``used``: snapshots in the solve.
    """

    sigma_rel: float
    gamma: float
    step: int
    profile_weights: list[list[float]]
    error: float
    used: int


def _entries_and_gammas(snapshots: Any, gammas: Sequence[float] | None) -> tuple[list, list]:
    entries = list(getattr(snapshots, "entries", snapshots))
    if gammas is None:
        gammas = getattr(snapshots, "gammas", None)
    if not gammas:
        raise ValueError("Invalid snapshots: they hold no power-EMA profiles (take them with "
                         "Snapshots(..., profiles=(0.05, 0.10)))")
    return entries, [_check_gamma(g) for g in gammas]


def power_ema_fit(
    snapshots: Any, sigma_rel: float, *, step: int | None = None,
    gammas: Sequence[float] | None = None,
) -> PowerEMAFit:
    """EDM2's least-squares reconstruction of the power EMA of relative width ``sigma_rel`` at
    optimizer step ``step`` (default: the last snapshot's) from the stored profiles of every
    snapshot taken at or before ``step``.

    ``snapshots``: a :class:`~polyak.averaging.SnapshotDir` (or its ``entries``, then ``gammas``
    must be given: the stored profiles' exponents). Cost: O(len(snapshots) * step) time and
    O(step) memory for the error.
    """
    entries, gammas = _entries_and_gammas(snapshots, gammas)
    gamma = sigma_rel_to_gamma(sigma_rel)
    T = entries[-1].step if step is None and entries else step
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"Invalid step: {step!r} (an optimizer step >= 1; snapshots were taken "
                         f"at steps {[e.step for e in entries][:5]}...)")
    used = [e for e in entries if 1 <= e.step <= T]
    if not used:
        raise ValueError(f"Invalid step: {T} (no snapshot was taken at or before it)")
    t_in = torch.tensor([float(e.step) for e in used for _ in gammas], dtype=torch.float64) / T
    g_in = torch.tensor([g for _ in used for g in gammas], dtype=torch.float64)
    A = _p_dot_p(t_in[:, None], g_in[:, None], t_in[None, :], g_in[None, :])
    one = torch.ones(1, dtype=torch.float64)
    b = _p_dot_p(t_in[:, None], g_in[:, None], one[None, :], gamma * one[None, :])
    x = torch.linalg.lstsq(A, b, driver="gelsd").solution[:, 0]
    x = x / x.sum()
    coeffs = x.view(len(used), len(gammas))
    error = _l1_error(used, gammas, coeffs, gamma, T)
    by_index = {e.index: row.tolist() for e, row in zip(used, coeffs)}
    weights = [by_index.get(e.index, [0.0] * len(gammas)) for e in entries]
    return PowerEMAFit(sigma_rel=float(sigma_rel), gamma=gamma, step=T,
                       profile_weights=weights, error=error, used=len(used))


def _l1_error(used: list, gammas: list[float], coeffs: Tensor, gamma: float, T: int) -> float:
    """``sum_tau |sum_k x_k w^k_tau - w*_tau|`` over the exact discrete weights, tau = 1..T."""
    diff = -power_ema_weights(T, gamma)
    for e, row in zip(used, coeffs):
        for g, x in zip(gammas, row.tolist()):
            if x != 0.0:
                diff[: e.step] += x * power_ema_weights(e.step, g)
    return float(diff.abs().sum())
