"""EDM2's power-function EMA and its post-hoc reconstruction, against the recursion run on the
raw per-step iterates, the cubic EDM2 solves for gamma, and numerical integration."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from posthoc_helpers import net

from polyak.averaging import (
    SnapshotDir,
    SnapshotInfo,
    Snapshots,
    gamma_to_sigma_rel,
    power_ema_fit,
    power_ema_weights,
    reconstruct,
    sigma_rel_to_gamma,
)
from polyak.averaging.power_ema import _p_dot_p


@pytest.mark.parametrize("sigma_rel", [0.01, 0.05, 0.10, 0.2, 0.25, 0.29])
def test_gamma_is_the_largest_root_of_edm2s_cubic(sigma_rel):
    g = sigma_rel_to_gamma(sigma_rel)
    t = sigma_rel ** -2   # sigma_rel^2 = (g+1) / ((g+2)^2 (g+3))  <=>  this cubic = 0
    assert g ** 3 + 7 * g ** 2 + (16 - t) * g + (12 - t) == pytest.approx(0, abs=1e-9 * t)
    assert gamma_to_sigma_rel(g) == pytest.approx(sigma_rel, rel=1e-13)
    assert g > (math.sqrt(5) - 3) / 2


def test_edm2_profile_exponents():
    # EDM2 (Sec. 3): sigma_rel 0.05 and 0.10 are gamma 16.97 and 6.94
    assert sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.005)
    assert sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.005)
    with pytest.raises(ValueError, match="Invalid sigma_rel: 0.5"):
        sigma_rel_to_gamma(0.5)


@pytest.mark.parametrize("gamma", [0.0, 1.5, 6.94])
def test_exact_weights_are_those_of_the_recursion(gamma):
    T = 40
    ema = torch.zeros(T, dtype=torch.float64)   # the EMA of the unit vectors e_1..e_T
    for t in range(1, T + 1):
        beta = (1 - 1 / t) ** (gamma + 1)
        ema = beta * ema + (1 - beta) * torch.eye(T, dtype=torch.float64)[t - 1]
    torch.testing.assert_close(power_ema_weights(T, gamma), ema, rtol=0, atol=1e-15)


def test_kernel_inner_products_match_numerical_integration():
    tau = torch.linspace(0, 1, 400_001, dtype=torch.float64)

    def p(t, g):
        return torch.where(tau <= t, (g + 1) * tau ** g / t ** (g + 1), 0.0)

    for (ta, ga), (tb, gb) in [((0.4, 2.0), (1.0, 6.9)), ((1.0, 17.0), (0.7, 0.5)),
                               ((0.6, 3.0), (0.6, 3.0))]:
        want = torch.trapezoid(p(ta, ga) * p(tb, gb), tau)
        got = _p_dot_p(*(torch.tensor(v, dtype=torch.float64) for v in (ta, ga, tb, gb)))
        assert float(got) == pytest.approx(float(want), rel=1e-4)


def test_fit_of_a_stored_profile_is_that_profile():
    es = [SnapshotInfo(i, 50 * (i + 1), i) for i in range(6)]
    gammas = [sigma_rel_to_gamma(0.05), sigma_rel_to_gamma(0.15)]
    fit = power_ema_fit(es, 0.15, gammas=gammas)
    assert fit.step == 300 and fit.used == 6 and fit.error < 1e-6
    assert fit.profile_weights[-1][1] == pytest.approx(1.0, abs=1e-6)
    early = power_ema_fit(es, 0.1, step=200, gammas=gammas)
    assert early.used == 4 and early.profile_weights[4:] == [[0.0, 0.0]] * 2
    with pytest.raises(ValueError, match="no power-EMA profiles"):
        power_ema_fit(es, 0.1)


def train_with_profiles(directory, steps: int, every: int, profiles):
    """SGD on a float64 net; returns the raw iterate after every step (flat)."""
    model = net(torch.float64)
    snaps = Snapshots(model, directory, every=every, profiles=profiles)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    g = torch.Generator().manual_seed(0)
    iterates = []
    for _ in range(steps):
        x = torch.randn(16, 4, generator=g, dtype=torch.float64)
        y = torch.randint(3, (16,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        snaps.step()
        iterates.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    return torch.stack(iterates)


def power_ema_of(iterates: torch.Tensor, sigma_rel: float) -> torch.Tensor:
    """The power EMA of the iterates, run step by step (EDM2 Sec. 3)."""
    gamma = sigma_rel_to_gamma(sigma_rel)
    ema = torch.zeros_like(iterates[0])
    for t, theta in enumerate(iterates, start=1):
        beta = (1 - 1 / t) ** (gamma + 1)
        ema = beta * ema + (1 - beta) * theta
    return ema


def test_reconstruction_is_within_its_reported_error_of_the_exact_power_ema(tmp_path):
    iterates = train_with_profiles(tmp_path, steps=240, every=12, profiles=(0.05, 0.15))
    d = SnapshotDir(tmp_path)
    assert d.gammas == [sigma_rel_to_gamma(0.05), sigma_rel_to_gamma(0.15)]
    spread = (iterates.max(0).values - iterates.min(0).values) / 2   # max |theta_t - c|
    for sigma_rel, step in [(0.10, 240), (0.07, 240), (0.12, 180)]:
        fit = power_ema_fit(d, sigma_rel, step=step)
        got = torch.cat([t.flatten() for t in reconstruct(d, fit).values()])
        want = power_ema_of(iterates[:step], sigma_rel)
        bound = fit.error * (iterates[:step].max(0).values - iterates[:step].min(0).values) / 2
        assert 0 < fit.error < 0.05
        assert bool(((got - want).abs() <= bound + 1e-12).all()), (got - want).abs().max()
        assert float((got - want).abs().max()) < 0.05 * float(spread.max())
    # the stored profile itself: the last snapshot's value equals the recursion exactly
    last = d.load(len(d) - 1)
    stored = torch.cat([t.flatten() for t in last["profiles"][1]])
    torch.testing.assert_close(stored, power_ema_of(iterates, 0.15), rtol=0, atol=1e-12)
