"""Recipes as values: parsed once, overrides merged as objects (issue 14 defect 7), budget rules,
tuning links, and ``polyak list`` showing hyper-parameters and defaults (plain text and JSON)."""

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

import polyak
from polyak import recipes
from polyak._recipe_parts import OfBudget, PerEpoch, WindowPerStep


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(1, 2, 3), nn.BatchNorm1d(2), nn.Flatten(), nn.Linear(20, 3))


def test_parse_returns_one_value_with_base_averaging_defaults_and_provenance():
    rec = recipes.parse("gadamx:lr=0.05")
    assert isinstance(rec, recipes.Recipe)
    assert (rec.base, rec.averaging, dict(rec.overrides)) == ("padam", "uniform", {"lr": 0.05})
    assert rec.defaults["partial"] == 0.125 and isinstance(rec.defaults["avg_start"], OfBudget)
    assert "Gadam" in rec.paper and rec.tuning.shares == "padam"
    assert recipes.parse(rec) is rec
    base, averaging, overrides = recipes.parse("asgd")  # the former tuple still unpacks
    assert (base, averaging, overrides) == ("sgdm", "uniform", {"lr": 0.2})


def test_a_spec_is_parsed_once_on_the_way_to_build(monkeypatch):
    calls = []
    real = recipes.parse
    monkeypatch.setattr(recipes, "parse", lambda spec: calls.append(spec) or real(spec))
    polyak.recipe("gadamx:lr=0.05", tiny(), epochs=4, steps_per_epoch=2, weight_decay=0.0)
    assert calls == ["gadamx:lr=0.05"]


def test_keyword_overrides_are_never_turned_into_text():
    # issue 14 defect 7: a comma-containing string arrives unchanged and is refused as a value
    # (not a spec parse error), and a non-scalar value reaches the optimizer as itself
    with pytest.raises(ValueError, match=r"Invalid momentum_policy: 'keep, reset'") as err:
        polyak.recipe("pwa", tiny(), epochs=4, steps_per_epoch=2, momentum_policy="keep, reset")
    assert not isinstance(err.value, recipes.UnknownRecipe)
    lr = torch.tensor(0.05)
    method = polyak.recipe("sgdm", tiny(), epochs=4, steps_per_epoch=2, lr=lr)
    assert method.base_lrs[0] is lr
    beta = 0.912345678901234567
    method = polyak.recipe("adam", tiny(), epochs=4, steps_per_epoch=2, beta1=beta)
    assert method.optimizer.param_groups[0]["betas"][0] == beta  # full precision


def test_overrides_on_a_spec_with_overrides_and_unknown_keyword():
    rec = recipes.parse("gadamx:lr=0.05").with_overrides(avg_start=3)
    assert dict(rec.overrides) == {"lr": 0.05, "avg_start": 3}
    assert rec.hyperparameters(10, 5)["avg_start"] == 3
    with pytest.raises(recipes.UnknownRecipe, match="valid: .*avg_ratio"):
        polyak.recipe("gadamx", tiny(), epochs=4, steps_per_epoch=2, nope=1)


def test_budget_rules_resolve_for_the_budget():
    assert OfBudget(161 / 300, "x", before_end=True)(300, 1) == 161
    assert OfBudget(161 / 300, "x", before_end=True)(2, 1) == 1
    assert PerEpoch(0.25, "x")(40, 391) == 98 and PerEpoch(0.25, "x")(40, 3) == 1
    w = WindowPerStep(0.05, 391, "x")
    assert w(1, 391) == pytest.approx(0.05)
    # the same decay per epoch: (1 - gamma_32)^32 == 0.95^391
    assert (1 - w(1, 32)) ** 32 == pytest.approx(0.95 ** 391)


def test_tso_alra_step_counted_settings_scale_with_the_steps_per_epoch():
    paper = recipes.hyperparameters("tso-alra", 164, 391)
    assert paper["inv_every"] == 98 and paper["factor_decay"] == pytest.approx(0.05)
    assert paper["switch_epoch"] == 16 and paper["factor_init"] == "batches"
    small = recipes.hyperparameters("tso-alra", 40, 32)
    assert small["inv_every"] == 8 and small["switch_epoch"] == 4
    # the factor average: K-FAC's usual weight 0.05 per step at any epoch length (the paper
    # gives none); the damping: the recipe's robust 1e-3 (the paper's "such as 10^-6" is its
    # protocol's, tests/bench/test_protocols.py)
    assert small["factor_decay"] == paper["factor_decay"] == 0.05
    assert small["damping"] == paper["damping"] == 1e-3
    method = polyak.recipe("tso-alra", tiny(), epochs=40, steps_per_epoch=32)
    group = method.optimizer.param_groups[0]
    assert group["inv_every"] == 8 and group["factor_decay"] == small["factor_decay"]


def test_every_paper_method_declares_how_it_is_tuned():
    tuned = {n for n in recipes.PAPER_METHODS if recipes.parse(n).tuning.tuned}
    for name in recipes.PAPER_METHODS:
        tuning = recipes.parse(name).tuning
        assert tuning.protocol, name
        if tuning.shares is not None:
            assert tuning.shares in tuned or not recipes.parse(tuning.shares).tuning.tuned
    links = {n: recipes.parse(n).tuning.shares for n in recipes.PAPER_METHODS}
    assert links["gadam"] == links["gadam-auto"] == "adamw" and links["gadamx"] == "padam"
    assert links["swa"] == links["pwa"] == "sgdm"
    assert recipes.parse("sgdl").tuning.relative and recipes.parse("asgd").tuning.scale["lr"] == 2
    assert max(recipes.parse("sgd").tuning.grid["lr"]) <= 0.1  # SGDL's small-lr arm


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "polyak", *args], capture_output=True, text=True)


def test_polyak_list_shows_hyper_parameters_and_defaults_without_markup():
    out = run_cli("list")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert "``" not in out.stdout and ":class:" not in out.stdout
    cells = " ".join(out.stdout.replace("│", " ").split())   # the table's cells, unwrapped
    assert "defaults: lr=0.1, momentum=0.9, weight_decay=0.0005, schedule='step'" in cells  # sgdm
    assert "switch_epoch=0.1 x epochs" in text
    # the protocols' arms: recipe, the paper's settings, how the paper tuned them
    assert "adam@tso-alra" in cells and "Ida & Fujiwara (TSO-ALRA): adam with" in cells
    assert "tuning: lr in {1e-1, ..., 1e-4} x beta1 in {0.9, 0.99}" in cells


def test_polyak_list_json():
    out = run_cli("list", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    by_name = {r["name"]: r for r in rows if r["kind"] == "recipes"}
    assert set(by_name) == set(recipes.names())
    assert by_name["sgdm"]["hyperparameters"]["lr"] == "0.1"
    assert by_name["gadam"]["tuning"]["shares"] == "adamw"
    assert by_name["tso-alra"]["tuning"]["grid"]["lr"] == ["0.1", "0.01", "0.001"]
    assert {"optimizers", "tasks", "protocol arms"} <= {r["kind"] for r in rows}
    arms = {r["name"]: r for r in rows if r["kind"] == "protocol arms"}
    assert arms["sgdm@gadam"]["settings"] == {"schedule": "'linear'"}
    assert arms["swa"]["baseline"] == "sgdm@gadam" and arms["pwa"]["protocol"] == "pwa"


def test_schedule_and_budget_are_hyper_parameters_of_every_recipe():
    """A paper's protocol runs any base on its own schedule and for a fraction of the budget."""
    from polyak.triggers import AtEpoch

    def lrs(spec, epochs):
        method = polyak.recipe(spec, tiny(), epochs=epochs, steps_per_epoch=2)
        out = []
        for epoch in range(epochs):
            out.append(method.lr)
            method.end_epoch(epoch)
            if method.should_stop:
                break
        return out

    assert lrs("sgdm:schedule=thirds", 9) == pytest.approx([0.1] * 3 + [0.01] * 3 + [1e-3] * 3)
    assert lrs("adam:schedule=constant", 4) == [1e-3] * 4
    assert lrs("sgd:schedule=tso-alra", 164)[80:82] == pytest.approx([0.1, 0.01])
    half = lrs("adam:schedule=constant,budget=0.5", 10)
    assert half == [1e-3] * 5                                  # stops after half the epochs
    method = polyak.recipe("pwa-adam", tiny(), epochs=10, steps_per_epoch=2, budget=0.5)
    assert method.averaging.phases == [5] and isinstance(method.stop_trigger, AtEpoch)
    # epoch-counted rules resolve at the epochs a recipe trains
    assert recipes.hyperparameters("swa:budget=0.5", 300)["avg_start"] == round(161 / 2)
    for bad, match in (("sgdm:schedule=cosine", "Invalid schedule"),
                       ("sgdm:budget=0", "Invalid budget"), ("sgdm:budget=1.5", "Invalid budget"),
                       ("adamw+phasewise:schedule=linear", "no constant-lr phases"),
                       ("gadam-auto:budget=0.5", "Invalid budget for GadamAuto")):
        with pytest.raises(ValueError, match=match):
            polyak.recipe(bad, tiny(), epochs=4, steps_per_epoch=2)


SPECS = [*recipes.names(), "sgd+ema"]   # every recipe and every averaging


def numeric_defaults():
    """(recipe, hyper-parameter) for every numeric hyper-parameter of every recipe."""
    for name in SPECS:
        rec = recipes.parse(name)
        for key, value in rec.hyperparameters(40, 32).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                yield name, key


@pytest.mark.parametrize("name, key", list(numeric_defaults()))
def test_every_numeric_hyper_parameter_refuses_nan_and_inf_at_parse_time(name, key):
    """Issue 21 defect 2: ``lr=nan`` and ``lr=inf`` passed validation (``lr=-1`` did not)."""
    for text in ("nan", "inf", "-inf"):
        with pytest.raises(ValueError, match=rf"^Invalid {key}: -?(nan|inf) \(allowed: "):
            recipes.parse(f"{name}:{key}={text}")
    with pytest.raises(ValueError, match=rf"^Invalid {key}: nan"):
        polyak.recipe(name, tiny(), 4, 2, **{key: float("nan")})


@pytest.mark.parametrize("key, value", [
    ("momentum", 2), ("momentum", 1.0), ("momentum", -0.1), ("beta1", 1.0), ("beta2", 1.5),
    ("beta1", -0.5), ("weight_decay", -1e-4), ("lr", -1), ("rho", -0.05), ("partial", 0.75),
    ("partial", 0), ("final_lr", 0.0), ("gamma", -1e-3), ("alpha", 0.0), ("alpha", 1.5),
    ("k", 0), ("k", 2.5), ("ema_decay", 1.0), ("gamma0", 1.0), ("avg_ratio", 0.0),
    ("avg_start", -1), ("schedule", "cosine"), ("budget", 1.5), ("budget", 0),
    ("patience", -1), ("switch_epoch", 0),
    ("factor_decay", 0.0), ("damping", -1.0), ("inv_every", 0), ("factor_every", 1.5),
    ("warmup", -1), ("warmup_fraction", 1.5), ("amsgrad", 1), ("factor_init", "eye"),
    ("momentum_policy", "drop"),
])
def test_out_of_range_hyper_parameters_are_refused(key, value):
    """Issue 21 defect 7: ``momentum=2`` was accepted and the run stored as complete. Ranges at
    least torch's own (momentum and betas in [0, 1), eps/weight decay/lr >= 0)."""
    name = next(n for n in SPECS if key in recipes.parse(n).defaults)
    with pytest.raises(ValueError, match=rf"^Invalid {key}: {value!r} \(allowed: "):
        recipes.parse(name).with_overrides(**{key: value})
    with pytest.raises(ValueError, match=rf"^Invalid {key}: "):
        recipes.parse(f"{name}:{key}={value}")


def test_every_hyper_parameter_of_every_recipe_has_a_range():
    from polyak._hyperparameters import CHECKS

    keys = {k for n in SPECS for k in recipes.parse(n).defaults}
    assert keys <= set(CHECKS), sorted(keys - set(CHECKS))
    for name in SPECS:   # and every default is inside it, for a budget
        rec = recipes.parse(name)
        assert rec.build(tiny(), 40, 32).recipe  # builds (the resolved values are checked)
