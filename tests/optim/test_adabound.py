"""AdaBound against a direct re-computation of docs/methods.md section 2, torch's Adam and
closed forms."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from optim_helpers import batch, make_closure, tanh_net, train

from polyak.optim import AdaBound

B1, B2 = 0.9, 0.999


def reference_adabound(model, x, y, steps, lrs, final_lr, gamma, eps, wd, amsbound):
    """The formula written out, one parameter at a time; counts clamped coordinates."""
    params = list(model.parameters())
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    vmax = [torch.zeros_like(p) for p in params]
    clamped_low = clamped_high = 0
    closure = make_closure(model, x, y)
    for t in range(1, steps + 1):
        closure()
        with torch.no_grad():
            for i, p in enumerate(params):
                g = p.grad + wd * p
                m[i] = B1 * m[i] + (1 - B1) * g
                v[i] = B2 * v[i] + (1 - B2) * g * g
                vmax[i] = torch.maximum(vmax[i], v[i])
                v_used = vmax[i] if amsbound else v[i]
                final = final_lr  # lr / base_lr = 1 without a scheduler
                lo = final * (1 - 1 / (gamma * t + 1))
                hi = final * (1 + 1 / (gamma * t))
                raw = lrs[i] * math.sqrt(1 - B2**t) / (1 - B1**t) / (torch.sqrt(v_used) + eps)
                clamped_low += int((raw < lo).sum())
                clamped_high += int((raw > hi).sum())
                p.sub_(torch.clamp(raw, lo, hi) * m[i])
    return clamped_low, clamped_high


@pytest.mark.parametrize("amsbound", [False, True])
def test_matches_direct_recomputation(amsbound):
    model, x, y = tanh_net(dtype=torch.float64), *batch(dtype=torch.float64)
    ref = copy.deepcopy(model)
    layers = list(model.children())
    groups = [{"params": layers[0].parameters(), "lr": 0.003},
              {"params": [p for layer in layers[1:] for p in layer.parameters()]}]
    opt = AdaBound(groups, lr=0.001, final_lr=0.1, gamma=0.05, eps=1e-6, weight_decay=5e-3,
                   amsbound=amsbound)
    train(model, opt, 30, x, y)
    lrs = [0.003, 0.003] + [0.001] * 4
    low, high = reference_adabound(ref, x, y, 30, lrs, 0.1, 0.05, 1e-6, 5e-3, amsbound)
    assert low > 0 and high > 0  # both bounds were active somewhere: the clamp is exercised
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("amsbound", [False, True])
def test_tiny_gamma_is_adam(amsbound):
    """gamma -> 0: lo -> 0, hi -> inf, the clamp is inactive; with eps=0 that is torch's Adam."""
    model, x, y = tanh_net(), *batch()
    ref = copy.deepcopy(model)
    train(model, AdaBound(model.parameters(), lr=1e-2, gamma=1e-12, eps=0.0, weight_decay=1e-2,
                          amsbound=amsbound), 50, x, y)
    train(ref, torch.optim.Adam(ref.parameters(), lr=1e-2, eps=0.0, weight_decay=1e-2,
                                amsgrad=amsbound, foreach=False), 50, x, y)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def _constant_gradient_run(opt, p, g, steps, after_step=None):
    updates = []
    for _ in range(steps):
        p.grad = g.clone()
        before = p.detach().clone()
        opt.step()
        if after_step is not None:
            after_step()
        updates.append(before - p.detach())
    return updates


def test_late_limit_is_sgd_with_final_lr():
    """Bounds closed (gamma huge): every update is final_lr * m, m_t = (1 - b1^t) g."""
    g = torch.tensor([0.3, -2.0, 1e-3, 50.0], dtype=torch.float64)
    p = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    opt = AdaBound([p], lr=1e-3, final_lr=0.1, gamma=1e9)
    for t, update in enumerate(_constant_gradient_run(opt, p, g, 10), start=1):
        torch.testing.assert_close(update, 0.1 * (1 - B1**t) * g, rtol=1e-8, atol=0)


def test_bounds_follow_lr_scheduler_and_survive_state_dict():
    g = torch.tensor([0.3, -2.0, 1e-3], dtype=torch.float64)
    p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = AdaBound([p], lr=1e-3, final_lr=0.1, gamma=1e9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    updates = _constant_gradient_run(opt, p, g, 4, after_step=sched.step)
    for t, update in enumerate(updates, start=1):  # lr halves each step: so does final
        expected = 0.1 * 0.5 ** (t - 1) * (1 - B1**t) * g
        torch.testing.assert_close(update, expected, rtol=1e-8, atol=0)
    # A fresh optimizer built with the current (scheduled) lr learns base_lr from the checkpoint.
    q = p.detach().clone().requires_grad_()
    fresh = AdaBound([q], lr=opt.param_groups[0]["lr"], final_lr=0.1, gamma=1e9)
    fresh.load_state_dict(opt.state_dict())
    update = _constant_gradient_run(fresh, q, g, 1)[0]
    torch.testing.assert_close(update, 0.1 * 0.5**4 * (1 - B1**5) * g, rtol=1e-8, atol=0)


def test_zero_lr_group_does_not_move():
    a = torch.ones(3, requires_grad=True)
    b = torch.ones(3, requires_grad=True)
    opt = AdaBound([{"params": [a], "lr": 0.0}, {"params": [b]}], lr=1e-3, weight_decay=1e-2)
    for _ in range(3):
        a.grad, b.grad = torch.ones(3), torch.ones(3)
        opt.step()
    assert torch.equal(a, torch.ones(3))
    assert not torch.equal(b, torch.ones(3))


@pytest.mark.parametrize("amsbound", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_foreach_and_single_tensor_paths_are_bitwise_equal(amsbound, weight_decay):
    gen = torch.Generator().manual_seed(0)
    shapes = [((5, 3), torch.float32), ((7,), torch.float64), ((2, 2, 3), torch.float32)]
    base = [torch.randn(s, generator=gen, dtype=d) for s, d in shapes]
    a = [t.clone().requires_grad_() for t in base]
    b = [t.clone().requires_grad_() for t in base]
    kwargs = dict(lr=1e-2, gamma=0.1, weight_decay=weight_decay, amsbound=amsbound)
    opt_a, opt_b = AdaBound(a, foreach=True, **kwargs), AdaBound(b, foreach=False, **kwargs)
    for _ in range(6):
        for pa, pb in zip(a, b):
            pa.grad = torch.randn(pa.shape, generator=gen, dtype=pa.dtype)
            pb.grad = pa.grad.clone()
        opt_a.step()
        opt_b.step()
    for pa, pb in zip(a, b):
        assert torch.equal(pa, pb)
        for key, value in opt_a.state[pa].items():
            assert torch.equal(value, opt_b.state[pb][key]), key


@pytest.mark.parametrize("kwargs, name", [
    (dict(lr=-1e-3), "lr"),
    (dict(betas=(0.9, 1.0)), "betas"),
    (dict(final_lr=0.0), "final_lr"),
    (dict(final_lr=-0.1), "final_lr"),
    (dict(gamma=0.0), "gamma"),
    (dict(gamma=-1e-3), "gamma"),
    (dict(eps=-1e-8), "eps"),
    (dict(weight_decay=-1e-4), "weight_decay"),
])
def test_invalid_arguments_raise(kwargs, name):
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match=name):
        AdaBound([p], **kwargs)
    with pytest.raises(ValueError, match=name):
        AdaBound([{"params": [p], **kwargs}])


def test_sparse_gradient_raises():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        AdaBound(emb.parameters()).step()
