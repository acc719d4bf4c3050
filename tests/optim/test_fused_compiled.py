"""Padam (any partial) and AdaBound with ``fused=True``: the torch.compile'd kernels against the
foreach path, checkpoints across the paths, no recompile when the lr changes, the fallback
without a compiler, and a carried EMA/Uniform against the separate update.

Tolerances: the compiled kernel evaluates the same operations in one loop per tensor, but its C++
compiler may fuse multiply-adds and reorder (so does ATen, differently): after 30 float32 steps
the parameters agree to rtol 1e-5 / atol 1e-6 (a few ulps per step), float64 to 1e-10 / 1e-12.
The carried average is compared bit for bit: its lerp is written as ATen's (see
``polyak.optim._compiled._lerp_``). Compiling takes seconds per configuration, so these tests
(but the fallback one) are marked slow and share a few small configurations.
"""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
from optim_helpers import batch, make_closure, tanh_net, train

from polyak.averaging import EMA, Uniform
from polyak.optim import AdaBound, Padam, _compiled

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float64: dict(rtol=1e-10, atol=1e-12)}


def two_groups(cls, model, lr0, lr, **kwargs):
    layers = list(model.children())
    groups = [{"params": list(layers[0].parameters()), "lr": lr0},
              {"params": [p for layer in layers[1:] for p in layer.parameters()]}]
    return cls(groups, lr=lr, **kwargs)


PADAM_CASES = [  # (partial, amsgrad, decoupled, dtype): the sqrt chain, pow, coupled L2, float64
    (1 / 8, True, True, torch.float32),
    (0.3, False, False, torch.float32),
    (0.25, True, False, torch.float64),
]


@pytest.mark.slow
@pytest.mark.parametrize("partial, amsgrad, decoupled, dtype", PADAM_CASES)
def test_compiled_padam_matches_foreach(partial, amsgrad, decoupled, dtype):
    """30 steps, two groups with their own lr, weight decay, eps that matters; then the lr is
    changed (a schedule) for 10 more steps without a recompile."""
    model, x, y = tanh_net(dtype=dtype), *batch(dtype=dtype)
    ref = copy.deepcopy(model)
    kw = dict(partial=partial, amsgrad=amsgrad, decoupled_weight_decay=decoupled, eps=1e-3,
              weight_decay=0.05)
    opt = two_groups(Padam, model, 0.05, 0.02, fused=True, **kw)
    ref_opt = two_groups(Padam, ref, 0.05, 0.02, foreach=True, **kw)
    train(model, opt, 30, x, y)
    train(ref, ref_opt, 30, x, y)
    compiled = len(_compiled.COMPILE_SECONDS)
    for o in (opt, ref_opt):
        for group in o.param_groups:
            group["lr"] *= 0.5
    train(model, opt, 10, x, y)
    train(ref, ref_opt, 10, x, y)
    assert len(_compiled.COMPILE_SECONDS) == compiled  # lr changes do not recompile
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, **TOL[dtype])
        for key, value in ref_opt.state[q].items():
            torch.testing.assert_close(opt.state[p][key], value, **TOL[dtype])


@pytest.mark.slow
@pytest.mark.parametrize("amsbound", [False, True])
def test_compiled_adabound_matches_foreach(amsbound):
    """40 steps with bounds that clamp (lr large against final_lr), two groups, coupled decay."""
    model, x, y = tanh_net(), *batch()
    ref = copy.deepcopy(model)
    kw = dict(final_lr=0.01, gamma=0.01, weight_decay=5e-3, amsbound=amsbound)
    opt = two_groups(AdaBound, model, 0.05, 0.02, fused=True, **kw)
    ref_opt = two_groups(AdaBound, ref, 0.05, 0.02, foreach=True, **kw)
    train(model, opt, 40, x, y)
    train(ref, ref_opt, 40, x, y)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, **TOL[torch.float32])


def _checkpoint(opt):
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    return torch.load(buf)


@pytest.mark.slow
@pytest.mark.parametrize("cls, kw", [
    (Padam, dict(partial=1 / 8, amsgrad=True, eps=1e-3, weight_decay=0.05)),
    (AdaBound, dict(final_lr=0.01, gamma=0.01, weight_decay=5e-3, amsbound=True)),
])
def test_state_dict_moves_between_compiled_and_foreach(cls, kw):
    """10 compiled steps, checkpoint, 10 foreach steps (and the reverse) == 20 foreach steps;
    each loading instance keeps its own kernel choice."""
    model, x, y = tanh_net(), *batch()
    ref = copy.deepcopy(model)
    ref_opt = two_groups(cls, ref, 0.05, 0.02, foreach=True, **kw)
    train(ref, ref_opt, 20, x, y)
    for first, second in ((dict(fused=True), dict(foreach=True)),
                          (dict(foreach=True), dict(fused=True))):
        a = copy.deepcopy(model)
        opt = two_groups(cls, a, 0.05, 0.02, **first, **kw)
        train(a, opt, 10, x, y)
        opt2 = two_groups(cls, a, 1.0, 1.0, **second, **kw)
        opt2.load_state_dict(_checkpoint(opt))
        assert [g["fused"] for g in opt2.param_groups] == [second.get("fused")] * 2
        assert [g["lr"] for g in opt2.param_groups] == [0.05, 0.02]
        train(a, opt2, 10, x, y)
        for p, q in zip(a.parameters(), ref.parameters()):
            torch.testing.assert_close(p, q, **TOL[torch.float32])


def test_without_a_compiler_warns_once_and_runs_the_foreach_path(monkeypatch):
    """A compiler that fails: one RuntimeWarning, then bit-equal to the foreach path (the same
    kernels), for Padam and AdaBound, and no further warning."""
    def broken(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no C++ compiler")
        return run
    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(_compiled, "_UNAVAILABLE", [])
    monkeypatch.setattr(_compiled, "_CACHE", {})
    for cls, kw in ((Padam, dict(partial=1 / 8, amsgrad=True, weight_decay=0.05)),
                    (AdaBound, dict(weight_decay=5e-3))):
        model, x, y = tanh_net(), *batch()
        ref = copy.deepcopy(model)
        opt = cls(model.parameters(), lr=0.01, fused=True, **kw)
        ref_opt = cls(ref.parameters(), lr=0.01, foreach=True, **kw)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train(model, opt, 5, x, y)
        train(ref, ref_opt, 5, x, y)
        messages = [str(w.message) for w in caught if w.category is RuntimeWarning]
        assert len(messages) == (1 if cls is Padam else 0)
        assert all(m.startswith("polyak: torch.compile failed (RuntimeError: no C++ compiler)")
                   for m in messages)
        for p, q in zip(model.parameters(), ref.parameters()):
            assert torch.equal(p, q)
        assert opt.state[next(iter(model.parameters()))]["step"].item() == 5.0


def _carried_run(cls, kw, make_avg, steps=12):
    """Train with the average carried by the fused step; alongside, apply the separate update
    (the same average type, its own step()) to a copy of the iterates after every step."""
    model, x, y = tanh_net(), *batch()
    opt = cls(model.parameters(), lr=0.02, fused=True, **kw)
    avg = make_avg(model)
    opt.carry_average(avg)
    shadow = copy.deepcopy(model)
    separate = make_avg(shadow)
    closure = make_closure(model, x, y)
    carried = 0
    for _ in range(steps):
        carried += avg.next_step_weight() is not None
        opt.step(closure)
        avg.step()
        with torch.no_grad():
            for s, p in zip(shadow.parameters(), model.parameters()):
                s.copy_(p)
        separate.step()
    return avg, separate, carried


@pytest.mark.slow
@pytest.mark.parametrize("make_avg, expect_carried", [
    (lambda m: EMA(m, decay=0.9), 12),
    (lambda m: EMA(m, decay=0.6, bias_correction=True), 12),
    (lambda m: Uniform(m, every=3), 4),
])
@pytest.mark.parametrize("cls, kw", [
    (Padam, dict(partial=1 / 8, amsgrad=True, eps=1e-3, weight_decay=0.05)),
    (AdaBound, dict(final_lr=0.01, gamma=0.01, weight_decay=5e-3, amsbound=True)),
])
def test_carried_average_is_exactly_the_separate_update(cls, kw, make_avg, expect_carried):
    """Bit for bit: the kernel's lerp (EMA's first copy as lerp weight 1, the decay, Uniform's
    1/(n+1) every 3rd step) equals the average's own update of the same iterates."""
    avg, separate, carried = _carried_run(cls, kw, make_avg)
    assert carried == expect_carried
    assert (avg.n_averaged, avg.collected, avg.steps) == \
        (separate.n_averaged, separate.collected, separate.steps)
    for a, b in zip(avg.average, separate.average):
        assert torch.equal(a, b)
    assert all(torch.equal(a, b) for a, b in zip(avg.averaged(), separate.averaged()))
    state = avg.state_dict()
    assert state["type"] == separate.state_dict()["type"]


def test_not_carried_on_the_foreach_path():
    """Without fused=True nothing is carried: the average collects by itself in step()."""
    model, x, y = tanh_net(), *batch()
    opt = Padam(model.parameters(), lr=0.01, partial=1 / 8)
    avg = EMA(model, decay=0.9)
    opt.carry_average(avg)
    closure = make_closure(model, x, y)
    opt.step(closure)
    assert avg.next_step_weight() == 1.0  # not marked: step() will collect by itself
    avg.step()
    assert avg.n_averaged == 1
    with pytest.raises(ValueError, match="Invalid average"):
        opt.carry_average(object())


def test_method_lets_the_optimizer_carry_its_average_once_it_collects():
    """Method registers the pair (fusable when the optimizer is fused); with an averaging
    trigger only from the epoch the trigger fires, so no collection is carried before."""
    from polyak.method import Method
    from polyak.triggers import Plateau

    model = tanh_net()
    opt = Padam(model.parameters(), lr=0.01, partial=1 / 8, fused=True)
    ema = EMA(model, decay=0.9)
    Method(model, opt, averaging=ema)
    assert opt._carry_target is ema
    opt2 = Padam(model.parameters(), lr=0.01, partial=1 / 8, fused=True)
    method = Method(model, opt2, averaging=EMA(model, decay=0.9),
                    averaging_trigger=Plateau(patience=1, mode="min"))
    assert opt2._carry_target is None
    method.end_epoch(0, val_loss=1.0)
    assert not method.averaging_started and opt2._carry_target is None
    method.end_epoch(1, val_loss=1.0)
    assert method.averaging_started and opt2._carry_target is method.averaging
