"""A weight average never absorbs NaN/Inf: Uniform, EMA and PhaseWise refuse (naming the
parameter) or, with nonfinite="skip", drop the collection and count it. The expected averages
are computed by hand from the finite iterates only."""

import math

import pytest
import torch
from torch import nn

from polyak.averaging import EMA, NonFiniteWeights, PhaseWise, Uniform


def model_with(values):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    set_weights(model, values)
    return model


def set_weights(model, value):
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)


def first_value(avg):
    return [float(t.reshape(-1)[0]) for t in avg.averaged()]


@pytest.mark.parametrize("make", [
    lambda m, **kw: Uniform(m, **kw),
    lambda m, **kw: EMA(m, decay=0.5, every="epoch", **kw),
    lambda m, **kw: PhaseWise(m, phases=[3], **kw),
])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nonfinite_weights_are_refused_naming_the_parameter(make, bad):
    model = model_with(1.0)
    avg = make(model)
    avg.end_epoch(0)
    before = [t.clone() for t in avg.average]
    with torch.no_grad():
        model[1].bias.fill_(bad)
    with pytest.raises(NonFiniteWeights, match=r"'1\.bias'.*nonfinite='skip'"):
        avg.end_epoch(1)
    assert all(torch.equal(a, b) for a, b in zip(avg.average, before))
    assert avg.n_averaged == 1 and avg.skipped == 0


def test_uniform_skip_averages_the_finite_iterates_only():
    model = model_with(1.0)
    avg = Uniform(model, nonfinite="skip")
    for epoch, value in enumerate([1.0, math.nan, 4.0, math.inf]):
        set_weights(model, value)
        avg.end_epoch(epoch)
    assert avg.skipped == 2 and avg.n_averaged == 2
    assert first_value(avg) == [2.5] * 4  # (1 + 4) / 2
    assert "skipped=2" in repr(avg)
    assert avg.state_dict()["skipped"] == 2


def test_ema_skip_per_step():
    model = model_with(2.0)
    ema = EMA(model, decay=0.5, nonfinite="skip")
    for value in [2.0, math.nan, 4.0]:
        set_weights(model, value)
        ema.step()
    assert ema.skipped == 1 and first_value(ema) == [3.0] * 4  # copy 2, then lerp to 4 by 1/2


def test_phasewise_skip_keeps_the_phase_boundaries():
    """Phases [2, 2]: epoch 1 (the first phase's last) is NaN and skipped; the phase still ends
    there, writing the aggregate of epoch 0 alone, and phase 2 aggregates epochs 2 and 3."""
    model = model_with(1.0)
    pwa = PhaseWise(model, phases=[2, 2], gamma0=0.5, ref_epochs=2, nonfinite="skip")
    set_weights(model, 1.0)
    pwa.end_epoch(0)
    set_weights(model, math.nan)
    pwa.end_epoch(1)
    assert pwa.skipped == 1 and pwa.phase_index == 1 and pwa.n_averaged == 0
    assert all(float(p.detach().reshape(-1)[0]) == 1.0 for p in model.parameters())
    gamma = 0.5 ** (2 / 2)
    for epoch, value in ((2, 2.0), (3, 6.0)):
        set_weights(model, value)
        pwa.end_epoch(epoch)
    want = ((1 - gamma) * gamma * 2.0 + (1 - gamma) * 6.0) / (1 - gamma ** 2)
    assert all(float(p.detach().reshape(-1)[0]) == pytest.approx(want) for p in model.parameters())


def test_invalid_nonfinite_is_refused():
    with pytest.raises(ValueError, match="nonfinite"):
        Uniform(model_with(1.0), nonfinite="ignore")
