"""The paper-claims table: verdict logic and the reading of each claim's metric."""

import math

import pytest

from polyak.bench.claims import Claim, evaluate_claim, run_value, verdict
from polyak.bench.stats import welch


@pytest.mark.parametrize("low,high,expected", [
    (0.1, 0.5, "supported"), (-0.5, -0.1, "contradicted"), (-0.1, 0.5, "inconclusive"),
    (0.0, 0.5, "inconclusive"), (math.nan, math.nan, "inconclusive")])
def test_better_verdicts(low, high, expected):
    assert verdict(low, high, "better") == expected


@pytest.mark.parametrize("low,high,expected", [
    (-0.3, 0.4, "supported"), (-0.5, 0.5, "supported"), (0.6, 1.0, "contradicted"),
    (-2.0, -0.7, "contradicted"), (-0.2, 0.9, "inconclusive"), (-1.0, 1.0, "inconclusive")])
def test_matches_verdicts(low, high, expected):
    assert verdict(low, high, "matches", margin=0.5) == expected


def curve(test_accs, test_losses):
    return [{"test_acc": a, "test_loss": l} for a, l in zip(test_accs, test_losses)]


def test_accuracy_claim_uses_final_epoch_in_percent():
    a = [curve([0.5, 0.95], [1, 1]), curve([0.5, 0.96], [1, 1]), curve([0.5, 0.97], [1, 1])]
    b = [curve([0.9, 0.90], [1, 1]), curve([0.9, 0.91], [1, 1]), curve([0.9, 0.92], [1, 1])]
    res = evaluate_claim(Claim("p", "A beats B", "a", "b"), {"a": a, "b": b}, epochs=2)
    ref = welch([95.0, 96.0, 97.0], [90.0, 91.0, 92.0])
    assert res.diff == pytest.approx(5.0) and res.low == pytest.approx(ref.low)
    assert res.verdict == "supported" and (res.n_a, res.n_b) == (3, 3)
    flipped = evaluate_claim(Claim("p", "B beats A", "b", "a"), {"a": a, "b": b}, epochs=2)
    assert flipped.verdict == "contradicted" and flipped.diff == pytest.approx(-5.0)


def test_early_loss_claim_is_oriented_so_lower_loss_is_a_gain():
    # 10 epochs, at=0.2 -> epoch 2 (index 1): a has loss 0.5, b has loss 1.0 there
    a = [curve([0.5] * 10, [2.0, 0.5 + s, *[9.0] * 8]) for s in (0.0, 0.01, 0.02)]
    b = [curve([0.5] * 10, [2.0, 1.0 + s, *[0.1] * 8]) for s in (0.0, 0.01, 0.03)]
    claim = Claim("p", "a falls faster", "a", "b", metric="test_loss", at=0.2)
    res = evaluate_claim(claim, {"a": a, "b": b}, epochs=10)
    ref = welch([1.0, 1.01, 1.03], [0.5, 0.51, 0.52])
    assert res.diff == pytest.approx(ref.diff) and res.high == pytest.approx(ref.high)
    assert res.verdict == "supported"
    final = evaluate_claim(Claim("p", "x", "a", "b", metric="test_loss"), {"a": a, "b": b}, 10)
    assert final.verdict == "contradicted"


def test_run_value_of_a_run_that_stopped_early():
    c = curve([0.1, 0.2, 0.3], [3, 2, 1])
    assert run_value(c, epochs=10, metric="test_acc", at=1.0) == pytest.approx(30.0)
    assert run_value(c, epochs=10, metric="test_loss", at=0.1) == 3
    assert run_value(c, epochs=10, metric="test_loss", at=0.2) == 2


def test_missing_method_is_not_run():
    res = evaluate_claim(Claim("p", "t", "a", "b"), {"a": [curve([1], [1])]}, epochs=1)
    assert res.verdict == "not run" and res.n_b == 0


@pytest.mark.parametrize("kwargs,match", [
    ({"metric": "train_acc"}, "metric"), ({"direction": "worse"}, "direction"),
    ({"direction": "matches"}, "margin"), ({"at": 0.0}, "at"), ({"margin": -1.0}, "margin")])
def test_invalid_claims(kwargs, match):
    with pytest.raises(ValueError, match=f"Invalid {match}"):
        Claim("p", "t", "a", "b", **kwargs)


# ---------------------------------------------------------------- paired, adjusted, powered
from polyak.bench.claims import evaluate_claims  # noqa: E402
from polyak.bench.stats import detectable_effect, holm, seeds_needed  # noqa: E402


def test_claims_are_paired_by_seed_adjusted_by_holm_and_decided_on_the_adjusted_p():
    from scipy import stats

    accs = {"a": [0.950, 0.955, 0.948, 0.952], "b": [0.940, 0.951, 0.943, 0.949],
            "c": [0.951, 0.950, 0.949, 0.950]}
    curves = {m: [curve([v], [1.0 - v]) for v in vs] for m, vs in accs.items()}
    seeds = {m: [0, 1, 2, 3] for m in accs}
    claims = [Claim("p", "a beats b", "a", "b"), Claim("p", "c beats b", "c", "b"),
              Claim("p", "a matches c", "a", "c", direction="matches", margin=0.5)]
    results = evaluate_claims(claims, curves, epochs=1, seeds=seeds)
    raw = [stats.ttest_rel([100 * x for x in accs[c.a]], [100 * x for x in accs[c.b]]).pvalue
           for c in claims[:2]]
    assert [r.p for r in results[:2]] == pytest.approx(raw)
    assert all(r.paired for r in results)
    adjusted = holm([r.p for r in results])
    assert [r.p_adjusted for r in results] == pytest.approx(adjusted)
    for r in results:
        if r.p_adjusted >= 0.05:  # inconclusive: detectable effect and seeds needed reported
            assert r.verdict == "inconclusive"
            assert r.detectable == pytest.approx(detectable_effect(r.sd, 4))
            assert r.seeds_needed == seeds_needed(abs(r.diff) if r.claim.direction == "better"
                                                  else 0.5 - abs(r.diff), r.sd)
        else:
            assert r.verdict in ("supported", "contradicted") and math.isnan(r.detectable)


def test_an_unadjusted_success_can_be_inconclusive_after_adjustment():
    base = [0.90, 0.91, 0.92, 0.93, 0.94]
    curves = {"b": [curve([v], [1]) for v in base]}
    seeds = {"b": list(range(5))}
    claims = []
    for k in range(20):  # one real but small effect among many nulls
        name = f"m{k}"
        noise = [0.004, -0.003, 0.005, -0.004, 0.002] if k else [0.008, 0.002, 0.006, 0.001, 0.004]
        curves[name] = [curve([v + e], [1]) for v, e in zip(base, noise)]
        seeds[name] = list(range(5))
        claims.append(Claim("p", f"{name} beats b", name, "b"))
    results = evaluate_claims(claims, curves, epochs=1, seeds=seeds)
    first = results[0]
    assert first.p < 0.05 and first.p_adjusted == pytest.approx(holm([r.p for r in results])[0])
    assert first.p_adjusted >= 0.05 and first.verdict == "inconclusive"
    assert first.detectable > first.diff > 0 and first.seeds_needed > 5


def test_a_claim_whose_arm_failed_is_unstable_and_leaves_the_family():
    accs = {"a": [0.95, 0.961, 0.94], "b": [0.90, 0.91, 0.89], "c": [0.10, 0.10, 0.11]}
    curves = {m: [curve([v], [1.0 - v]) for v in vs] for m, vs in accs.items()}
    seeds = {m: [0, 1, 2] for m in accs}
    claims = [Claim("p", "a beats b", "a", "b"), Claim("p", "c beats b", "c", "b")]
    results = evaluate_claims(claims, curves, epochs=1, seeds=seeds,
                              troubles={"c": "3 of 3 runs at chance level"})
    good, bad = results
    assert bad.verdict == "unstable" and "c: 3 of 3 runs at chance level" in bad.note
    assert math.isnan(bad.p) and bad.diff == pytest.approx(10.333 - 90.0, abs=1e-3)
    # the family holds one claim: its adjusted p is its raw p
    assert good.p_adjusted == pytest.approx(good.p) and good.verdict == "supported"
