import math

import pytest
import torch
from torch import nn

import polyak
from polyak import recipes
from polyak._recipe_parts import phase_lengths


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv1d(1, 4, 3, padding=1), nn.BatchNorm1d(4), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 12, 3),
    )


def data(n_batches=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 1, 12, generator=g), torch.randint(0, 3, (8,), generator=g))
            for _ in range(n_batches)]


def run(spec, epochs=2, seed=0, **overrides):
    model = small_cnn(seed)
    loader = data()
    method = polyak.recipe(spec, model, epochs=epochs, steps_per_epoch=len(loader), **overrides)
    losses = []
    for epoch in range(epochs):
        for x, y in loader:
            loss = method.step(lambda x=x, y=y: nn.functional.cross_entropy(model(x), y))
            losses.append(float(loss))
        with torch.no_grad():
            val_loss = float(nn.functional.cross_entropy(model(loader[0][0]), loader[0][1]))
        method.end_epoch(epoch, val_loss=val_loss, val_acc=-val_loss, bn_loader=loader)
    with method.eval_weights(bn_loader=loader), torch.no_grad():
        model.eval()
        out = model(loader[0][0])
    return method, model, losses, out


@pytest.mark.parametrize("name", recipes.names())
def test_every_recipe_is_available_builds_and_trains_two_epochs(name):
    ok, why = recipes.available(name)
    assert ok, why
    method, model, losses, out = run(name)
    assert all(math.isfinite(v) for v in losses)
    assert torch.isfinite(out).all()


def test_every_paper_method_has_a_description_and_baseline():
    described = dict(recipes.describe())
    for name in recipes.PAPER_METHODS:
        assert described[name]
        if name not in ("sgd",):
            assert recipes.BASELINES[name] in recipes.names()


def test_run_is_reproducible_bit_for_bit():
    a = run("gadamx", epochs=3)[1]
    b = run("gadamx", epochs=3)[1]
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("spec, base, avg", [
    ("adamw+phasewise", "adamw", "phasewise"), ("sam+uniform", "sam", "uniform"),
    ("sgd+ema", "sgd", "ema"), ("swa", "sgdm", "uniform"), ("pwa-adam", "adam", "phasewise"),
])
def test_composition_parses(spec, base, avg):
    b, a, _ = recipes.parse(spec)
    assert (b, a) == (base, avg)


def test_overrides_reach_the_optimizer():
    method = run("gadamx:lr=0.05,weight_decay=0.001", epochs=1)[0]
    group = method.optimizer.param_groups[0]
    assert method.base_lrs[0] == 0.05 and group["weight_decay"] == 0.001
    assert run("sgdm", epochs=1, lr=0.3)[0].base_lrs[0] == 0.3


@pytest.mark.parametrize("spec, match", [
    ("nope", "valid: sgd"), ("sgdm+nothing", "valid: uniform"), ("gadam:foo=1", "valid: .*lr"),
    ("pwa:lr", "key=value"), ("nope+uniform", "valid bases"),
])
def test_unknown_names_and_keys_list_the_valid_ones(spec, match):
    with pytest.raises(recipes.UnknownRecipe, match=match):
        polyak.recipe(spec, small_cnn(), epochs=2, steps_per_epoch=1)


def test_invalid_budget():
    with pytest.raises(ValueError, match="epochs"):
        polyak.recipe("sgd", small_cnn(), epochs=0, steps_per_epoch=1)


def lrs_over(spec, epochs):
    model = small_cnn()
    method = polyak.recipe(spec, model, epochs=epochs, steps_per_epoch=1)
    seen = []
    for epoch in range(epochs):
        seen.append(method.lr)
        method.end_epoch(epoch, val_loss=1.0, val_acc=0.5)
    return seen


def test_pwa_phases_scale_to_the_budget():
    assert lrs_over("pwa", 40) == pytest.approx([0.1] * 20 + [0.01] * 10 + [0.001] * 10)
    assert lrs_over("sgdl", 30) == pytest.approx([1.0] * 10 + [0.1] * 10 + [0.01] * 10)
    assert lrs_over("pwa-adam", 10) == pytest.approx([1e-3] * 10)


def test_gadam_averaging_starts_at_the_published_fraction():
    hp = recipes.hyperparameters("gadam", 300)
    assert hp["avg_start"] == 161
    lrs = lrs_over("gadam", 300)
    assert lrs[0] == pytest.approx(1e-3) and lrs[200] == pytest.approx(0.5e-3)


def test_tso_alra_switches_after_ten_percent():
    method = polyak.recipe("tso-alra", small_cnn(), epochs=20, steps_per_epoch=1)
    for epoch in range(2):
        assert not method.optimizer.switched
        method.end_epoch(epoch, val_loss=1.0)
    assert method.optimizer.switched


def test_gadam_lookahead_drops_lookahead_when_averaging_starts():
    from polyak.optim import Lookahead

    method = polyak.recipe("gadam-lookahead", small_cnn(), epochs=10, steps_per_epoch=1)
    start = recipes.hyperparameters("gadam-lookahead", 10)["avg_start"]
    for epoch in range(start):
        assert isinstance(method.optimizer, Lookahead)
        method.end_epoch(epoch)
    assert not isinstance(method.optimizer, Lookahead)


@pytest.mark.parametrize("epochs", [1, 2, 3, 7, 40, 161])
@pytest.mark.parametrize("fractions", [(0.5, 0.25, 0.25), (1 / 3, 1 / 3, 1 / 3), (1.0,)])
def test_phase_lengths_cover_the_budget(epochs, fractions):
    lengths = phase_lengths(epochs, fractions)
    assert sum(lengths) == epochs and min(lengths) >= 1
    assert len(lengths) == min(epochs, len(fractions))


@pytest.mark.parametrize("name, fused", [("sgdm", True), ("sam", True), ("adam", True),
                                         ("adamw", True), ("gadamx", False), ("lookahead", True)])
def test_recipes_run_torch_fused_kernels_equal_to_the_default_ones(name, fused):
    """On the CPU the recipes pick torch's fused SGD/Adam kernels (not Padam at partial 1/8,
    whose fused path compiles); 20 steps equal the default kernels' to float32 rounding."""
    from polyak._recipe_parts import fused_kernels

    def run(force_default):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
        method = polyak.recipe(name, model, epochs=2, steps_per_epoch=10)
        opt = method.optimizer
        inner = getattr(opt, "base_optimizer", None) or getattr(opt, "optimizer", None) or opt
        assert bool(inner.defaults.get("fused")) is fused
        if force_default:
            for group in inner.param_groups:
                group["fused"] = None
        x, y = torch.randn(20, 6), torch.randint(0, 3, (20,))
        for _ in range(20):
            method.step(lambda: nn.functional.cross_entropy(model(x), y))
        return [p.detach().clone() for p in model.parameters()]

    for a, b in zip(run(False), run(True)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert fused_kernels(nn.Linear(2, 2).to(torch.float16)) is True
    strided = nn.Module()
    strided.w = nn.Parameter(torch.randn(4, 8)[:, ::2])  # a view that is not dense in memory
    assert fused_kernels(strided) is False
    assert fused_kernels(nn.ReLU()) is False  # no parameters
