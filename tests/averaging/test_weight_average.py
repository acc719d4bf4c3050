"""What all averages share: applied()/copy_to, checkpoints, model checks and input validation."""

from __future__ import annotations

import copy
import io

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
    random_iterate,
    regression_data,
    train_epoch,
)
from torch import nn
from torch.optim.swa_utils import update_bn

from polyak.averaging import EMA, PhaseWise, Uniform


def _bn_model_with_average():
    model = bn_net()
    model.train()
    avg = Uniform(model)
    iterates = []
    for epoch in range(3):
        iterates.append(random_iterate(model, seed=20 + epoch))
        with torch.no_grad():
            model(image_batches(n=1, seed=epoch)[0])        # the live BN stats move on
        avg.end_epoch(epoch)
    means = [torch.stack([it[i] for it in iterates]).mean(0) for i in range(len(iterates[0]))]
    return model, avg, means


def test_applied_swaps_in_the_average_and_restores_bit_for_bit():
    model, avg, means = _bn_model_with_average()
    live, live_bn = params_of(model), bn_buffers(model)
    with avg.applied(model) as m:
        assert m is model
        assert_lists_close(params_of(model), means)
        assert_lists_equal(bn_buffers(model), live_bn)      # no loader: BN untouched
    assert_lists_equal(params_of(model), live)
    assert_lists_equal(bn_buffers(model), live_bn)


def test_applied_with_loader_gives_update_bn_statistics_and_restores_after_an_error():
    model, avg, means = _bn_model_with_average()
    live, live_bn = params_of(model), bn_buffers(model)
    loader = image_batches()
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for p, m in zip(ref.parameters(), avg.averaged()):
            p.copy_(m)
    update_bn(loader, ref)
    with pytest.raises(RuntimeError, match="inside"):
        with avg.applied(model, bn_loader=loader):
            assert_lists_equal(params_of(model), params_of(ref))
            assert_lists_equal(bn_buffers(model), bn_buffers(ref))
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(3.0)                              # the body may even change them
            raise RuntimeError("inside")
    assert_lists_equal(params_of(model), live)
    assert_lists_equal(bn_buffers(model), live_bn)


def test_applied_without_an_average_uses_the_live_weights():
    model = bn_net()
    avg = Uniform(model, start_epoch=5)
    avg.end_epoch(0)
    live = params_of(model)
    loader = image_batches()
    ref = copy.deepcopy(model)
    update_bn(loader, ref)
    with avg.applied(model, bn_loader=loader):
        assert_lists_equal(params_of(model), live)
        assert_lists_equal(bn_buffers(model), bn_buffers(ref))


def test_copy_to_writes_the_average_for_good():
    model, avg, means = _bn_model_with_average()
    other = bn_net(seed=9)
    avg.copy_to(other)
    assert_lists_close(params_of(other), means)
    avg.copy_to()
    assert_lists_close(params_of(model), means)


def test_applied_restores_the_live_ema_weights():
    model = mlp()
    ema = EMA(model, decay=0.5, bias_correction=True)
    random_iterate(model, seed=1)
    ema.step()
    w = random_iterate(model, seed=2)
    ema.step()
    with ema.applied(model):
        assert not all(torch.equal(a, b) for a, b in zip(params_of(model), w))
    assert_lists_equal(params_of(model), w)


# ---------------------------------------------------------------- checkpoints
def _save_load(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf)


MAKERS = {
    "uniform": lambda m, o: Uniform(m, start_epoch=1),
    "uniform_steps": lambda m, o: Uniform(m, every=3),
    "ema": lambda m, o: EMA(m, decay=0.7),
    "ema_bias": lambda m, o: EMA(m, decay=0.7, every=2, bias_correction=True),
    "phasewise": lambda m, o: PhaseWise(m, [3, 3], gamma0=0.7, ref_epochs=3, momentum="reset",
                                        optimizer=o),
}


@pytest.mark.parametrize("kind", list(MAKERS))
def test_state_dict_round_trip_mid_average_continues_bit_for_bit(kind):
    data = regression_data()
    epochs, cut = 6, 4                       # PhaseWise: cut in the middle of phase 2

    def new_run():
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        return model, opt, MAKERS[kind](model, opt)

    model, opt, avg = new_run()
    for epoch in range(epochs):
        if epoch == cut:
            saved = _save_load({"model": model.state_dict(), "opt": opt.state_dict(),
                                "avg": avg.state_dict()})
            assert avg.has_average
        train_epoch(model, opt, data, avg)
        avg.end_epoch(epoch)
    model2, opt2, avg2 = new_run()
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    avg2.load_state_dict(saved["avg"])
    for epoch in range(cut, epochs):
        train_epoch(model2, opt2, data, avg2)
        avg2.end_epoch(epoch)
    assert_lists_equal(avg2.averaged(), avg.averaged())
    assert_lists_equal(params_of(model2), params_of(model))
    assert avg2.state_dict()["n_averaged"] == avg.state_dict()["n_averaged"]
    assert (avg2.collected, avg2.steps, avg2.epoch) == (avg.collected, avg.steps, avg.epoch)


def test_state_dict_from_a_different_model_or_setting_raises():
    avg = Uniform(mlp())
    avg.end_epoch(0)
    state = avg.state_dict()
    wider = nn.Sequential(nn.Linear(4, 9), nn.Tanh(), nn.Linear(9, 3))
    with pytest.raises(ValueError, match="different model"):
        Uniform(wider).load_state_dict(state)
    with pytest.raises(ValueError, match="different model"):
        Uniform(nn.Linear(4, 8)).load_state_dict(state)
    with pytest.raises(ValueError, match="start_epoch"):
        Uniform(mlp(), start_epoch=3).load_state_dict(state)
    with pytest.raises(ValueError, match="Uniform"):
        EMA(mlp(), decay=0.9).load_state_dict(state)


# ---------------------------------------------------------------- model checks
def _changed(model):
    model[2] = nn.Linear(8, 5)
    return model


@pytest.mark.parametrize("make", [lambda m: Uniform(m), lambda m: EMA(m, 0.9, every="epoch"),
                                  lambda m: PhaseWise(m, [2])])
def test_a_model_whose_parameters_changed_raises(make):
    model = mlp()
    avg = make(model)
    avg.end_epoch(0)
    _changed(model)
    with pytest.raises(ValueError, match="parameters changed"):
        avg.end_epoch(1)
    with pytest.raises(ValueError, match="parameters changed"):
        with avg.applied(model):
            pass
    with pytest.raises(ValueError, match="parameters changed"):
        avg.copy_to(model)
    with pytest.raises(ValueError, match="parameters changed"):
        avg.applied(nn.Linear(4, 8)).__enter__()


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize("kwargs, name", [
    ({"start_epoch": -1}, "start_epoch"), ({"start_epoch": 1.5}, "start_epoch"),
    ({"every": 0}, "every"), ({"every": -2}, "every"), ({"every": "batch"}, "every"),
    ({"every": 2.0}, "every"), ({"every": True}, "every"), ({"foreach": "yes"}, "foreach"),
])
def test_uniform_bad_input(kwargs, name):
    with pytest.raises(ValueError, match=f"Invalid {name}"):
        Uniform(mlp(), **kwargs)


@pytest.mark.parametrize("kwargs, name", [
    ({"decay": 1.0}, "decay"), ({"decay": -0.1}, "decay"), ({"decay": float("nan")}, "decay"),
    ({"decay": 0.9, "every": 0}, "every"), ({"decay": 0.9, "every": "often"}, "every"),
])
def test_ema_bad_input(kwargs, name):
    with pytest.raises(ValueError, match=f"Invalid {name}"):
        EMA(mlp(), **kwargs)


@pytest.mark.parametrize("kwargs, name", [
    ({"phases": []}, "phases"), ({"phases": [80, 0]}, "phases"), ({"phases": [80, -40]}, "phases"),
    ({"phases": [80, 40.0]}, "phases"), ({"phases": 80}, "phases"),
    ({"phases": [4], "gamma0": 0.0}, "gamma0"), ({"phases": [4], "gamma0": 1.0}, "gamma0"),
    ({"phases": [4], "gamma0": 1.5}, "gamma0"), ({"phases": [4], "ref_epochs": 0}, "ref_epochs"),
    ({"phases": [4], "momentum": "zero"}, "momentum"),
    ({"phases": [4], "momentum": "reset"}, "optimizer"),
])
def test_phasewise_bad_input(kwargs, name):
    with pytest.raises(ValueError, match=f"Invalid {name}"):
        PhaseWise(mlp(), **kwargs)


def test_bad_epochs_and_models():
    avg = Uniform(mlp())
    for bad in (-1, 1.0, True):
        with pytest.raises(ValueError, match="Invalid epoch"):
            avg.end_epoch(bad)
    with pytest.raises(ValueError, match="no parameters"):
        Uniform(nn.ReLU())
