"""Padam(fused=True) against torch's fused and unfused Adam(W), a plain-loop re-computation of
docs/methods.md section 1 and the single-tensor path; its checkpoints against the foreach path's.

Tolerances: the fused kernel orders the arithmetic differently (lerp by fma, sqrt(v)/sqrt(bc2)
+ eps/sqrt(bc2)), so it is not bit-equal to the other paths: after 50 steps float64 agrees to
rtol 1e-10 / atol 1e-12, float32 to rtol 1e-5 / atol 1e-6 (a few float32 ulps per step). Against
torch's own fused kernel, called with the same arguments, it is bit-equal.
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from optim_helpers import batch, make_closure, tanh_net, train

from polyak.optim import Padam

B1, B2 = 0.9, 0.999
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float64: dict(rtol=1e-10, atol=1e-12)}


def two_groups(model, lr0=0.05, lr=0.02, **kwargs):
    """First layer at lr ``lr0``, the rest at the default ``lr``."""
    layers = list(model.children())
    groups = [{"params": list(layers[0].parameters()), "lr": lr0},
              {"params": [p for layer in layers[1:] for p in layer.parameters()]}]
    return Padam(groups, lr=lr, **kwargs)


def plain_loop_adam(model, x, y, steps, lrs, eps, wd, amsgrad, decoupled):
    """docs/methods.md section 1 with partial=0.5, written out one parameter at a time."""
    params = list(model.parameters())
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    vmax = [torch.zeros_like(p) for p in params]
    closure = make_closure(model, x, y)
    for t in range(1, steps + 1):
        closure()
        with torch.no_grad():
            for i, p in enumerate(params):
                g = p.grad.clone()
                if decoupled:
                    p.mul_(1 - lrs[i] * wd)
                else:
                    g = g + wd * p
                m[i] = B1 * m[i] + (1 - B1) * g
                v[i] = B2 * v[i] + (1 - B2) * g * g
                vmax[i] = torch.maximum(vmax[i], v[i])
                denom = torch.sqrt(vmax[i] if amsgrad else v[i]) + eps
                p.sub_(lrs[i] * math.sqrt(1 - B2**t) / (1 - B1**t) * m[i] / denom)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("decoupled", [True, False])
def test_fused_matches_plain_loop_and_single_tensor_path(dtype, amsgrad, decoupled):
    """50 steps, two groups with different lrs, weight decay, eps large enough to matter."""
    model, x, y = tanh_net(dtype=dtype), *batch(dtype=dtype)
    single, loop = copy.deepcopy(model), copy.deepcopy(model)
    kwargs = dict(eps=1e-3, weight_decay=0.05, amsgrad=amsgrad, decoupled_weight_decay=decoupled)
    train(model, two_groups(model, fused=True, **kwargs), 50, x, y)
    train(single, two_groups(single, foreach=False, **kwargs), 50, x, y)
    plain_loop_adam(loop, x, y, 50, [0.05, 0.05] + [0.02] * 4, 1e-3, 0.05, amsgrad, decoupled)
    for p, q, r in zip(model.parameters(), single.parameters(), loop.parameters()):
        torch.testing.assert_close(p, q, **TOL[dtype])
        torch.testing.assert_close(p, r, **TOL[dtype])


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
@pytest.mark.parametrize("decoupled", [True, False])
def test_eps0_is_bit_equal_to_torch_fused(amsgrad, weight_decay, decoupled):
    """eps=0: the rules coincide, and both call the same kernel with the same arguments."""
    model, x, y = tanh_net(), *batch()
    ref = copy.deepcopy(model)
    opt = Padam(model.parameters(), lr=1e-2, eps=0.0, weight_decay=weight_decay,
                amsgrad=amsgrad, decoupled_weight_decay=decoupled, fused=True)
    torch_cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    ref_opt = torch_cls(ref.parameters(), lr=1e-2, eps=0.0, weight_decay=weight_decay,
                        amsgrad=amsgrad, fused=True)
    train(model, opt, 50, x, y)
    train(ref, ref_opt, 50, x, y)
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q)
        assert opt.state[p].keys() == ref_opt.state[q].keys()
        for key, value in opt.state[p].items():
            assert torch.equal(value, ref_opt.state[q][key]), key


@pytest.mark.parametrize("torch_fused", [True, False])
def test_equals_torch_adamw_with_eps_over_sqrt_bc2(torch_fused):
    """The derivation: torch AdamW with eps_t = eps/sqrt(1 - b2^t) set before each step is
    Padam(partial=0.5); bit-equal through torch's fused kernel, to tolerance unfused."""
    model, x, y = tanh_net(dtype=torch.float64), *batch(dtype=torch.float64)
    ref = copy.deepcopy(model)
    train(model, Padam(model.parameters(), lr=1e-2, eps=1e-3, weight_decay=0.05, amsgrad=True,
                       fused=True), 30, x, y)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.05, amsgrad=True,
                                fused=torch_fused, foreach=False if not torch_fused else None)
    closure = make_closure(ref, x, y)
    for t in range(1, 31):
        ref_opt.param_groups[0]["eps"] = 1e-3 / math.sqrt(1 - B2**t)
        ref_opt.step(closure)
    for p, q in zip(model.parameters(), ref.parameters()):
        if torch_fused:
            assert torch.equal(p, q)
        else:
            torch.testing.assert_close(p, q, **TOL[torch.float64])


def test_different_step_counts_dtypes_and_a_param_without_grad():
    """One group: float32 and float64 tensors, one getting a gradient every other step (its
    step count lags, so its eps differs), one never getting one (no state, unchanged)."""
    gen = torch.Generator().manual_seed(0)
    shapes = [((5, 3), torch.float32), ((7,), torch.float64), ((2, 3), torch.float64),
              ((4,), torch.float32)]
    base = [torch.randn(s, generator=gen, dtype=d) for s, d in shapes]
    a = [t.clone().requires_grad_() for t in base]
    b = [t.clone().requires_grad_() for t in base]
    opt_a = Padam(a, lr=1e-2, eps=1e-3, weight_decay=0.1, amsgrad=True, fused=True)
    opt_b = Padam(b, lr=1e-2, eps=1e-3, weight_decay=0.1, amsgrad=True, foreach=False)
    for k in range(12):
        for i, (pa, pb) in enumerate(zip(a, b)):
            pa.grad = pb.grad = None
            if i == 3 or (i == 2 and k % 2):
                continue
            pa.grad = torch.randn(pa.shape, generator=gen, dtype=pa.dtype)
            pb.grad = pa.grad.clone()
        opt_a.step()
        opt_b.step()
    assert [opt_a.state[p]["step"].item() for p in a[:3]] == [12.0, 12.0, 6.0]
    assert len(opt_a.state[a[3]]) == 0 and torch.equal(a[3], base[3])
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("which", ["grad", "param"])
def test_grad_in_another_memory_layout(which):
    """The fused kernels index param and grad linearly; a column-major grad of a row-major
    param (or the reverse) must still give the element-wise rule."""
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    col_major = base.t().contiguous().t()
    a = (col_major if which == "param" else base.clone()).requires_grad_()
    b = base.clone().requires_grad_()
    opt_a = Padam([a], lr=0.1, eps=1e-3, fused=True)
    opt_b = Padam([b], lr=0.1, eps=1e-3, foreach=False)
    for _ in range(3):
        g = torch.randn(4, 6, generator=gen, dtype=torch.float64)
        a.grad = g.t().contiguous().t() if which == "grad" else g.clone()
        b.grad = g.clone()
        opt_a.step()
        opt_b.step()
    assert a.stride() != a.grad.stride()
    torch.testing.assert_close(a, b, **TOL[torch.float64])


def checkpoint(opt):
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    return torch.load(buf)


@pytest.mark.parametrize("first, second", [(dict(fused=True), dict(foreach=True)),
                                           (dict(foreach=True), dict(fused=True))])
def test_checkpoint_moves_between_fused_and_foreach(first, second):
    """Same state layout; 10 steps, checkpoint, 10 steps with the other path == 20 steps of
    the plain loop; the loading instance keeps its own kernel choice."""
    model, x, y = tanh_net(dtype=torch.float64), *batch(dtype=torch.float64)
    loop = copy.deepcopy(model)
    kwargs = dict(eps=1e-3, weight_decay=0.05, amsgrad=True)
    opt = two_groups(model, **first, **kwargs)
    other = two_groups(copy.deepcopy(model), **second, **kwargs)
    train(model, opt, 10, x, y)
    for p in model.parameters():
        state = opt.state[p]
        assert sorted(state) == ["exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step"]
        assert state["step"].dtype == torch.float32 and state["step"].device.type == "cpu"
        assert all(state[k].shape == p.shape and state[k].dtype == p.dtype
                   for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"))
    resumed = copy.deepcopy(model)
    opt2 = two_groups(resumed, lr0=1.0, lr=1.0, **second, **kwargs)  # the checkpoint's lr wins
    opt2.load_state_dict(checkpoint(opt))
    assert [(g["fused"], g["foreach"], g["lr"]) for g in opt2.param_groups] == \
        [(other.param_groups[0]["fused"], other.param_groups[0]["foreach"], 0.05),
         (other.param_groups[1]["fused"], other.param_groups[1]["foreach"], 0.02)]
    train(resumed, opt2, 10, x, y)
    plain_loop_adam(loop, x, y, 20, [0.05, 0.05] + [0.02] * 4, 1e-3, 0.05, True, True)
    for p, q in zip(resumed.parameters(), loop.parameters()):
        torch.testing.assert_close(p, q, **TOL[torch.float64])


def test_checkpoint_state_in_another_memory_layout():
    """Moments saved from column-major parameters, loaded for row-major ones, stepped fused ==
    the single-tensor path (which is layout-blind)."""
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    saver = base.t().contiguous().t().requires_grad_()
    opt = Padam([saver], lr=0.1, eps=1e-3, amsgrad=True, foreach=False)
    saver.grad = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    opt.step()
    a, b = saver.detach().contiguous().requires_grad_(), saver.detach().clone().requires_grad_()
    opt_a, opt_b = Padam([a], lr=0.1, fused=True), Padam([b], lr=0.1, foreach=False)
    opt_a.load_state_dict(checkpoint(opt))
    opt_b.load_state_dict(checkpoint(opt))
    for _ in range(3):
        a.grad = torch.randn(4, 6, generator=gen, dtype=torch.float64)
        b.grad = a.grad.clone()
        opt_a.step()
        opt_b.step()
    assert a.stride() != saver.stride()
    torch.testing.assert_close(a, b, **TOL[torch.float64])


def test_fused_checkpoint_round_trip_is_bitwise():
    model, x, y = tanh_net(), *batch()
    straight = copy.deepcopy(model)
    opt = Padam(model.parameters(), lr=1e-2, weight_decay=1e-2, fused=True)
    train(model, opt, 10, x, y)
    resumed = copy.deepcopy(model)
    opt2 = Padam(resumed.parameters(), lr=1.0, fused=True)
    opt2.load_state_dict(checkpoint(opt))
    train(resumed, opt2, 10, x, y)
    train(straight, Padam(straight.parameters(), lr=1e-2, weight_decay=1e-2, fused=True), 20,
          x, y)
    for p, q in zip(resumed.parameters(), straight.parameters()):
        assert torch.equal(p, q)


def test_default_is_foreach_not_fused():
    """fused=None keeps the foreach path, whose bits differ from the fused kernel's."""
    model, x, y = tanh_net(), *batch()
    runs = {}
    for name, kwargs in {"default": {}, "foreach": dict(foreach=True),
                         "fused": dict(fused=True)}.items():
        runs[name] = copy.deepcopy(model)
        train(runs[name], Padam(runs[name].parameters(), lr=1e-2, eps=1e-3, **kwargs), 20, x, y)
    flat = {k: torch.cat([p.reshape(-1) for p in m.parameters()]) for k, m in runs.items()}
    assert torch.equal(flat["default"], flat["foreach"])
    assert not torch.equal(flat["default"], flat["fused"])


@pytest.mark.parametrize("kwargs, name", [
    (dict(fused=True, foreach=True), "fused"),
    (dict(fused="yes"), "fused"),
])
def test_invalid_combinations_raise(kwargs, name):
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match=name):
        Padam([p], **kwargs)
    with pytest.raises(ValueError, match=name):
        Padam([{"params": [p], **kwargs}])


def test_invalid_group_raises():
    """(Any partial is allowed with fused=True: other than 0.5 it runs the compiled kernel,
    tests/optim/test_fused_compiled.py.)"""
    p, q = torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)
    opt = Padam([p], fused=True)
    with pytest.raises(ValueError, match="fused"):
        opt.add_param_group({"params": [q], "foreach": True})


@pytest.mark.parametrize("param, match", [
    (torch.zeros(3, dtype=torch.long), "floating-point"),
    (torch.zeros(3, device="meta"), "meta"),
    (torch.zeros(4, 6)[:, ::2], "dense"),
])
def test_unsupported_parameters_raise_at_construction(param, match):
    with pytest.raises(ValueError, match=match):
        Padam([param], fused=True)
    Padam([param], foreach=False)  # the other paths accept them


@pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU-specific: needs CUDA")
def test_cuda_fused_matches_cpu_plain_loop_and_keeps_steps_on_cpu():
    model, x, y = tanh_net(), *batch()
    loop = copy.deepcopy(model).double()
    model, x, y = model.cuda(), x.cuda(), y.cuda()
    opt = two_groups(model, fused=True, eps=1e-3, weight_decay=0.05, amsgrad=True)
    train(model, opt, 10, x, y)
    opt.load_state_dict(checkpoint(opt))
    train(model, opt, 10, x, y)
    assert all(s["step"].is_cpu for s in opt.state.values())
    plain_loop_adam(loop, x.cpu().double(), y.cpu().double(), 20, [0.05, 0.05] + [0.02] * 4,
                    1e-3, 0.05, True, True)
    for p, q in zip(model.parameters(), loop.parameters()):
        torch.testing.assert_close(p.cpu().double(), q, rtol=1e-4, atol=1e-5)
