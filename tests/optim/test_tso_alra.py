"""TSOALRA: the switch rule, the switch, stage 2 against torch.optim.SGD, state round trips."""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from polyak.optim.tso_alra import TSOALRA
from polyak.triggers import Plateau


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 3),
    )


def batches(steps: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 3, (16,), generator=g))
            for _ in range(steps)]


def train_step(model, opt, xb, yb) -> None:
    opt.zero_grad()
    F.cross_entropy(model(xb), yb).backward()
    opt.step()


def no_hooks(model: nn.Module) -> bool:
    return all(not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                    or m._backward_pre_hooks) for m in model.modules())


def test_fixed_switch_epoch_convention():
    model = small_cnn()
    opt = TSOALRA(model, switch_epoch=3)
    for epoch, (xb, yb) in enumerate(batches(5)):
        assert opt.switched == (epoch >= 3)  # epochs 0, 1, 2 are stage 1
        train_step(model, opt, xb, yb)
        assert opt.end_epoch(epoch) == (epoch == 2)
    assert opt.switch_epoch_taken == 3


def test_switch_removes_hooks_and_frees_factor_memory():
    model = small_cnn()
    opt = TSOALRA(model, switch_epoch=1)
    assert not no_hooks(model)
    train_step(model, opt, *batches(1)[0])
    A = weakref.ref(opt.state[model[0].weight]["A"])
    root = weakref.ref(opt.state[model[3].weight]["B_inv_sqrt"])
    opt.switch()
    gc.collect()
    assert no_hooks(model)
    assert A() is None and root() is None
    assert opt.factor_nbytes() == 0 and opt.layers == ()
    assert not any({"A", "B", "A_inv_sqrt", "B_inv_sqrt"} & set(s) for s in opt.state.values())
    assert opt.switched and opt.switch_epoch_taken == 0


@pytest.mark.parametrize("kwargs", [{}, {"momentum": 0.9, "weight_decay": 1e-3}])
def test_after_the_switch_it_is_torch_sgd_bit_for_bit(kwargs):
    model = small_cnn()
    opt = TSOALRA(model, lr=0.05, switch_epoch=1, inv_every=2, **kwargs)
    data = batches(24)
    for xb, yb in data[:4]:
        train_step(model, opt, xb, yb)
    assert opt.end_epoch(0)
    ref = copy.deepcopy(model)
    sgd = torch.optim.SGD(ref.parameters(), lr=0.05, **kwargs)
    for xb, yb in data[4:]:
        train_step(model, opt, xb, yb)
        train_step(ref, sgd, xb, yb)
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q)


def test_plateau_trigger_switches_patience_epochs_after_the_best_loss():
    losses = [5.0, 4.0, 3.0, 3.5, 3.2, 3.1, 3.05, 2.0]
    patience, best = 3, 2  # best loss at epoch 2, no improvement at epochs 3, 4, 5
    model = small_cnn()
    opt = TSOALRA(model, trigger=Plateau(patience=patience))
    fired = [opt.end_epoch(e, val_loss=v) for e, v in enumerate(losses)]
    assert fired.index(True) == best + patience and sum(fired) == 1
    assert opt.switched and opt.switch_epoch_taken == best + patience + 1
    assert no_hooks(model)


def test_lr_scheduler_keeps_driving_the_lr_across_the_switch():
    model = small_cnn()
    ref = copy.deepcopy(model)
    opt = TSOALRA(model, lr=0.1, switch_epoch=2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    data = batches(4)
    for epoch in range(3):
        train_step(model, opt, *data[epoch])
        opt.end_epoch(epoch)
        sched.step()
    assert opt.switched and opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)
    ref.load_state_dict(model.state_dict())
    sgd = torch.optim.SGD(ref.parameters(), lr=0.1 * 0.5**3)
    train_step(model, opt, *data[3])
    train_step(ref, sgd, *data[3])
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("cut", [3, 7])  # 3: save in stage 1; 7: save in stage 2
def test_state_dict_round_trip_continues_bit_for_bit(cut):
    def make(seed):
        m = small_cnn(seed)
        return m, TSOALRA(m, lr=0.05, trigger=Plateau(2), inv_every=3, factor_every=2,
                          momentum=0.9)

    val = [3.0, 2.0, 2.5, 2.4, 2.6, 1.0, 0.5, 0.4, 0.3, 0.2]
    data = batches(10)
    model, opt = make(0)
    for e in range(cut):
        train_step(model, opt, *data[e])
        opt.end_epoch(e, val_loss=val[e])
    assert opt.switched == (cut > 3)
    model2, opt2 = make(1)
    model2.load_state_dict(model.state_dict())
    opt2.load_state_dict(opt.state_dict())
    assert opt2.switched == opt.switched and no_hooks(model2) == opt.switched
    assert opt2.switch_epoch_taken == opt.switch_epoch_taken
    for e in range(cut, 10):
        for m, o in ((model, opt), (model2, opt2)):
            train_step(m, o, *data[e])
            o.end_epoch(e, val_loss=val[e])
    assert opt.switch_epoch_taken == opt2.switch_epoch_taken == 4
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


def test_switch_is_forced_once():
    model = small_cnn()
    opt = TSOALRA(model, switch_epoch=50)
    opt.end_epoch(0)
    opt.end_epoch(1)
    opt.switch()
    assert opt.switched and opt.switch_epoch_taken == 2
    opt.switch(epoch=9)  # already switched: nothing changes
    assert opt.switch_epoch_taken == 2 and opt.end_epoch(2) is False


def test_stage_one_state_does_not_load_into_a_switched_optimizer():
    model = small_cnn()
    opt = TSOALRA(model, switch_epoch=5)
    state = opt.state_dict()
    opt.switch()
    with pytest.raises(ValueError, match="already switched"):
        opt.load_state_dict(state)


@pytest.mark.parametrize("kwargs,match", [
    ({"switch_epoch": 3, "trigger": Plateau(2)}, "both"),
    ({}, "neither"),
    ({"switch_epoch": 0}, "Invalid switch_epoch"),
    ({"switch_epoch": 2.0}, "Invalid switch_epoch"),
    ({"switch_epoch": True}, "Invalid switch_epoch"),
    ({"trigger": 5}, "Invalid trigger"),
    ({"switch_epoch": 3, "lr": 0.0}, "Invalid lr"),
    ({"switch_epoch": 3, "damping": -1.0}, "Invalid damping"),
    ({"switch_epoch": 3, "factor_every": 0}, "Invalid factor_every"),
])
def test_bad_arguments_raise_before_hooks(kwargs, match):
    model = small_cnn()
    with pytest.raises(ValueError, match=match):
        TSOALRA(model, **kwargs)
    assert no_hooks(model)


def test_trigger_needs_the_validation_loss():
    opt = TSOALRA(small_cnn(), trigger=Plateau(1))
    with pytest.raises(ValueError, match="val_loss"):
        opt.end_epoch(0)


class EmbedGRU(nn.Module):
    """Embedding + bidirectional GRU + Linear head: only the head is preconditioned."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(20, 8)
        self.gru = nn.GRU(8, 6, batch_first=True, bidirectional=True)
        self.head = nn.Linear(12, 5)

    def forward(self, idx):
        out, _ = self.gru(self.embed(idx))
        return self.head(out[:, -1])


def test_parameters_kfac_does_not_cover_are_named_once_with_the_share():
    """Issue 21 defect 6: TSO-ALRA left a GRU on plain SGD (only the head preconditioned) with
    no warning. The warning names them with the share; they get exactly torch's SGD."""
    import warnings

    model, ref = EmbedGRU(), EmbedGRU()
    head = model.head.weight.numel() + model.head.bias.numel()
    total = sum(p.numel() for p in model.parameters())
    share = f"{100 * head / total:.1f} %"
    with pytest.warns(UserWarning) as record:
        opt = TSOALRA(model, lr=0.1, switch_epoch=2)
    (warning,) = [w for w in record if "preconditions" in str(w.message)]
    text = str(warning.message)
    assert text.startswith(f"TSO-ALRA preconditions {head:,} of {total:,} parameters ({share})")
    plain = [n for n, _ in model.named_parameters() if not n.startswith("head.")]
    assert "these get plain SGD: " + ", ".join(plain[:8]) in text and "and 1 more" in text
    sgd = torch.optim.SGD([p for n, p in ref.named_parameters() if not n.startswith("head.")],
                          lr=0.1)
    g = torch.Generator().manual_seed(1)
    idx, y = torch.randint(0, 20, (4, 7), generator=g), torch.randint(0, 5, (4,), generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("error")             # once per optimizer: not at a step
        train_step(model, opt, idx, y)
        train_step(ref, sgd, idx, y)
        for (n, p), q in zip(model.named_parameters(), ref.parameters()):
            if not n.startswith("head."):
                assert torch.equal(p, q), n        # w - lr * g, exactly
        train_step(model, opt, idx, y)


@pytest.mark.parametrize("norm", [nn.BatchNorm1d(4), nn.LayerNorm(4), nn.GroupNorm(2, 4)])
def test_a_model_kfac_covers_but_for_normalization_does_not_warn(norm):
    import warnings

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), norm, nn.ReLU(), nn.Linear(4, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TSOALRA(model, lr=0.1, switch_epoch=2)
    assert TSOALRA.label == "TSO-ALRA"
