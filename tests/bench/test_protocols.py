"""Fidelity of the per-paper protocols: what each claim's paper held equal between its two arms is
equal in the built arms; PWA's window is the paper's fraction of a phase at any budget; each
setting reads back as the paper's value; every quote stands in the method reference."""

import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from polyak.bench import protocols
from polyak.bench.protocols import ARMS, CLAIMS, PROTOCOLS

DOCS = Path(__file__).resolve().parents[2] / "docs" / "methods.md"


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def lr_per_epoch(name, epochs, steps=4):
    """The learning rate each epoch trains with, read from the built Method as a loop sees it
    (the base lr times the schedule; end_epoch sets the next epoch's)."""
    method = protocols.parse(name).build(tiny(), epochs, steps)
    if method.averaging_trigger is not None:   # no metric to feed: only the lr is read
        method.averaging_trigger, method.averaging_started = None, True
    if getattr(method.stop_trigger, "mode", None) is not None:
        method.stop_trigger = None
    lrs = []
    for epoch in range(epochs):
        lrs.append(method.lr)
        method.end_epoch(epoch)
        if method.should_stop:
            break
    return lrs


def origin(name, hp):
    """Where an arm's value of ``hp`` comes from: its own tuning, another arm's (through the
    plan's shares, with its scale), or a fixed value."""
    plan = protocols.plan(name)
    if any(hp in stage for stage in plan.stages):
        return ("tuned", name, hp)
    if plan.shares is not None and (plan.keys is None or hp in plan.keys):
        scale = plan.scale.get(hp, 1.0)
        return origin(plan.shares, hp) if scale == 1.0 else ("scaled", origin(plan.shares, hp),
                                                             scale)
    return ("fixed", protocols.parse(name).defaults.get(hp, 0.0))


def weight_decay_kind(name):
    return bool(protocols.parse(name).defaults.get("decoupled", False))


def budget(name):
    return protocols.parse(name).defaults.get("budget", 1.0)


@pytest.mark.parametrize("claim", CLAIMS, ids=[c.text for c in CLAIMS])
def test_both_arms_share_what_the_paper_held_equal(claim):
    assert claim.held_equal, "every claim says what its paper held equal"
    for key in claim.held_equal:
        if key == "schedule":
            for epochs in (20, 40, 160):
                a, b = lr_per_epoch(claim.a, epochs), lr_per_epoch(claim.b, epochs)
                base_a = protocols.parse(claim.a).defaults["lr"]
                base_b = protocols.parse(claim.b).defaults["lr"]
                assert [x / base_a for x in a] == pytest.approx([x / base_b for x in b]), \
                    (claim.text, epochs)
        elif key == "weight_decay":
            assert origin(claim.a, "weight_decay") == origin(claim.b, "weight_decay"), claim
            assert weight_decay_kind(claim.a) == weight_decay_kind(claim.b), claim
        elif key == "lr":
            assert origin(claim.a, "lr") == origin(claim.b, "lr"), claim
        elif key == "budget":
            assert budget(claim.a) == budget(claim.b), claim
        else:
            raise AssertionError(f"unknown held_equal key {key!r}")


def test_a_claims_arms_come_from_its_own_papers_protocol():
    for proto in PROTOCOLS.values():
        own = {a.name for a in proto.arms} | set(proto.uses)
        for claim in proto.claims:
            assert claim.protocol == proto.key and {claim.a, claim.b} <= own, claim.text
            assert claim.figure, f"{claim.text}: the paper's own figure"
    # the TSO-ALRA claims' Adam is that paper's (step decay at 81/122 of 164, no weight decay)
    tso = {c.b for c in PROTOCOLS["tso-alra"].claims}
    assert tso == {"adam@tso-alra", "amsgrad@tso-alra", "sgd@tso-alra"}
    assert lr_per_epoch("adam@tso-alra", 164)[80:82] == pytest.approx([1e-3, 1e-4])
    assert lr_per_epoch("adam@tso-alra", 164)[121:123] == pytest.approx([1e-4, 1e-5])
    assert protocols.parse("adam@tso-alra").defaults["weight_decay"] == 0.0


@pytest.mark.parametrize("epochs", [20, 40, 160])
def test_pwa_window_is_the_papers_fraction_of_every_phase(epochs):
    method = protocols.parse("pwa").build(tiny(), epochs, 4)
    avg = method.averaging
    assert avg.phases == [epochs // 2, epochs // 4, epochs // 4]
    for p, T in enumerate(avg.phases):
        gamma = 0.9 ** (80 / T)   # Kobayashi Sec. 3.1: gamma = gamma_0^(80/T)
        assert avg.gamma_of(p) == pytest.approx(gamma)
        weights = avg.weights(p)
        assert sum(weights) == pytest.approx(1.0)
        # the last eighth of any phase carries 1 - 0.9^10 of the aggregate (~65 %)
        k = T // 8
        if T % 8 == 0:
            assert sum(weights[-k:]) == pytest.approx((1 - 0.9 ** 10) / (1 - 0.9 ** 80))
    if epochs == 40:
        assert avg.gamma_of(0) == pytest.approx(0.6561)   # the "Done when"


def _normalized(text):
    return re.sub(r"\s+", " ", text).strip()


def test_every_quote_stands_in_the_method_reference():
    reference = _normalized(DOCS.read_text())
    quotes = [q for proto in PROTOCOLS.values() for q in proto.quotes()]
    assert len(quotes) > 30
    missing = [str(q) for q in quotes if _normalized(q.text) not in reference]
    assert not missing, missing


@pytest.mark.parametrize("name", list(ARMS))
def test_every_arm_builds_at_small_and_paper_budgets(name):
    for epochs, steps in ((3, 2), (40, 32), (164, 391)):
        method = protocols.parse(name).build(tiny(), epochs, steps)
        assert method.name == name


def test_settings_read_back_as_the_papers_values():
    # Gadam App. B.2 / Sec. 5: AdamW and the Gadam family at AdamW's default lr 0.001
    for name in ("adamw@gadam", "gadam", "gadam-auto", "gadam-lookahead"):
        method = protocols.parse(name).build(tiny(), 40, 4)
        assert method.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3), name
    # GadamAuto: patience 10 of 300 epochs for the trigger and the termination (App. A.2)
    auto = protocols.parse("gadam-auto").build(tiny(), 300, 4)
    assert auto.averaging_trigger.patience == auto.stop_trigger.patience == 10
    assert protocols.parse("gadam-auto").build(tiny(), 40, 4).stop_trigger.patience == 2
    assert lr_per_epoch("gadam-auto", 20) == [1e-3] * 20   # a flat schedule
    # TSO-ALRA: the paper's damping "such as 10^-6"; step decay at 81/122 of 164
    tso = protocols.parse("tso-alra").build(tiny(), 164, 4)
    assert tso.optimizer.param_groups[0]["damping"] == 1e-6
    lrs = lr_per_epoch("tso-alra", 164)
    assert lrs[80] / lrs[0] == pytest.approx(1.0) and lrs[81] / lrs[0] == pytest.approx(0.1)
    assert lrs[122] / lrs[0] == pytest.approx(0.01)
    # SGDL App. A.3.1: /10 at epochs 50 and 100 of 150, weight decay 0.005, every optimizer
    for name in ("sgd@sgdl", "sgdm@sgdl", "sgdl"):
        lrs = lr_per_epoch(name, 150)
        assert [i for i in range(1, 150) if lrs[i] != lrs[i - 1]] == [50, 100], name
        assert protocols.parse(name).defaults["weight_decay"] == 5e-3
    # PWA Sec. 3.1: lr 0.1, /10 after epochs 80 and 120 of 160, wd 5e-4, momentum 0.9
    lrs = lr_per_epoch("sgdm@pwa", 160)
    assert lrs[0] == 0.1 and [i for i in range(1, 160) if lrs[i] != lrs[i - 1]] == [80, 120]
    # PWA Table 3: a constant lr of 0.001 for 80 of 160 epochs, then the run ends
    for name in ("adam-const@pwa", "pwa-adam@pwa", "pwa-adabound@pwa"):
        lrs = lr_per_epoch(name, 160)
        assert lrs == [1e-3] * 80, name
    pwa_adam = protocols.parse("pwa-adam@pwa").build(tiny(), 160, 4)
    assert pwa_adam.averaging.phases == [80] and pwa_adam.averaging.gamma == pytest.approx(0.9)


def test_grid_edges_and_plans_are_stated():
    for name, arm in ARMS.items():
        assert arm.plan.text or not arm.plan.stages, f"{name}: say how the paper tuned it"
    assert "padam@gadam" in protocols.plan("gadamx").shares
    assert protocols.plan("padam@gadam").keys == ("lr",)   # Padam at SGD's tuned lr


def test_asam_is_labelled_as_polyaks_addition():
    assert "polyak's addition" in protocols.parse("asam").description
    assert "asam" not in protocols.default_methods()


def test_claims_count_and_unique_texts():
    texts = [c.text for c in CLAIMS]
    assert len(texts) == len(set(texts)) and len(PROTOCOLS) == 6
    assert {c.paper for c in CLAIMS} == {p.paper for p in PROTOCOLS.values() if p.claims}
    assert not math.isnan(sum(c.margin for c in CLAIMS))
