"""Welch's t-test of the report against scipy and a hand computation."""

import math

import numpy as np
import pytest
from scipy import stats

from polyak.bench.stats import mean_std, welch

SAMPLES = [
    ([96.1, 95.8, 96.4], [95.2, 95.9, 95.0]),
    ([0.12, 0.15, 0.11, 0.13, 0.14], [0.2, 0.1, 0.3]),
    ([1.0, 2.0, 4.0, 8.0], [1.5, 1.6]),
]


@pytest.mark.parametrize("a,b", SAMPLES)
def test_t_and_p_match_scipy(a, b):
    ours = welch(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert ours.t == pytest.approx(ref.statistic, rel=1e-12)
    assert ours.p == pytest.approx(ref.pvalue, rel=1e-9)
    assert ours.df == pytest.approx(ref.df, rel=1e-12)
    ci = ref.confidence_interval(0.95)
    assert (ours.low, ours.high) == (pytest.approx(ci.low, rel=1e-9), pytest.approx(ci.high))


@pytest.mark.parametrize("a,b", SAMPLES)
def test_hand_computation(a, b):
    n_a, n_b = len(a), len(b)
    m_a, m_b = sum(a) / n_a, sum(b) / n_b
    v_a = sum((x - m_a) ** 2 for x in a) / (n_a - 1)
    v_b = sum((x - m_b) ** 2 for x in b) / (n_b - 1)
    se2 = v_a / n_a + v_b / n_b
    df = se2**2 / ((v_a / n_a) ** 2 / (n_a - 1) + (v_b / n_b) ** 2 / (n_b - 1))
    half = stats.t.ppf(0.975, df) * math.sqrt(se2)
    ours = welch(a, b)
    assert ours.diff == pytest.approx(m_a - m_b)
    assert ours.low == pytest.approx(m_a - m_b - half) and ours.high == pytest.approx(
        m_a - m_b + half)
    wider = welch(a, b, confidence=0.99)
    assert wider.low < ours.low and wider.high > ours.high


def test_mean_std_matches_numpy():
    values = [3.0, 1.0, 4.0, 1.0, 5.0]
    assert mean_std(values) == (pytest.approx(np.mean(values)),
                                pytest.approx(np.std(values, ddof=1)))
    assert math.isnan(mean_std([2.0])[1]) and math.isnan(mean_std([])[0])


def test_degenerate_cases():
    one = welch([1.0], [2.0, 3.0])
    assert one.diff == -1.5 and math.isnan(one.p) and math.isnan(one.low)
    same = welch([1.0, 1.0], [1.0, 1.0])
    assert (same.diff, same.low, same.high, same.p) == (0.0, 0.0, 0.0, 1.0)
    exact = welch([2.0, 2.0], [1.0, 1.0])
    assert (exact.low, exact.high, exact.p) == (1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="Invalid confidence"):
        welch([1.0, 2.0], [1.0, 2.0], confidence=1.5)
