"""Lookahead against torch's optimizers with the slow-weight sync re-computed in the test."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
from optim_helpers import batch, make_closure, tanh_net, train

from polyak.optim import Lookahead, Padam


def sgd(model, lr=0.05):
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)


def reference_lookahead(model, inner, steps, k, alpha, x, y, sched=None):
    """torch's optimizer plus the sync written out: every k steps slow += alpha*(fast - slow)."""
    slow = [p.detach().clone() for p in model.parameters()]
    closure = make_closure(model, x, y)
    for t in range(1, steps + 1):
        inner.step(closure)
        if sched is not None:
            sched.step()
        if t % k == 0:
            with torch.no_grad():
                for s, p in zip(slow, model.parameters()):
                    s.add_(alpha * (p - s))
                    p.copy_(s)
    return slow


def test_alpha_one_equals_inner_optimizer_exactly():
    model, x, y = tanh_net(), *batch()
    ref = copy.deepcopy(model)
    train(model, Lookahead(sgd(model), k=3, alpha=1.0), 10, x, y)
    train(ref, sgd(ref), 10, x, y)
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("foreach", [True, False])
def test_sync_every_k_steps_matches_recomputation(foreach):
    model, x, y = tanh_net(), *batch()
    ref = copy.deepcopy(model)
    la = Lookahead(sgd(model), k=4, alpha=0.3, foreach=foreach)
    closure = make_closure(model, x, y)
    last_slow = [p.detach().clone() for p in model.parameters()]  # copied at construction
    for t in range(1, 11):
        la.step(closure)
        slow_now = [s.clone() for s in la.slow_weights()]
        if t % 4 == 0:  # a sync: slow moved, and right after it fast == slow
            assert not all(torch.equal(s, e) for s, e in zip(slow_now, last_slow))
            assert all(torch.equal(s, p) for s, p in zip(slow_now, model.parameters()))
        else:  # between syncs the slow weights do not change
            assert all(torch.equal(s, e) for s, e in zip(slow_now, last_slow))
        last_slow = slow_now
    slow = reference_lookahead(ref, sgd(ref), 10, 4, 0.3, x, y)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    for s, r in zip(la.slow_weights(), slow):
        torch.testing.assert_close(s, r, rtol=1e-6, atol=1e-7)


def test_inner_state_is_left_untouched_by_the_sync():
    model, x, y = tanh_net(), *batch()
    inner = sgd(model)
    la = Lookahead(inner, k=2, alpha=0.5)
    closure = make_closure(model, x, y)
    la.step(closure)
    buffers = [inner.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    la.step(closure)  # step 2 syncs; recompute what SGD alone would hold as momentum
    for p, b in zip(model.parameters(), buffers):
        assert torch.equal(inner.state[p]["momentum_buffer"], 0.9 * b + p.grad)


def test_works_with_torch_lr_scheduler():
    model, x, y = tanh_net(), *batch()
    ref = copy.deepcopy(model)
    la = Lookahead(sgd(model), k=3, alpha=0.5)
    assert isinstance(la, torch.optim.Optimizer)
    assert la.param_groups is la.optimizer.param_groups
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
        sched = torch.optim.lr_scheduler.StepLR(la, step_size=2, gamma=0.5)
        closure = make_closure(model, x, y)
        for _ in range(7):
            la.step(closure)
            sched.step()
    assert la.optimizer.param_groups[0]["lr"] == 0.05 * 0.5**3
    ref_inner = sgd(ref)
    ref_sched = torch.optim.lr_scheduler.StepLR(ref_inner, step_size=2, gamma=0.5)
    reference_lookahead(ref, ref_inner, 7, 3, 0.5, x, y, sched=ref_sched)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_state_dict_holds_slow_weights_and_counter():
    model, x, y = tanh_net(), *batch()
    ref = copy.deepcopy(model)
    la = Lookahead(Padam(model.parameters(), lr=1e-2), k=3, alpha=0.5)
    train(model, la, 7, x, y)
    buf = io.BytesIO()
    torch.save(la.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf)
    assert state["step_count"] == 7
    slow = reference_lookahead(ref, Padam(ref.parameters(), lr=1e-2), 7, 3, 0.5, x, y)
    for s, r in zip(state["slow"], slow):
        torch.testing.assert_close(s, r, rtol=1e-6, atol=1e-7)
    # restored into a fresh wrapper: the next sync (at step 9) uses the saved slow weights
    fresh_model = copy.deepcopy(model)
    fresh = Lookahead(Padam(fresh_model.parameters(), lr=1e-2), k=5, alpha=0.9)
    fresh.load_state_dict(state)
    assert (fresh.k, fresh.alpha, fresh.step_count) == (3, 0.5, 7)
    train(model, la, 2, x, y)
    train(fresh_model, fresh, 2, x, y)
    for p, q in zip(model.parameters(), fresh_model.parameters()):
        assert torch.equal(p, q)


def test_zero_grad_and_add_param_group_delegate():
    model = tanh_net()
    extra = torch.nn.Parameter(torch.ones(2))
    la = Lookahead(sgd(model), k=2)
    model(torch.randn(2, 6)).sum().backward()
    la.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    la.add_param_group({"params": [extra], "lr": 0.1})
    assert la.optimizer.param_groups[-1]["params"] == [extra]
    assert torch.equal(la.slow_weights()[-1], extra.detach())


@pytest.mark.parametrize("kwargs, name", [
    (dict(k=0), "k"), (dict(k=2.5), "k"), (dict(k=True), "k"),
    (dict(alpha=0.0), "alpha"), (dict(alpha=1.5), "alpha"), (dict(alpha=-0.5), "alpha"),
])
def test_invalid_arguments_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Lookahead(sgd(tanh_net()), **kwargs)


def test_non_optimizer_raises():
    with pytest.raises(ValueError, match="optimizer"):
        Lookahead(torch.optim.SGD, k=5)


def test_eval_shows_the_slow_weights_and_train_puts_the_fast_back():
    """The Lookahead authors evaluate the slow weights; mid-cycle they differ from the fast."""
    from polyak.method import Method

    model, x, y = tanh_net(), *batch()
    ref = copy.deepcopy(model)
    la = Lookahead(sgd(model), k=4, alpha=0.3)
    train(model, la, 6, x, y)                       # two steps into the second cycle
    slow = reference_lookahead(ref, sgd(ref), 6, 4, 0.3, x, y)
    fast = [p.detach().clone() for p in model.parameters()]
    assert not all(torch.equal(f, s) for f, s in zip(fast, slow))
    method = Method(model, la)
    assert not method.reports_live_weights
    with method.eval_weights():
        for p, s in zip(model.parameters(), slow):
            assert torch.allclose(p, s, rtol=1e-6, atol=1e-7)
    for p, f in zip(model.parameters(), fast):      # back to the fast weights, bit for bit
        assert torch.equal(p, f)
    la.train()                                      # a no-op outside eval()
    assert all(torch.equal(p, f) for p, f in zip(model.parameters(), fast))


def test_to_slow_ends_lookahead_at_its_slow_weights_and_a_replayed_switch_keeps_weights():
    """Gadam + Lookahead: the switch to IA continues from the slow weights; a checkpoint taken
    after the switch, loaded into a fresh Method, must not move the weights again."""
    from polyak.method import Method, SwitchOptimizer

    model, x, y = tanh_net(), *batch()
    la = Lookahead(sgd(model), k=4, alpha=0.3)

    def switched(m):
        return SwitchOptimizer(lambda o: o.optimizer, at_epoch=1,
                               on_switch=lambda o: o.to_slow())

    method = Method(model, la, switches=[switched(model)])
    for _ in range(6):
        method.step(lambda: torch.nn.functional.mse_loss(model(x), y))
    slow = [s.clone() for s in la.slow_weights()]
    method.end_epoch(0)
    assert method.optimizer is la.optimizer
    assert all(torch.equal(p, s) for p, s in zip(model.parameters(), slow))
    state = copy.deepcopy(method.state_dict())
    weights = copy.deepcopy(model.state_dict())
    fresh = copy.deepcopy(model)
    fresh_method = Method(fresh, Lookahead(sgd(fresh), k=4, alpha=0.3),
                          switches=[switched(fresh)])
    fresh.load_state_dict(weights)
    fresh_method.load_state_dict(state)
    assert all(torch.equal(p, q) for p, q in zip(fresh.parameters(), model.parameters()))
    assert isinstance(fresh_method.optimizer, torch.optim.SGD)
