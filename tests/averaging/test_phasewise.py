"""Phase-wise aggregation (Kobayashi, eq. 3 / Alg. 1) against explicit weighted sums."""

from __future__ import annotations

import copy

import pytest
import torch
from avg_helpers import (
    assert_lists_close,
    assert_lists_equal,
    bn_buffers,
    bn_net,
    image_batches,
    mlp,
    params_of,
    regression_data,
    train_epoch,
)
from torch.optim.swa_utils import update_bn

from polyak.averaging import PhaseWise, phase_weights


@pytest.mark.parametrize("T", [5, 20, 80])
def test_phase_weights_sum_to_one_and_match_the_formula(T):
    gamma = 0.9 ** (80 / T)
    w = phase_weights(T, gamma)
    assert len(w) == T
    assert abs(sum(w) - 1.0) < 1e-12
    for t in range(1, T + 1):
        assert abs(w[t - 1] - (1 - gamma) * gamma ** (T - t) / (1 - gamma ** T)) < 1e-15


def test_gamma_to_the_phase_length_is_gamma0_to_the_reference():
    pwa = PhaseWise(mlp(), phases=[80, 40, 40, 7, 1, 160])
    for p, T_p in enumerate(pwa.phases):
        assert pwa.gamma_of(p) ** T_p == pytest.approx(0.9 ** 80, rel=1e-12)


def test_phase_index_gamma_and_weights_follow_the_epochs():
    model = mlp()
    pwa = PhaseWise(model, phases=[3, 2])
    seen = []
    for epoch in range(5):
        seen.append((pwa.phase_index, pwa.gamma))
        pwa.end_epoch(epoch)
    assert [s[0] for s in seen] == [0, 0, 0, 1, 1]
    assert seen[0][1] == pytest.approx(0.9 ** (80 / 3))
    assert seen[3][1] == pytest.approx(0.9 ** (80 / 2))
    assert pwa.phase_index == 2 and pwa.finished
    assert pwa.weights(0) == phase_weights(3, 0.9 ** (80 / 3))


def _run(phases, gamma0, ref_epochs, policy="keep", opt_cls=torch.optim.SGD, **opt_kw):
    """Train with PhaseWise; record each epoch's weights and the weights after each epoch end."""
    model = mlp()
    opt = opt_cls(model.parameters(), **opt_kw)
    pwa = PhaseWise(model, phases, gamma0=gamma0, ref_epochs=ref_epochs, momentum=policy,
                    optimizer=opt)
    data = regression_data()
    trained, after = [], []
    for epoch in range(sum(phases)):
        train_epoch(model, opt, data)
        trained.append(params_of(model))
        pwa.end_epoch(epoch)
        after.append(params_of(model))
    return trained, after, pwa, opt


def test_two_phase_sgd_run_against_explicit_weighted_sums():
    phases, gamma0, ref = [3, 2], 0.8, 3
    trained, after, _, _ = _run(phases, gamma0, ref, lr=0.05, momentum=0.9)
    start = 0
    for T in phases:
        gamma = gamma0 ** (ref / T)
        expected = []
        for i in range(len(trained[0])):
            s = torch.zeros_like(trained[0][i])
            for t in range(1, T + 1):
                s += (1 - gamma) * gamma ** (T - t) / (1 - gamma ** T) * trained[start + t - 1][i]
            expected.append(s)
        end = start + T - 1
        assert_lists_close(after[end], expected, rtol=1e-5, atol=1e-6)
        for e in range(start, end):          # inside a phase the live weights are untouched
            assert_lists_equal(after[e], trained[e])
        start += T
    # the second phase trained on from the first aggregate: its first epoch differs from what
    # the same optimizer would have produced from the un-aggregated weights
    assert any(not torch.equal(a, b) for a, b in zip(after[2], trained[2]))


def test_gamma0_to_zero_is_plain_training():
    phases = [3, 2]
    _, after, _, _ = _run(phases, 1e-12, 80, lr=0.05, momentum=0.9)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    data = regression_data()
    for epoch in range(sum(phases)):
        train_epoch(model, opt, data)
        assert_lists_equal(after[epoch], params_of(model))


def test_constant_iterates_are_a_fixed_point():
    model = mlp()
    w = params_of(model)
    pwa = PhaseWise(model, phases=[4, 3], gamma0=0.5, ref_epochs=4)
    for epoch in range(7):
        pwa.end_epoch(epoch)
    assert_lists_close(params_of(model), w, rtol=1e-6, atol=1e-7)


def test_foreach_and_single_tensor_paths_agree_bit_for_bit():
    runs = []
    for foreach in (True, False):
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        pwa = PhaseWise(model, [2, 2], gamma0=0.7, ref_epochs=2, foreach=foreach)
        for epoch in range(4):
            train_epoch(model, opt, regression_data())
            pwa.end_epoch(epoch)
        runs.append(params_of(model))
    assert_lists_equal(*runs)


def test_momentum_reset_zeroes_sgd_momentum_buffers_at_phase_ends_only():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pwa = PhaseWise(model, [2, 2], momentum="reset", optimizer=opt)
    data = regression_data()
    train_epoch(model, opt, data)
    pwa.end_epoch(0)                         # mid-phase: untouched
    assert all(torch.count_nonzero(opt.state[p]["momentum_buffer"]) > 0
               for p in model.parameters())
    train_epoch(model, opt, data)
    pwa.end_epoch(1)                         # phase end: zeroed
    assert all(torch.count_nonzero(opt.state[p]["momentum_buffer"]) == 0
               for p in model.parameters())


def test_momentum_reset_zeroes_adam_first_moment_and_keeps_second():
    _, _, pwa, opt = _run([2], 0.9, 80, policy="reset", opt_cls=torch.optim.Adam, lr=1e-2)
    for p in pwa.model.parameters():
        st = opt.state[p]
        assert torch.count_nonzero(st["exp_avg"]) == 0
        assert torch.count_nonzero(st["exp_avg_sq"]) > 0
        assert float(st["step"]) == 2 * len(regression_data())


def test_momentum_keep_leaves_the_optimizer_state_alone():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pwa = PhaseWise(model, [1], optimizer=opt)
    train_epoch(model, opt, regression_data())
    before = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    pwa.end_epoch(0)
    assert_lists_equal([opt.state[p]["momentum_buffer"] for p in model.parameters()], before)


def test_bn_recalibrated_at_phase_end_with_a_loader():
    model = bn_net()
    loader = image_batches()
    pwa = PhaseWise(model, [2], gamma0=0.5, ref_epochs=2)
    iterates = []
    for epoch in range(2):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * (epoch + 1))
        iterates.append(params_of(model))
        before = bn_buffers(model)
        pwa.end_epoch(epoch, bn_loader=loader)
        if epoch == 0:                       # mid-phase: BatchNorm untouched
            assert_lists_equal(bn_buffers(model), before)
    ref = copy.deepcopy(model)               # holds the aggregate now
    update_bn(loader, ref)
    assert_lists_equal(bn_buffers(model), bn_buffers(ref))
    gamma = 0.5
    expected = [((1 - gamma) * gamma * a + (1 - gamma) * b) / (1 - gamma ** 2)
                for a, b in zip(*iterates)]
    assert_lists_close(params_of(model), expected)


def test_applied_mid_phase_shows_the_normalised_partial_aggregate():
    model = mlp()
    pwa = PhaseWise(model, [3], gamma0=0.5, ref_epochs=3)
    w1 = params_of(model)
    pwa.end_epoch(0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    w2 = params_of(model)
    pwa.end_epoch(1)
    with pwa.applied(model):
        # after t=2 epochs: (gamma(1-gamma) w1 + (1-gamma) w2) / (1-gamma^2)
        expected = [(0.25 * a + 0.5 * b) / 0.75 for a, b in zip(w1, w2)]
        assert_lists_close(params_of(model), expected)
    assert_lists_equal(params_of(model), w2)
    assert pwa.reports_average is False


def test_epochs_past_the_phases_or_out_of_order_raise():
    model = mlp()
    pwa = PhaseWise(model, [1, 1])
    with pytest.raises(ValueError, match="expected 0"):
        pwa.end_epoch(1)
    pwa.end_epoch(0)
    pwa.end_epoch(1)
    with pytest.raises(ValueError, match="past the last phase"):
        pwa.end_epoch(2)


def test_momentum_reset_reaches_the_optimizer_inside_a_wrapper():
    class Wrapper:                           # e.g. Lookahead: holds the inner optimizer
        def __init__(self, optimizer):
            self.optimizer = optimizer
            self.param_groups = optimizer.param_groups

    model = mlp()
    inner = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pwa = PhaseWise(model, [1], momentum="reset", optimizer=Wrapper(inner))
    train_epoch(model, inner, regression_data())
    pwa.end_epoch(0)
    assert all(torch.count_nonzero(inner.state[p]["momentum_buffer"]) == 0
               for p in model.parameters())
