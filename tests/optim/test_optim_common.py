"""Checks every optimizer of polyak.optim must pass: checkpoint round trip, param groups,
parameters without gradient, the closure's loss."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from optim_helpers import batch, make_closure, tanh_net, train
from torch import nn

from polyak.optim import SAM, AdaBound, Lookahead, Padam

FACTORIES = {
    "Padam": lambda ps: Padam(ps, lr=1e-2, weight_decay=1e-2),
    "Padam-GadamX": lambda ps: Padam(ps, lr=0.1, partial=1 / 8, amsgrad=True,
                                     weight_decay=3e-4),
    "Padam-coupled": lambda ps: Padam(ps, lr=1e-2, weight_decay=1e-2,
                                      decoupled_weight_decay=False),
    "Padam-single": lambda ps: Padam(ps, lr=1e-2, partial=0.3, amsgrad=True, foreach=False),
    "AdaBound": lambda ps: AdaBound(ps, lr=1e-2, gamma=0.1, weight_decay=1e-3),
    "AMSBound-single": lambda ps: AdaBound(ps, lr=1e-2, gamma=0.1, amsbound=True, foreach=False),
    "Lookahead(Padam)": lambda ps: Lookahead(Padam(ps, lr=1e-2), k=3, alpha=0.5),
    "Lookahead(SGD)-single": lambda ps: Lookahead(torch.optim.SGD(ps, lr=0.05, momentum=0.9),
                                                  k=4, alpha=0.8, foreach=False),
    "SAM(SGD)": lambda ps: SAM(ps, torch.optim.SGD, rho=0.05, lr=0.05, momentum=0.9),
    "ASAM(SGD)": lambda ps: SAM(ps, torch.optim.SGD, rho=0.5, adaptive=True, lr=0.05,
                                momentum=0.9),
    "SAM(Padam)-single": lambda ps: SAM(ps, Padam, rho=0.05, lr=1e-2, foreach=False),
}
NAMES = list(FACTORIES)


def groups_of(model: nn.Module, lr0: float | None = None) -> list[dict]:
    """Two param groups: the first layer (lr ``lr0`` if given) and the rest (default lr)."""
    layers = list(model.children())
    first: dict = {"params": list(layers[0].parameters())}
    if lr0 is not None:
        first["lr"] = lr0
    return [first, {"params": [p for layer in layers[1:] for p in layer.parameters()]}]


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_is_bitwise(name):
    """10 steps, checkpoint, fresh model and optimizer, 10 steps == 20 uninterrupted steps."""
    make = FACTORIES[name]
    model, x, y = tanh_net(), *batch()
    straight = copy.deepcopy(model)
    opt = make(groups_of(model, lr0=5e-3))
    train(model, opt, 10, x, y)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    resumed = copy.deepcopy(model)
    opt2 = make(groups_of(resumed, lr0=1.0))  # the checkpoint's lr must win
    opt2.load_state_dict(torch.load(buf))
    train(resumed, opt2, 10, x, y)
    train(straight, make(groups_of(straight, lr0=5e-3)), 20, x, y)
    for p, q in zip(resumed.parameters(), straight.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("name", NAMES)
def test_param_groups_lrs_are_honoured(name):
    """A group at lr 0 stays exactly where it is; the other group moves."""
    model, x, y = tanh_net(), *batch()
    before = copy.deepcopy(model)
    opt = FACTORIES[name](groups_of(model, lr0=0.0))
    train(model, opt, 6, x, y)
    frozen, moving = list(model.children())[0], list(model.children())[2]
    for p, q in zip(frozen.parameters(), list(before.children())[0].parameters()):
        assert torch.equal(p, q)
    for p, q in zip(moving.parameters(), list(before.children())[2].parameters()):
        assert not torch.equal(p, q)


@pytest.mark.parametrize("name", NAMES)
def test_parameter_without_grad_is_skipped(name):
    model, x, y = tanh_net(), *batch()
    unused = nn.Parameter(torch.full((4,), 0.5))
    opt = FACTORIES[name]([*model.parameters(), unused])
    train(model, opt, 6, x, y)
    assert unused.grad is None
    assert torch.equal(unused, torch.full((4,), 0.5))
    assert not opt.state.get(unused)


@pytest.mark.parametrize("name", NAMES)
def test_step_returns_the_loss_before_the_update(name):
    model, x, y = tanh_net(), *batch()
    expected = nn.functional.mse_loss(model(x), y).detach()
    opt = FACTORIES[name](model.parameters())
    loss = opt.step(make_closure(model, x, y))
    assert torch.equal(loss.detach(), expected)
    assert not torch.equal(nn.functional.mse_loss(model(x), y).detach(), expected)
