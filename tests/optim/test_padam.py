"""Padam against torch's Adam/AdamW, closed forms and a plain-loop re-computation (METHODS s.1)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from optim_helpers import batch, make_closure, tanh_net, train

from polyak.optim import Padam

B1, B2 = 0.9, 0.999


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_partial_half_eps0_equals_torch_adamw(amsgrad, weight_decay):
    model, x, y = tanh_net(), *batch()
    ref = copy.deepcopy(model)
    train(model, Padam(model.parameters(), lr=1e-2, eps=0.0, weight_decay=weight_decay,
                       amsgrad=amsgrad), 50, x, y)
    train(ref, torch.optim.AdamW(ref.parameters(), lr=1e-2, eps=0.0, weight_decay=weight_decay,
                                 amsgrad=amsgrad, foreach=False), 50, x, y)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_coupled_partial_half_eps0_equals_torch_adam(amsgrad, weight_decay):
    model, x, y = tanh_net(), *batch()
    ref = copy.deepcopy(model)
    train(model, Padam(model.parameters(), lr=1e-2, eps=0.0, weight_decay=weight_decay,
                       amsgrad=amsgrad, decoupled_weight_decay=False), 50, x, y)
    train(ref, torch.optim.Adam(ref.parameters(), lr=1e-2, eps=0.0, weight_decay=weight_decay,
                                amsgrad=amsgrad, foreach=False), 50, x, y)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def reference_padam(model, x, y, steps, lrs, eps, wd, partial, amsgrad, decoupled):
    """docs/methods.md section 1 written out directly, one parameter at a time (float64 model)."""
    params = list(model.parameters())
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    vmax = [torch.zeros_like(p) for p in params]
    closure = make_closure(model, x, y)
    for t in range(1, steps + 1):
        closure()
        with torch.no_grad():
            for i, p in enumerate(params):
                lr, g = lrs[i], p.grad.clone()
                if decoupled:
                    p.mul_(1 - lr * wd)
                else:
                    g = g + wd * p
                m[i] = B1 * m[i] + (1 - B1) * g
                v[i] = B2 * v[i] + (1 - B2) * g * g
                vmax[i] = torch.maximum(vmax[i], v[i])
                v_used = vmax[i] if amsgrad else v[i]
                denom = (torch.sqrt(v_used) + eps) ** (2 * partial)
                p.sub_(lr * math.sqrt(1 - B2**t) / (1 - B1**t) * m[i] / denom)


@pytest.mark.parametrize("partial", [1 / 8, 0.25, 0.3])
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("decoupled", [True, False])
def test_partial_matches_plain_loop_recomputation(partial, amsgrad, decoupled):
    model, x, y = tanh_net(dtype=torch.float64), *batch(dtype=torch.float64)
    ref = copy.deepcopy(model)
    layers = list(model.children())
    groups = [{"params": layers[0].parameters(), "lr": 0.05},
              {"params": [p for layer in layers[1:] for p in layer.parameters()]}]
    opt = Padam(groups, lr=0.02, eps=1e-3, weight_decay=0.05, partial=partial, amsgrad=amsgrad,
                decoupled_weight_decay=decoupled)
    train(model, opt, 30, x, y)
    lrs = [0.05, 0.05] + [0.02] * 4
    reference_padam(ref, x, y, 30, lrs, 1e-3, 0.05, partial, amsgrad, decoupled)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("partial", [1e-9, 1 / 8, 0.25, 0.5])
@pytest.mark.parametrize("eps", [0.0, 1e-3])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_constant_gradient_closed_form(partial, eps, amsgrad):
    """With g constant: m_t = bc1*g, v_t = bc2*g^2, so each step is
    lr*sqrt(bc2)*g / (sqrt(bc2)*|g| + eps)^(2*partial); partial -> 0 gives lr*sqrt(bc2)/bc1*m."""
    g = torch.tensor([0.3, -2.0, 1e-2, 5.0], dtype=torch.float64)
    p = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    opt = Padam([p], lr=0.1, eps=eps, partial=partial, amsgrad=amsgrad)
    expected = torch.zeros(4, dtype=torch.float64)
    for t in range(1, 21):
        p.grad = g.clone()
        opt.step()
        bc2 = 1 - B2**t
        expected -= 0.1 * math.sqrt(bc2) * g / (math.sqrt(bc2) * g.abs() + eps) ** (2 * partial)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=0)
    if partial == 1e-9:  # the limit: bias-corrected momentum lr*sqrt(bc2)/bc1*m, m = bc1*g
        limit = -0.1 * g * sum(math.sqrt(1 - B2**t) for t in range(1, 21))
        torch.testing.assert_close(p.detach(), limit, rtol=1e-6, atol=0)


def test_amsgrad_max_is_taken_on_raw_v():
    p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = Padam([p], lr=1.0, eps=0.0, amsgrad=True)
    p.grad = torch.tensor([10.0], dtype=torch.float64)
    opt.step()
    p.grad = torch.tensor([0.1], dtype=torch.float64)
    before = p.detach().clone()
    opt.step()
    m2 = B1 * (1 - B1) * 10.0 + (1 - B1) * 0.1
    v1 = (1 - B2) * 100.0
    v2 = B2 * v1 + (1 - B2) * 0.01  # < v1: the raw maximum keeps v1
    assert v2 < v1
    step2 = math.sqrt(1 - B2**2) / (1 - B1**2) * m2 / math.sqrt(v1)
    torch.testing.assert_close(before - p.detach(), torch.tensor([step2], dtype=torch.float64),
                               rtol=1e-12, atol=0)


@pytest.mark.parametrize("config", [
    dict(partial=0.5), dict(partial=1 / 8, amsgrad=True), dict(partial=0.3, amsgrad=True),
    dict(partial=0.25, weight_decay=0.1), dict(partial=0.5, weight_decay=0.1,
                                                 decoupled_weight_decay=False),
])
def test_foreach_and_single_tensor_paths_are_bitwise_equal(config):
    """Mixed float32/float64 parameters, random gradients: identical bits in params and state."""
    gen = torch.Generator().manual_seed(0)
    shapes = [((5, 3), torch.float32), ((7,), torch.float64), ((2, 2, 3), torch.float32)]
    base = [torch.randn(s, generator=gen, dtype=d) for s, d in shapes]
    a = [t.clone().requires_grad_() for t in base]
    b = [t.clone().requires_grad_() for t in base]
    opt_a = Padam(a, lr=1e-2, foreach=True, **config)
    opt_b = Padam(b, lr=1e-2, foreach=False, **config)
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
    (dict(betas=(1.0, 0.999)), "betas"),
    (dict(betas=(0.9, -0.1)), "betas"),
    (dict(eps=-1e-8), "eps"),
    (dict(weight_decay=-0.1), "weight_decay"),
    (dict(partial=0.0), "partial"),
    (dict(partial=0.6), "partial"),
    (dict(partial=-0.125), "partial"),
])
def test_invalid_arguments_raise_before_state(kwargs, name):
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match=name):
        Padam([p], **kwargs)
    with pytest.raises(ValueError, match=name):
        Padam([{"params": [p], **kwargs}])


def test_sparse_gradient_raises():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        Padam(emb.parameters()).step()
