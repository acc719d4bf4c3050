"""Events of the weight averages (issue 14): a raising event changes nothing, epochs are taken
in order only, frozen parameters are never written, and EMA's decay warm-up."""

import pytest
import torch
from avg_helpers import bn_buffers, bn_net, image_batches, mlp, params_of, random_iterate
from torch import nn

from polyak.averaging import EMA, PhaseWise, Uniform, default_forward


def dict_loader(batches):
    return [{"image": x} for x in batches]


def test_defect2_phase_end_that_raises_leaves_model_bn_and_phases_as_they_were():
    """Reproduces issue 14 defect 2: a bn_loader of dict batches made the phase end raise after
    the BatchNorm statistics were reset and the phase bookkeeping had advanced."""
    model = bn_net()
    model.train()
    for x in image_batches(3):
        model(x)                      # BatchNorm statistics of the live model
    pwa = PhaseWise(model, phases=[2, 2])
    random_iterate(model, seed=3)
    pwa.end_epoch(0)
    random_iterate(model, seed=4)
    live, buffers = params_of(model), bn_buffers(model)
    average = [a.clone() for a in pwa.average]
    state = (pwa.n_averaged, pwa.collected, pwa.epoch)
    loader = dict_loader(image_batches(2))
    with pytest.raises(TypeError, match="forward="):
        pwa.end_epoch(1, bn_loader=loader)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), live))
    assert all(torch.equal(b, c) for b, c in zip(bn_buffers(model), buffers))
    assert all(torch.equal(a, b) for a, b in zip(pwa.average, average))
    assert (pwa.n_averaged, pwa.collected, pwa.epoch) == state
    # the same phase end with forward= now aggregates, and later phases do too
    pwa.end_epoch(1, bn_loader=loader, forward=lambda m, b: m(b["image"]))
    assert (pwa.n_averaged, pwa.epoch, pwa.phase_index) == (0, 2, 1)
    assert not all(torch.equal(b, c) for b, c in zip(bn_buffers(model), buffers))
    for epoch in (2, 3):
        pwa.end_epoch(epoch)
    assert pwa.n_averaged == 0 and pwa.finished


def test_defect3_repeated_backward_and_skipped_epochs_are_refused():
    """Reproduces issue 14 defect 3: Uniform took end_epoch(3) twice (averaging epoch 3 twice)
    and end_epoch(99) then end_epoch(1)."""
    for make in (lambda m: Uniform(m), lambda m: EMA(m, 0.9, every="epoch")):
        model = mlp()
        avg = make(model)
        for epoch in range(4):
            avg.end_epoch(epoch)
        with pytest.raises(ValueError, match="Invalid epoch: 3 \\(expected 4.*load_state_dict"):
            avg.end_epoch(3)
        with pytest.raises(ValueError, match="Invalid epoch: 99 \\(expected 4"):
            avg.end_epoch(99)
        assert avg.n_averaged == 4 and avg.epoch == 4
    fresh = Uniform(mlp())
    with pytest.raises(ValueError, match="expected 0"):
        fresh.end_epoch(1)             # 1-based epochs
    fresh.skip_to(5)                   # starting later is said explicitly
    fresh.end_epoch(5)
    assert fresh.n_averaged == 1
    with pytest.raises(ValueError, match="goes forward"):
        fresh.skip_to(2)
    with pytest.raises(ValueError, match="cannot skip"):
        PhaseWise(mlp(), [2]).skip_to(1)


def test_collect_that_raises_leaves_counters_alone():
    model = mlp()
    avg = Uniform(model, every=1)
    with pytest.raises(ValueError, match="parameters changed"):
        avg.copy_to(nn.Linear(2, 2))
    avg.step()
    model[0] = nn.Linear(4, 8, bias=False)   # the model changed under the average
    with pytest.raises(ValueError, match="parameters changed"):
        avg.step()
    with pytest.raises(ValueError, match="parameters changed"):
        avg.end_epoch(0)
    assert (avg.steps, avg.n_averaged, avg.epoch) == (1, 1, 0)


@pytest.mark.parametrize("make", [
    lambda m: PhaseWise(m, [2]), lambda m: Uniform(m), lambda m: EMA(m, 0.5, every="epoch")])
def test_defect5_frozen_parameters_are_never_written(make):
    """Reproduces issue 14 defect 5: PWA wrote its aggregate into requires_grad=False
    parameters (a drift of 4.5e-8); they must stay exactly as they are."""
    model = mlp()
    frozen = model[0].weight
    frozen.requires_grad_(False)
    value = frozen.detach().clone()
    avg = make(model)
    g = torch.Generator().manual_seed(0)
    for epoch in range(2):
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn(p.shape, generator=g))
        avg.end_epoch(epoch)
    with avg.applied(model):
        assert torch.equal(frozen, value)
        trainable = model[2].weight.detach().clone()
    avg.copy_to(model)
    assert torch.equal(frozen, value)
    if avg.has_average:
        assert torch.equal(model[2].weight, trainable)


def test_ema_warmup_follows_timm_decay_schedule():
    """Against an explicit recurrence with d_n = min(d, 1 - (1 + n)^(-2/3))."""
    model = mlp()
    ema = EMA(model, decay=0.99, warmup=True)
    iterates = []
    for k in range(30):
        iterates.append(random_iterate(model, seed=10 + k))
        ema.step()
    expected = [t.clone() for t in iterates[0]]
    for n, w in enumerate(iterates[1:], start=1):
        d = min(0.99, 1.0 - (1.0 + n) ** (-2 / 3))
        expected = [(d * e.double() + (1 - d) * x.double()).float() for e, x in zip(expected, w)]
    for a, e in zip(ema.averaged(), expected):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)
    assert ema.current_decay == pytest.approx(min(0.99, 1 - 31 ** (-2 / 3)))
    assert EMA(model, 0.99).current_decay == 0.99


def test_ema_warmup_weighs_recent_iterates_on_a_short_run_and_round_trips():
    model = mlp()
    plain, warm = EMA(model, 0.999), EMA(model, 0.999, warmup=True)
    first = random_iterate(model, seed=1)
    for avg in (plain, warm):
        avg.step()
    last = random_iterate(model, seed=2)
    for _ in range(249):
        for avg in (plain, warm):
            avg.step()
    dist = [sum((a - b).norm() for a, b in zip(avg.averaged(), last)) for avg in (plain, warm)]
    base = sum((a - b).norm() for a, b in zip(first, last))
    assert dist[0] > 0.7 * base and dist[1] < 0.05 * base
    copy = EMA(mlp(), 0.999, warmup=True)
    copy.load_state_dict(warm.state_dict())
    assert copy.current_decay == warm.current_decay
    with pytest.raises(ValueError, match="Invalid state_dict"):
        EMA(mlp(), 0.999).load_state_dict(warm.state_dict())
    with pytest.raises(ValueError, match="warmup_power"):
        EMA(model, 0.9, warmup=True, warmup_power=0)


def test_method_forward_reaches_the_phase_end():
    """Method.end_epoch(forward=...) is what PhaseWise needs for dict batches."""
    from polyak.method import Method

    model = bn_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    method = Method(model, opt, averaging=PhaseWise(model, [1, 1]))
    loader = dict_loader(image_batches(2))
    with pytest.raises(TypeError, match="forward="):
        method.end_epoch(0, bn_loader=loader)
    assert method.epochs_done == 0 and method.averaging.epoch == 0
    method.end_epoch(0, bn_loader=loader, forward=lambda m, b: default_forward(m, b["image"]))
    assert method.epochs_done == 1 and method.averaging.phase_index == 1
