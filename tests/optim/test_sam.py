"""SAM/ASAM against torch's SGD, closed-form perturbations and a hand-written two-pass step."""

from __future__ import annotations

import copy

import pytest
import torch
from optim_helpers import batch, make_closure, tanh_net, train
from torch import nn

from polyak.optim import SAM, Padam, frozen_bn_stats


def sgd_kwargs():
    return dict(lr=0.05, momentum=0.9)


def test_rho_zero_equals_base_optimizer_exactly():
    model, x, y = tanh_net(), *batch()
    ref = copy.deepcopy(model)
    train(model, SAM(model.parameters(), torch.optim.SGD, rho=0.0, **sgd_kwargs()), 10, x, y)
    train(ref, torch.optim.SGD(ref.parameters(), **sgd_kwargs()), 10, x, y)
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("adaptive", [False, True])
def test_perturbation_closed_form_and_norm(adaptive):
    model, x, y = tanh_net(dtype=torch.float64), *batch(dtype=torch.float64)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.07, adaptive=adaptive, lr=0.1)
    make_closure(model, x, y)()
    w = [p.detach().clone() for p in model.parameters()]
    g = [p.grad.clone() for p in model.parameters()]
    opt.first_step()
    e = [p.detach() - w0 for p, w0 in zip(model.parameters(), w)]
    scale = [w0.abs() if adaptive else torch.ones_like(w0) for w0 in w]
    n = torch.cat([(s * gi).reshape(-1) for s, gi in zip(scale, g)]).norm()
    for ei, si, gi in zip(e, scale, g):
        torch.testing.assert_close(ei, 0.07 * si * si * gi / n, rtol=1e-9, atol=1e-15)
    # ||e|| = rho for SAM; ||e / |w| || = rho for ASAM
    e_scaled = torch.cat([(ei / si).reshape(-1) for ei, si in zip(e, scale)])
    torch.testing.assert_close(e_scaled.norm(), torch.tensor(0.07, dtype=torch.float64),
                               rtol=1e-9, atol=0)


def test_second_step_restores_w_and_uses_gradient_at_perturbed_point():
    model, x, y = tanh_net(dtype=torch.float64), *batch(dtype=torch.float64)
    ref, probe = copy.deepcopy(model), copy.deepcopy(model)
    SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.2).step(make_closure(model, x, y))
    # by hand: gradient at w, e = rho*g/||g||, gradient at w + e, SGD step from w
    make_closure(ref, x, y)()
    g = [p.grad.clone() for p in ref.parameters()]
    n = torch.cat([gi.reshape(-1) for gi in g]).norm()
    with torch.no_grad():
        for q, gi in zip(probe.parameters(), g):
            q.add_(0.1 * gi / n)
    make_closure(probe, x, y)()
    with torch.no_grad():
        for p, q in zip(ref.parameters(), probe.parameters()):
            p.sub_(0.2 * q.grad)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm_statistics_come_from_the_clean_pass_only(momentum):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8, momentum=momentum), nn.Tanh(),
                          nn.Linear(8, 3))
    x, y = batch()
    model.train()
    reference = copy.deepcopy(model)
    reference(x)  # one clean forward pass in train mode
    unguarded = copy.deepcopy(model)
    SAM(model.parameters(), torch.optim.SGD, lr=0.1, model=model).step(make_closure(model, x, y))
    SAM(unguarded.parameters(), torch.optim.SGD, lr=0.1).step(make_closure(unguarded, x, y))
    bn, ref_bn, bad_bn = model[1], reference[1], unguarded[1]
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(bn, name), getattr(ref_bn, name)), name
    assert bad_bn.num_batches_tracked.item() == 2  # without model= the second pass counts too
    with torch.no_grad():
        before = [b.clone() for b in bn.buffers()]
        with frozen_bn_stats(model):
            model(x + 1.0)
        assert all(torch.equal(a, b) for a, b in zip(before, bn.buffers()))


def test_base_given_as_class_or_instance_gives_same_result():
    model, x, y = tanh_net(), *batch()
    twin = copy.deepcopy(model)
    train(model, SAM(model.parameters(), torch.optim.SGD, rho=0.05, **sgd_kwargs()), 5, x, y)
    base = torch.optim.SGD(twin.parameters(), **sgd_kwargs())
    sam = SAM(twin.parameters(), base, rho=0.05)
    assert sam.param_groups is base.param_groups
    train(twin, sam, 5, x, y)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("adaptive", [False, True])
def test_foreach_and_single_tensor_perturbations_are_bitwise_equal(adaptive):
    gen = torch.Generator().manual_seed(0)
    shapes = [((5, 3), torch.float32), ((7,), torch.float64), ((2, 2, 3), torch.float32)]
    base = [torch.randn(s, generator=gen, dtype=d) for s, d in shapes]
    a = [t.clone().requires_grad_() for t in base]
    b = [t.clone().requires_grad_() for t in base]
    opt_a = SAM(a, Padam, adaptive=adaptive, foreach=True)
    opt_b = SAM(b, Padam, adaptive=adaptive, foreach=False)
    for _ in range(3):
        for pa, pb in zip(a, b):
            pa.grad = torch.randn(pa.shape, generator=gen, dtype=pa.dtype)
            pb.grad = pa.grad.clone()
        opt_a.first_step()
        opt_b.first_step()
        assert all(torch.equal(pa, pb) for pa, pb in zip(a, b))
        opt_a.second_step()
        opt_b.second_step()
        assert all(torch.equal(pa, pb) for pa, pb in zip(a, b))


def test_missing_closure_raises():
    model = tanh_net()
    with pytest.raises(ValueError, match="closure"):
        SAM(model.parameters(), torch.optim.SGD, lr=0.1).step()


def test_second_step_without_first_step_raises():
    model = tanh_net()
    with pytest.raises(RuntimeError, match="first_step"):
        SAM(model.parameters(), torch.optim.SGD, lr=0.1).second_step()


def test_instance_must_hold_the_same_params_and_takes_no_kwargs():
    model, other = tanh_net(), tanh_net(seed=1)
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="params"):
        SAM(other.parameters(), base)
    with pytest.raises(ValueError, match="lr"):
        SAM(model.parameters(), base, lr=0.2)


@pytest.mark.parametrize("base_optimizer", ["SGD", torch.nn.Linear, lambda ps: None])
def test_non_optimizer_base_raises(base_optimizer):
    with pytest.raises(ValueError, match="base_optimizer"):
        SAM(tanh_net().parameters(), base_optimizer)


@pytest.mark.parametrize("rho", [-0.05, float("nan")])
def test_invalid_rho_raises(rho):
    with pytest.raises(ValueError, match="rho"):
        SAM(tanh_net().parameters(), torch.optim.SGD, rho=rho, lr=0.1)
