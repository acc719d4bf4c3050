"""Method's events against issue 14's defects: epoch order, groups added later, trigger modes,
and an end_epoch that raises changing nothing."""

import pytest
import torch
from torch import nn

import polyak
from polyak.averaging import Uniform
from polyak.method import Method
from polyak.optim import TSOALRA
from polyak.triggers import Plateau


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def step(method, model, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(5, 4, generator=g), torch.randint(0, 3, (5,), generator=g)
    method.step(lambda: nn.functional.cross_entropy(model(x), y))


def test_defect3_method_refuses_one_based_repeated_and_backward_epochs():
    """Reproduces issue 14 defect 3: 1-based epochs shifted the GadamX schedule (lr 0.05 from the
    start); end_epoch(3) twice and end_epoch(99) then end_epoch(1) passed."""
    model = tiny_model()
    method = polyak.recipe("gadamx", model, epochs=10, steps_per_epoch=1)
    with pytest.raises(ValueError, match="Invalid epoch: 1 \\(expected 0: .*0-based"):
        method.end_epoch(1)
    assert method.lr == pytest.approx(0.1) and method.epochs_done == 0
    for epoch in range(4):
        method.end_epoch(epoch)
    for bad in (3, 99, 1):
        with pytest.raises(ValueError, match=f"Invalid epoch: {bad} \\(expected 4.*load_state"):
            method.end_epoch(bad)
    assert method.averaging.n_averaged == 0 and method.epochs_done == 4


def test_defect3_triggers_and_tso_alra_refuse_epochs_out_of_order():
    trigger = Plateau(3)
    trigger.update(1.0, 0)
    with pytest.raises(ValueError, match="Invalid epoch: 0 \\(the last update was for epoch 0"):
        trigger.update(0.5, 0)
    model = tiny_model()
    opt = TSOALRA(model, lr=0.01, switch_epoch=3)
    opt.end_epoch(0)
    with pytest.raises(ValueError, match="Invalid epoch: 0 \\(expected 1"):
        opt.end_epoch(0)
    with pytest.raises(ValueError, match="Invalid epoch: 5 \\(expected 1"):
        opt.end_epoch(5)
    assert not opt.switched


def test_averaging_before_the_trigger_fires_is_kept_in_step():
    """With an averaging trigger the average hears about every epoch (skip_to) and starts
    collecting at the epoch the trigger fires."""
    model = tiny_model()
    method = Method(model, torch.optim.SGD(model.parameters(), lr=0.1),
                    averaging=Uniform(model), averaging_trigger=Plateau(1, mode="max"))
    for epoch, acc in enumerate([0.5, 0.4, 0.6]):
        step(method, model, epoch)
        method.end_epoch(epoch, val_acc=acc)
    assert method.averaging.n_averaged == 2 and method.averaging.epoch == 3


def test_defect4_group_added_after_the_method_is_scheduled():
    """Reproduces issue 14 defect 4: with PWA, group 0 went 0.1 -> 0.01 -> 0.001 and a group
    added later stayed at 0.1."""
    model = tiny_model()
    head = nn.Linear(3, 2)
    method = polyak.recipe("pwa", model, epochs=4, steps_per_epoch=1)
    method.optimizer.add_param_group({"params": head.parameters(), "lr": 0.2})
    seen = []
    for epoch in range(4):
        step(method, model, epoch)
        seen += [g["lr"] for g in method.optimizer.param_groups]
        method.end_epoch(epoch)
    assert seen == pytest.approx([0.1, 0.2, 0.1, 0.2, 0.01, 0.02, 0.001, 0.002])


def test_defect8_trigger_mode_that_does_not_match_its_metric_is_refused():
    """Reproduces issue 14 defect 8: Plateau(mode="max") given to TSOALRA, which feeds it the
    validation loss, was accepted."""
    model = tiny_model()
    with pytest.raises(ValueError, match="Invalid trigger mode: 'max'.*validation loss"):
        TSOALRA(model, lr=0.01, trigger=Plateau(3, mode="max"))
    TSOALRA(model, lr=0.01, trigger=Plateau(3, mode="min"))

    class Odd:
        mode = "mean"

        def update(self, value, epoch):
            return False

    with pytest.raises(ValueError, match="Invalid stop_trigger mode: 'mean'"):
        Method(model, torch.optim.SGD(model.parameters(), lr=0.1), stop_trigger=Odd())


def test_end_epoch_that_raises_changes_nothing():
    model = tiny_model()
    method = Method(model, torch.optim.SGD(model.parameters(), lr=0.1),
                    averaging=Uniform(model), averaging_trigger=Plateau(0, mode="min"),
                    stop_trigger=Plateau(2, mode="max"), schedule=lambda e: 0.5 ** e)
    step(method, model)
    trig = dict(method.averaging_trigger.state_dict())
    with pytest.raises(ValueError, match="Invalid val_loss: nan"):
        method.end_epoch(0, val_loss=float("nan"))
    assert method.averaging_trigger.state_dict() == trig
    assert not method.averaging_started and method.averaging.n_averaged == 0
    assert method.epochs_done == 0 and method.lr == 0.1
    # the stop trigger watches from the epoch after averaging started: not read at epoch 0
    method.end_epoch(0, val_loss=1.0)
    assert method.averaging_started and method.averaging.n_averaged == 1 and method.lr == 0.05
    step(method, model)
    before = method.state_dict()
    with pytest.raises(ValueError, match="stop_trigger watches val_acc"):
        method.end_epoch(1, val_loss=1.0)
    with pytest.raises(ValueError, match="Invalid val_acc: nan"):
        method.end_epoch(1, val_loss=1.0, val_acc=float("nan"))
    assert method.averaging.n_averaged == 1 and method.epochs_done == before["epochs_done"]
    assert method.stop_trigger.state_dict() == before["stop_trigger"] and method.lr == 0.05
    method.end_epoch(1, val_loss=1.0, val_acc=0.5)
    assert method.averaging.n_averaged == 2 and method.stop_trigger.epochs_seen == 1


def test_stop_trigger_watches_only_once_averaging_runs():
    """GadamAuto (Gadam App. A.2): averaging starts, then training stops, by the same
    patience; the stop trigger never sees the epochs before averaging starts."""
    model = tiny_model()
    method = Method(model, torch.optim.SGD(model.parameters(), lr=0.1),
                    averaging=Uniform(model), averaging_trigger=Plateau(1, mode="max"),
                    stop_trigger=Plateau(1, mode="max"))
    accs = [0.5, 0.4, 0.45, 0.6, 0.55]   # no new best at epoch 1: averaging starts there
    for epoch, acc in enumerate(accs):
        step(method, model)
        method.end_epoch(epoch, val_acc=acc)
        if method.should_stop:
            break
    # started at epoch 1; the stop trigger's first value is epoch 2's 0.45, a new best at
    # epoch 3 (0.6), none at epoch 4: it fires there
    assert method.averaging_trigger.fired_epoch == 1 and method.stop_trigger.fired_epoch == 4
    assert method.stop_trigger.epochs_seen == 3 and method.averaging.n_averaged == 4


def test_tso_alra_trigger_without_val_loss_is_refused_before_averaging_collects():
    model = tiny_model()
    opt = TSOALRA(model, lr=0.01, trigger=Plateau(3))
    method = Method(model, opt, averaging=Uniform(model))
    step(method, model)
    with pytest.raises(ValueError, match="watches val_loss"):
        method.end_epoch(0)
    assert method.averaging.n_averaged == 0 and method.epochs_done == 0


def test_load_state_dict_of_another_shape_changes_nothing():
    model = tiny_model()
    with_avg = Method(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                      averaging=Uniform(model))
    step(with_avg, model)
    other_model = tiny_model(1)
    plain = Method(other_model, torch.optim.SGD(other_model.parameters(), lr=0.1, momentum=0.9))
    before = plain.optimizer.state_dict()
    with pytest.raises(ValueError, match="averaging does not match"):
        plain.load_state_dict(with_avg.state_dict())
    assert plain.optimizer.state_dict() == before   # the optimizer was not loaded first
