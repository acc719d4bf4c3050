"""Statistics of the report: paired tests on per-seed differences, multiplicity control, power.

Runs of two methods with the same seed share the initial weights and the batch order, so a
comparison is **paired**: the per-seed differences ``d_i = a_i - b_i`` are tested with
``scipy.stats.ttest_rel`` (t = mean(d) / (sd(d)/sqrt(n)), df = n - 1) and its
``confidence_interval``; identical differences (no spread) leave ``t`` and ``p`` undefined
(NaN: two seeds that happen to differ by the same amount prove nothing). :func:`welch`
(``scipy.stats.ttest_ind(equal_var=False)``) stays for unpaired samples (methods without common
seeds).

Equivalence (a claim that ``a`` *matches* ``b`` within ``margin``) is the two one-sided tests
(TOST, Schuirmann 1987): ``p = max(P(T > t_low), P(T < t_high))`` with
``t_low = (mean(d) + margin)/se`` and ``t_high = (mean(d) - margin)/se``.

Multiplicity: :func:`holm` (Holm 1979, step-down, controls the family-wise error rate) and
:func:`benjamini_hochberg` (``scipy.stats.false_discovery_control``, controls the false
discovery rate) adjust a family of p-values; NaN p-values are left out of the family.

Power of the paired t-test (two-sided, level ``alpha``) for an effect ``delta`` with the spread
``sd`` of the differences and ``n`` pairs: ``P(|T'| > t_{1-alpha/2, n-1})`` with ``T'`` noncentral
t, ``nc = delta sqrt(n) / sd``. :func:`detectable_effect` is the ``delta`` with power 0.8;
:func:`seeds_needed` the smallest ``n`` whose power for the observed ``delta`` reaches 0.8.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize
from scipy import stats as _scipy_stats

__all__ = ["Test", "Welch", "paired", "welch", "tost_paired", "mean_std", "holm",
           "benjamini_hochberg", "power_paired", "detectable_effect", "seeds_needed"]


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
class Test:
    """A t-test of ``mean(a) - mean(b)``: difference, CI, t, df, two-sided p, sizes, and the
    standard deviation of the per-seed differences (paired) or NaN (unpaired)."""

    diff: float
    low: float
    high: float
    t: float
    df: float
    p: float
    n_a: int
    n_b: int
    sd: float = math.nan
    paired: bool = False


Welch = Test  # the former name


def _check(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"Invalid confidence: {confidence} (allowed: 0 < confidence < 1)")


def _exact(diff: float, n_a: int, n_b: int, sd: float, paired: bool) -> Test:
    """No spread at all: the difference is known exactly."""
    t = math.copysign(math.inf, diff) if diff else math.nan
    return Test(diff, diff, diff, t, math.nan, 0.0 if diff else 1.0, n_a, n_b, sd, paired)


def paired(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Test:
    """Paired t-test of ``a[i] - b[i]`` (``scipy.stats.ttest_rel``) and its confidence interval."""
    _check(confidence)
    if len(a) != len(b):
        raise ValueError(f"Invalid pairs: {len(a)} and {len(b)} values (allowed: equal lengths)")
    n = len(a)
    d = [x - y for x, y in zip(a, b)]
    diff, sd = mean_std(d)
    if n < 2:
        return Test(diff, math.nan, math.nan, math.nan, math.nan, math.nan, n, n, sd, True)
    if sd == 0.0:  # identical differences: no spread to test against (t undefined)
        return Test(diff, diff, diff, math.nan, float(n - 1), math.nan, n, n, sd, True)
    res = _scipy_stats.ttest_rel(a, b)
    ci = res.confidence_interval(confidence)
    return Test(diff, float(ci.low), float(ci.high), float(res.statistic), float(res.df),
                float(res.pvalue), n, n, sd, True)


def welch(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Test:
    """Welch's unequal-variance t-test (``scipy.stats.ttest_ind``) of ``mean(a) - mean(b)``."""
    _check(confidence)
    n_a, n_b = len(a), len(b)
    diff = mean_std(a)[0] - mean_std(b)[0]
    if n_a < 2 or n_b < 2:
        return Test(diff, math.nan, math.nan, math.nan, math.nan, math.nan, n_a, n_b)
    if mean_std(a)[1] == 0.0 and mean_std(b)[1] == 0.0:
        return _exact(diff, n_a, n_b, math.nan, False)
    res = _scipy_stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(confidence)
    return Test(diff, float(ci.low), float(ci.high), float(res.statistic), float(res.df),
                float(res.pvalue), n_a, n_b)


def tost_paired(a: Sequence[float], b: Sequence[float], margin: float) -> float:
    """p-value of the paired TOST: small when ``|mean(a - b)| < margin`` is established."""
    if not margin > 0:
        raise ValueError(f"Invalid margin: {margin!r} (allowed: > 0)")
    test = paired(a, b)
    n = test.n_a
    if n < 2 or math.isnan(test.sd):
        return math.nan
    if test.sd == 0.0:  # no spread: nothing to test against
        return math.nan
    se = test.sd / math.sqrt(n)
    p_low = _scipy_stats.t.sf((test.diff + margin) / se, n - 1)
    p_high = _scipy_stats.t.cdf((test.diff - margin) / se, n - 1)
    return float(max(p_low, p_high))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN stays NaN and is not counted in the family)."""
    idx = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    m = len(idx)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def benjamini_hochberg(pvalues: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (``scipy.stats.false_discovery_control``)."""
    idx = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    out = [math.nan] * len(pvalues)
    if idx:
        adjusted = _scipy_stats.false_discovery_control(np.array([pvalues[i] for i in idx]))
        for i, p in zip(idx, adjusted):
            out[i] = float(p)
    return out


def power_paired(delta: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test at level ``alpha`` for the true effect ``delta``."""
    if n < 2 or not sd > 0:
        return math.nan
    df = n - 1
    crit = _scipy_stats.t.ppf(1 - alpha / 2, df)
    nc = abs(delta) * math.sqrt(n) / sd
    value = float(_scipy_stats.nct.sf(crit, df, nc) + _scipy_stats.nct.cdf(-crit, df, nc))
    if math.isnan(value):  # nct's far tails (df = 1 above all) give NaN: the limit
        return 1.0 if nc > crit else 0.0
    return value


def detectable_effect(sd: float, n: int, power: float = 0.8, alpha: float = 0.05) -> float:
    """The smallest effect the paired test detects with ``power`` (same unit as ``sd``)."""
    if n < 2 or not sd > 0 or not math.isfinite(sd):
        return math.nan
    try:
        return float(optimize.brentq(lambda d: power_paired(d, sd, n, alpha) - power,
                                     1e-9 * sd, 100 * sd))
    except ValueError:  # no sign change: nothing up to 100 sd is detectable at this n
        return math.nan


def seeds_needed(delta: float, sd: float, power: float = 0.8, alpha: float = 0.05,
                 limit: int = 100_000) -> int | None:
    """The fewest seeds (pairs) whose paired test detects ``delta`` with ``power``
    (``None``: more than ``limit``, or no effect to detect)."""
    if not (sd > 0 and math.isfinite(sd)) or not abs(delta) > 0:
        return None
    n = 2
    while power_paired(delta, sd, n, alpha) < power:
        n = n + 1 if n < 64 else int(n * 1.1)
        if n > limit:
            return None
    if n > 64:  # refine the geometric search down to the exact count
        lo = int(n / 1.1)
        while lo < n and power_paired(delta, sd, lo, alpha) < power:
            lo += 1
        n = lo
    return n
