"""Learning-rate schedules against the papers' formulas, re-computed here, and the torch adapter."""

from __future__ import annotations

import math
import pickle

import pytest
import torch

from polyak import schedules as S


def _grid(end, n=4001):
    return [end * i / (n - 1) for i in range(n)]


def test_gadam_linear_eq12_shape():
    T, r = 300, 0.01
    f = S.gadam_linear(T, r=r)
    for e in _grid(1.2 * T):
        t = e / T
        if t <= 0.5:
            assert f(e) == 1.0
        elif t >= 0.9:
            assert f(e) == pytest.approx(r, abs=1e-12)
        else:
            assert f(e) == pytest.approx(1 - (1 - r) * (t - 0.5) / 0.4)


def test_gadam_linear_is_continuous_and_non_increasing():
    for f in (S.gadam_linear(100), S.gadam_linear(300, avg_start=161)):
        values = [f(e) for e in _grid(320)]
        steps = [b - a for a, b in zip(values, values[1:])]
        assert max(steps) <= 1e-12                     # non-increasing
        assert max(abs(s) for s in steps) < 0.01       # no jump on a grid of 0.08 epochs


def test_gadam_linear_averaging_mode_eq13():
    T_avg, ratio = 161, 0.5
    f = S.gadam_linear(300, avg_start=T_avg, avg_ratio=ratio)
    assert f(0.5 * T_avg) == 1.0
    assert f(0.7 * T_avg) == pytest.approx(1 - (1 - ratio) * 0.2 / 0.4)
    assert f(0.9 * T_avg) == pytest.approx(ratio)
    for e in range(T_avg, 300):
        assert f(e) == pytest.approx(ratio, abs=1e-12)


def test_pwa_decay_matches_the_formula():
    phases, gamma0, ref = [8, 4, 3], 0.9, 8
    factors = [1.0, 0.1, 0.01]
    plain = S.pwa_decay(phases, gamma0=gamma0, ref_epochs=ref)
    scaled = S.pwa_decay(phases, gamma0=gamma0, ref_epochs=ref, factors=factors)
    start = 0
    for p, T in enumerate(phases):
        gamma = gamma0 ** (ref / T)
        for t in range(1, T + 1):
            want = (1 - gamma ** (T - t + 1)) / (1 - gamma ** T)
            for frac in (0.0, 0.5, 0.99):               # constant within the epoch
                e = start + t - 1 + frac
                assert plain(e) == pytest.approx(want, rel=1e-12)
                assert scaled(e) == pytest.approx(factors[p] * want, rel=1e-12)
        start += T
    assert plain(start) == plain(start - 1)             # past the end: the last value
    assert plain(0) == 1.0


def test_step_phases():
    f = S.step_phases([80, 40, 40], [1, 0.1, 0.01])
    assert [f(e) for e in (0, 79.9, 80, 119.5, 120, 159, 200)] == \
        [1, 1, 0.1, 0.1, 0.01, 0.01, 0.01]


def test_cosine_endpoints_and_warmup():
    f = S.cosine(100, min_factor=0.1)
    assert f(0) == 1.0
    assert f(100) == pytest.approx(0.1)
    assert f(50) == pytest.approx(0.1 + 0.9 * 0.5)
    assert f(150) == pytest.approx(0.1)
    g = S.cosine(10, warmup_epochs=4)
    assert [g(e) for e in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert g(4) == 1.0
    assert g(7) == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 6)))
    assert g(10) == pytest.approx(0.0, abs=1e-12)


def test_constant_and_reprs_and_pickling():
    assert S.constant()(123.4) == 1.0
    f = S.gadam_linear(300, avg_start=161)
    assert repr(f) == "gadam_linear(total_epochs=300, avg_start=161, r=0.01, avg_ratio=0.5)"
    assert repr(S.step_phases([2, 2], [1, 0.1])) == \
        "step_phases(phase_epochs=[2, 2], factors=[1.0, 0.1])"
    assert "pwa_decay(phase_epochs=[80, 40, 40]" in repr(S.pwa_decay([80, 40, 40]))
    assert repr(S.constant()) == "constant()"
    assert pickle.loads(pickle.dumps(f))(100) == f(100)


def _sgd(lrs=(0.1, 0.02)):
    w1, w2 = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    return torch.optim.SGD([{"params": [w1], "lr": lrs[0]}, {"params": [w2], "lr": lrs[1]}])


def test_scheduler_per_epoch():
    opt = _sgd()
    sched = S.as_scheduler(opt, S.step_phases([2, 3], [1, 0.1]))
    assert isinstance(sched, torch.optim.lr_scheduler.LRScheduler)
    for epoch in range(7):
        want = 1.0 if epoch < 2 else 0.1
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1 * want, 0.02 * want])
        assert sched.get_last_lr() == pytest.approx([0.1 * want, 0.02 * want])
        opt.step()
        sched.step()


def test_scheduler_per_step():
    opt = _sgd()
    steps_per_epoch, T = 5, 4
    sched = S.as_scheduler(opt, S.cosine(T), steps_per_epoch=steps_per_epoch)
    for k in range(T * steps_per_epoch + 3):
        progress = min(k / steps_per_epoch, T)
        want = 0.5 * (1 + math.cos(math.pi * progress / T))
        assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * want)
        assert opt.param_groups[1]["lr"] == pytest.approx(0.02 * want)
        opt.step()
        sched.step()


def test_scheduler_works_with_a_wrapper_exposing_param_groups():
    class Wrapper:                                     # not a torch.optim.Optimizer
        def __init__(self, inner):
            self.inner = inner
            self.param_groups = inner.param_groups

        def step(self):
            self.inner.step()

    inner = _sgd()
    opt = Wrapper(inner)
    sched = S.as_scheduler(opt, S.step_phases([1, 1], [1, 0.5]))
    opt.step()
    sched.step()
    assert inner.param_groups[0]["lr"] == pytest.approx(0.05)


def test_scheduler_state_dict_round_trip():
    sched_fn = S.gadam_linear(10)
    opt_a = _sgd()
    a = S.as_scheduler(opt_a, sched_fn, steps_per_epoch=3)
    for _ in range(17):
        a.step()
    state = a.state_dict()
    opt_b = _sgd()
    b = S.as_scheduler(opt_b, sched_fn, steps_per_epoch=3)
    b.load_state_dict(state)
    assert [g["lr"] for g in opt_b.param_groups] == [g["lr"] for g in opt_a.param_groups]
    for _ in range(10):
        a.step()
        b.step()
        assert [g["lr"] for g in opt_b.param_groups] == [g["lr"] for g in opt_a.param_groups]
    with pytest.raises(ValueError, match="steps_per_epoch"):
        S.as_scheduler(_sgd(), sched_fn).load_state_dict(state)


@pytest.mark.parametrize("make, name", [
    (lambda: S.step_phases([], []), "phase_epochs"),
    (lambda: S.step_phases([80, 0], [1, 0.1]), "phase_epochs"),
    (lambda: S.step_phases([80, 40], [1]), "factors"),
    (lambda: S.step_phases([80, 40], None), "factors"),
    (lambda: S.pwa_decay([]), "phase_epochs"),
    (lambda: S.pwa_decay([80, -1]), "phase_epochs"),
    (lambda: S.pwa_decay([80, 40], factors=[1, 0.1, 0.01]), "factors"),
    (lambda: S.pwa_decay([80], gamma0=1.0), "gamma0"),
    (lambda: S.gadam_linear(0), "total_epochs"),
    (lambda: S.gadam_linear(-5), "total_epochs"),
    (lambda: S.gadam_linear(300, r=0), "r"),
    (lambda: S.gadam_linear(300, r=1.5), "r"),
    (lambda: S.gadam_linear(300, avg_start=161, avg_ratio=0), "avg_ratio"),
    (lambda: S.gadam_linear(300, avg_start=161, avg_ratio=2), "avg_ratio"),
    (lambda: S.gadam_linear(300, avg_start=301), "avg_start"),
    (lambda: S.gadam_linear(300, avg_start=0), "avg_start"),
    (lambda: S.cosine(0), "total_epochs"),
    (lambda: S.cosine(10, min_factor=1.5), "min_factor"),
    (lambda: S.cosine(10, warmup_epochs=10), "warmup_epochs"),
    (lambda: S.as_scheduler(_sgd(), S.constant(), steps_per_epoch=0), "steps_per_epoch"),
    (lambda: S.as_scheduler(object(), S.constant()), "optimizer"),
])
def test_bad_input(make, name):
    with pytest.raises(ValueError, match=f"Invalid {name}"):
        make()
