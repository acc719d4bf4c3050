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


# ---------------------------------------------------------------- paired tests, multiplicity, power
from polyak.bench.stats import (  # noqa: E402
    benjamini_hochberg,
    detectable_effect,
    holm,
    paired,
    power_paired,
    seeds_needed,
    tost_paired,
)


@pytest.mark.parametrize("a,b", [([96.1, 95.8, 96.4, 96.0], [95.2, 95.9, 95.0, 95.5]),
                                 ([1.0, 2.0, 4.0], [1.5, 1.6, 3.0])])
def test_paired_matches_a_one_sample_test_of_the_differences(a, b):
    d = np.subtract(a, b)
    ref = stats.ttest_1samp(d, 0.0)
    ours = paired(a, b)
    assert ours.paired and ours.p == pytest.approx(ref.pvalue, rel=1e-12)
    half = stats.t.ppf(0.975, len(d) - 1) * np.std(d, ddof=1) / np.sqrt(len(d))
    assert (ours.low, ours.high) == (pytest.approx(d.mean() - half), pytest.approx(
        d.mean() + half))
    assert ours.sd == pytest.approx(np.std(d, ddof=1))
    with pytest.raises(ValueError, match="Invalid pairs"):
        paired([1.0, 2.0], [1.0])


def test_paired_degenerate_cases():
    same = paired([2.0, 3.0], [1.0, 2.0])  # every difference exactly 1: no spread to test
    assert same.diff == 1.0 and math.isnan(same.p) and math.isnan(same.t)
    assert math.isnan(detectable_effect(0.0, 2))
    # two pairs (df = 1): the noncentral t's far tail is NaN in scipy; the limits are used
    assert power_paired(50.0, 1.0, 2) == 1.0 and 0 < detectable_effect(0.5, 2) < 50
    assert math.isnan(paired([2.0], [1.0]).p)


def test_holm_against_a_hand_computation():
    p = [0.01, 0.04, 0.03, math.nan, 0.005]
    # sorted 0.005, 0.01, 0.03, 0.04 with m = 4: 4x, 3x, 2x, 1x, then running maximum
    expected = [0.03, 0.06, 0.06, math.nan, 0.02]
    got = holm(p)
    assert math.isnan(got[3])
    assert [g for i, g in enumerate(got) if i != 3] == pytest.approx(
        [e for i, e in enumerate(expected) if i != 3])
    assert holm([0.5, 0.9]) == [1.0, 1.0]  # 2 x 0.5, capped at 1, then the running maximum


def test_benjamini_hochberg_against_a_hand_computation():
    p = [0.01, 0.04, 0.03, 0.005]
    # ranks 2, 4, 3, 1 of m = 4: p * m / rank, then the running minimum from the top
    expected = [min(0.02, 0.04), 0.04, 0.04, 0.02]
    assert benjamini_hochberg(p) == pytest.approx(expected)


def test_power_against_simulation_and_the_detectable_effect_inverts_it():
    rng = np.random.default_rng(0)
    delta, sd, n = 0.5, 0.6, 8
    sims = rng.normal(delta, sd, size=(20000, n))
    rejected = np.mean(stats.ttest_1samp(sims, 0.0, axis=1).pvalue < 0.05)
    assert power_paired(delta, sd, n) == pytest.approx(rejected, abs=0.015)
    mde = detectable_effect(sd, n)
    assert power_paired(mde, sd, n) == pytest.approx(0.8, abs=1e-6)
    needed = seeds_needed(0.2, 0.5)
    assert power_paired(0.2, 0.5, needed) >= 0.8 > power_paired(0.2, 0.5, needed - 1)
    assert seeds_needed(0.0, 0.5) is None and math.isnan(detectable_effect(0.5, 1))


def test_tost_establishes_a_match_only_inside_the_margin():
    a = [96.0, 96.2, 95.9, 96.1, 96.0]
    b = [96.05, 96.1, 96.0, 96.0, 96.1]
    assert tost_paired(a, b, margin=0.5) < 0.01
    assert tost_paired([x + 1.0 for x in a], b, margin=0.5) > 0.5
