"""Statistics of the report: mean and standard deviation over seeds, and Welch's t-test.

Welch (1947): for samples ``a`` (n_a) and ``b`` (n_b) with unbiased variances ``s_a^2, s_b^2``,
``se = sqrt(s_a^2/n_a + s_b^2/n_b)``, ``t = (mean_a - mean_b) / se`` and the
Welch-Satterthwaite degrees of freedom
``df = se^4 / ((s_a^2/n_a)^2/(n_a-1) + (s_b^2/n_b)^2/(n_b-1))``; the two-sided p-value is
``2 * P(T_df > |t|)`` and the confidence interval of the difference of means is
``diff +- t_{df, (1+confidence)/2} * se``. With fewer than two values on a side nothing can be
said (all NaN). With zero variance on both sides the difference is known exactly: the interval
is the point ``diff`` and ``p`` is 0 (different means) or 1 (equal means).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as _scipy_stats

__all__ = ["Welch", "welch", "mean_std"]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and unbiased standard deviation (NaN where undefined)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


@dataclass(frozen=True)
class Welch:
    """Welch's test of ``mean(a) - mean(b)``: difference, CI, t, df, two-sided p."""

    diff: float
    low: float
    high: float
    t: float
    df: float
    p: float
    n_a: int
    n_b: int


def welch(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Welch:
    """Welch's unequal-variance t-test and confidence interval for ``mean(a) - mean(b)``."""
    if not 0 < confidence < 1:
        raise ValueError(f"Invalid confidence: {confidence} (allowed: 0 < confidence < 1)")
    n_a, n_b = len(a), len(b)
    mean_a, sd_a = mean_std(a)
    mean_b, sd_b = mean_std(b)
    diff = mean_a - mean_b
    if n_a < 2 or n_b < 2:
        return Welch(diff, math.nan, math.nan, math.nan, math.nan, math.nan, n_a, n_b)
    var_a, var_b = sd_a**2 / n_a, sd_b**2 / n_b
    se = math.sqrt(var_a + var_b)
    if se == 0.0:
        return Welch(diff, diff, diff, math.copysign(math.inf, diff) if diff else math.nan,
                     math.nan, 0.0 if diff else 1.0, n_a, n_b)
    t = diff / se
    df = (var_a + var_b) ** 2 / (var_a**2 / (n_a - 1) + var_b**2 / (n_b - 1))
    p = 2.0 * float(_scipy_stats.t.sf(abs(t), df))
    half = float(_scipy_stats.t.ppf(0.5 + confidence / 2, df)) * se
    return Welch(diff, diff - half, diff + half, t, df, p, n_a, n_b)
