"""The claims of the five papers that a benchmark task can test, and their verdicts.

A :class:`Claim` compares method ``a`` with method ``b`` on one metric read at a point of the
budget (``at=1.0``: the final epoch; ``at=0.1``: the epoch at 10 % of it). The measured quantity
is the *improvement* of ``a`` over ``b``: accuracy difference in percentage points
(``a - b``) or NLL difference (``b - a``), so positive always favours ``a``.

Runs with the same seed share the initial weights and the batch order, so the comparison is
paired over the seeds both methods ran (:func:`polyak.bench.stats.paired`: ``ttest_rel`` on the
per-seed differences, with its 95 % CI); without two common seeds it falls back to Welch's test.
Each claim has one p-value: ``better`` claims test "no difference" (two-sided); ``matches``
claims (within ``margin``) the paired TOST when the observed gain is inside the margin (evidence
for the match) and the one-sided test of "inside the margin" when it is outside (evidence
against). :func:`evaluate_claims` adjusts the p-values of the whole table (Holm by default,
or Benjamini-Hochberg) and decides at ``alpha`` = 0.05 on the adjusted p:

- ``better``: adjusted p < alpha -> supported if the gain is positive, contradicted if negative;
- ``matches``: adjusted p < alpha -> supported if the gain is inside the margin, contradicted if
  outside;
- otherwise inconclusive, with the smallest effect the run could detect (power 0.8 at its
  number of pairs and the observed spread of the differences, two-sided alpha = 0.05,
  unadjusted) and the seeds the observed effect would need; "not run" when either method has
  no finished runs; "unstable" when an arm diverged or collapsed to chance level on some seeds
  (the report says which and how many; no test, outside the multiplicity family).

The claims themselves, with both arms built from the protocol of the paper that makes them, the
paper's own figure and the settings the paper held equal, are data in
:mod:`polyak.bench.protocols` (one module per paper).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from scipy.stats import t as t_dist

from polyak.bench import stats

__all__ = ["Claim", "ClaimResult", "verdict", "evaluate_claim", "evaluate_claims",
           "run_value", "ALPHA"]

ALPHA = 0.05
ADJUSTMENTS = {"holm": stats.holm, "bh": stats.benjamini_hochberg}

_METRICS = {"test_acc": "higher", "test_loss": "lower"}


@dataclass(frozen=True)
class Claim:
    """``a`` is better than / matches ``b`` on ``metric`` read at fraction ``at`` of the budget.

    ``figure``: the paper's own result for the comparison (shown beside the verdict);
    ``held_equal``: the settings the paper held equal between the two arms (``"schedule"``,
    ``"weight_decay"``, ``"lr"``, ``"budget"``; checked by the tests from the built arms);
    ``source``: the quote it rests on; ``protocol``: the paper protocol it belongs to;
    ``loss_unit``: the unit of a loss metric ("nats" for the NLL; a user's task whose metric
    is its own loss reads every claim on it, in "loss" units: :mod:`polyak.bench.own_report`)."""

    paper: str
    text: str
    a: str
    b: str
    metric: str = "test_acc"
    direction: str = "better"
    margin: float = 0.0
    at: float = 1.0
    figure: str = ""
    held_equal: tuple[str, ...] = ()
    source: Any = None
    protocol: str = ""
    loss_unit: str = "nats"

    def __post_init__(self) -> None:
        if self.metric not in _METRICS:
            raise ValueError(f"Invalid metric: {self.metric!r} (allowed: {', '.join(_METRICS)})")
        if self.direction not in ("better", "matches"):
            raise ValueError(f"Invalid direction: {self.direction!r} "
                             "(allowed: 'better', 'matches')")
        if not (math.isfinite(self.margin) and self.margin >= 0):
            raise ValueError(f"Invalid margin: {self.margin!r} (allowed: a finite number >= 0)")
        if self.direction == "matches" and self.margin == 0:
            raise ValueError("Invalid margin: 0 (a 'matches' claim needs a margin > 0)")
        if not 0 < self.at <= 1:
            raise ValueError(f"Invalid at: {self.at!r} (allowed: 0 < at <= 1)")

    @property
    def unit(self) -> str:
        return "pp" if self.metric == "test_acc" else self.loss_unit


@dataclass(frozen=True)
class ClaimResult:
    """A claim's measurement: gain of ``a`` [CI], raw and adjusted p, verdict, and (when it is
    inconclusive) the detectable effect and the seeds the observed gain would need."""

    claim: Claim
    n_a: int
    n_b: int
    diff: float
    low: float
    high: float
    p: float
    verdict: str
    paired: bool = False
    sd: float = math.nan           # spread of the per-seed differences (paired)
    p_adjusted: float = math.nan
    detectable: float = math.nan   # smallest gain detectable with power 0.8
    seeds_needed: int | None = None
    note: str = ""                 # why a claim is "unstable" (an arm diverged or collapsed)


def verdict(low: float, high: float, direction: str, margin: float = 0.0) -> str:
    """"supported" / "contradicted" / "inconclusive" from the CI ``[low, high]`` of one gain
    alone (no multiplicity control; the table's verdicts come from :func:`evaluate_claims`)."""
    if math.isnan(low) or math.isnan(high):
        return "inconclusive"
    if direction == "better":
        if low > 0:
            return "supported"
        if high < 0:
            return "contradicted"
        return "inconclusive"
    if direction == "matches":
        if -margin <= low and high <= margin:
            return "supported"
        if low > margin or high < -margin:
            return "contradicted"
        return "inconclusive"
    raise ValueError(f"Invalid direction: {direction!r} (allowed: 'better', 'matches')")


def run_value(curve: Sequence[Mapping[str, float]], epochs: int, metric: str, at: float
              ) -> float:
    """``metric`` of one run at epoch ``round(at * epochs)`` (1-based; the last one recorded if
    the run stopped earlier). Accuracy in percent."""
    index = min(max(1, round(at * epochs)), len(curve)) - 1
    value = curve[index][metric]
    value = math.nan if value is None else float(value)
    return 100.0 * value if metric == "test_acc" else value


def _values(runs: Sequence[Sequence[Mapping[str, float]]], seeds: Sequence[int] | None,
            claim: Claim, epochs: int, side: str) -> dict[Any, float]:
    """Run values keyed by seed (unknown seeds get keys no other method shares)."""
    keys = list(seeds) if seeds is not None else [(side, i) for i in range(len(runs))]
    return {k: run_value(c, epochs, claim.metric, claim.at) for k, c in zip(keys, runs)}


def _claim_p(claim: Claim, gain_a: list[float], gain_b: list[float], test: stats.Test) -> float:
    """The claim's p-value (see the module docstring)."""
    if claim.direction == "better" or not test.paired:
        return test.p
    if abs(test.diff) < claim.margin:
        return stats.tost_paired(gain_a, gain_b, claim.margin)
    if test.n_a < 2 or not test.sd > 0:  # too few pairs, or no spread to test against
        return math.nan
    t = (abs(test.diff) - claim.margin) / (test.sd / math.sqrt(test.n_a))
    return float(t_dist.sf(t, test.n_a - 1))


def evaluate_claim(claim: Claim, curves: Mapping[str, Sequence[Sequence[Mapping[str, float]]]],
                   epochs: int, confidence: float = 0.95,
                   seeds: Mapping[str, Sequence[int]] | None = None) -> ClaimResult:
    """One claim from the finished runs' curves of each method (one list per run), paired over
    the common ``seeds`` (method -> the seed of each curve) when given; the verdict uses the
    claim's raw p (:func:`evaluate_claims` adjusts across a table)."""
    runs_a, runs_b = curves.get(claim.a, []), curves.get(claim.b, [])
    if not runs_a or not runs_b:
        nan = math.nan
        return ClaimResult(claim, len(runs_a), len(runs_b), nan, nan, nan, nan, "not run")
    a = _values(runs_a, (seeds or {}).get(claim.a), claim, epochs, "a")
    b = _values(runs_b, (seeds or {}).get(claim.b), claim, epochs, "b")
    common = sorted(set(a) & set(b))
    if len(common) >= 2:
        va, vb = [a[k] for k in common], [b[k] for k in common]
    else:
        va, vb = list(a.values()), list(b.values())
    gain_a, gain_b = (va, vb) if claim.metric == "test_acc" else (vb, va)
    test = (stats.paired(gain_a, gain_b, confidence) if len(common) >= 2
            else stats.welch(gain_a, gain_b, confidence))
    p = _claim_p(claim, gain_a, gain_b, test)
    sd = test.sd if test.paired else math.hypot(stats.mean_std(gain_a)[1],
                                                 stats.mean_std(gain_b)[1])
    result = ClaimResult(claim, len(a), len(b), test.diff, test.low, test.high, p, "",
                         paired=test.paired, sd=sd)
    return _decide(result, p)


def _decide(result: ClaimResult, p_adjusted: float, alpha: float = ALPHA) -> ClaimResult:
    """The verdict at ``alpha`` on ``p_adjusted``; power figures for an inconclusive claim."""
    claim, diff = result.claim, result.diff
    verdict_ = "inconclusive"
    if not math.isnan(p_adjusted) and p_adjusted < alpha:
        if claim.direction == "better":
            verdict_ = "supported" if diff > 0 else "contradicted" if diff < 0 else verdict_
        else:
            verdict_ = "supported" if abs(diff) < claim.margin else "contradicted"
    detectable, needed = math.nan, None
    n = min(result.n_a, result.n_b)
    if verdict_ == "inconclusive" and n >= 2:
        detectable = stats.detectable_effect(result.sd, n)
        target = abs(diff) if claim.direction == "better" else abs(claim.margin - abs(diff))
        needed = stats.seeds_needed(target, result.sd)
    return replace(result, p_adjusted=p_adjusted, verdict=verdict_, detectable=detectable,
                   seeds_needed=needed)


def evaluate_claims(claims: Sequence[Claim],
                    curves: Mapping[str, Sequence[Sequence[Mapping[str, float]]]], epochs: int,
                    seeds: Mapping[str, Sequence[int]] | None = None, adjust: str = "holm",
                    alpha: float = ALPHA, troubles: Mapping[str, str] | None = None
                    ) -> list[ClaimResult]:
    """Every claim of a table, its p-value adjusted across the table (``"holm"`` or ``"bh"``)
    and decided on the adjusted p at ``alpha``.

    ``troubles`` (method -> what went wrong, e.g. "3 of 10 runs diverged") marks the claims
    comparing such a method "unstable": the arm failed on this task, which the report says in
    words; its gain is shown but it gets no p-value and leaves the multiplicity family."""
    if adjust not in ADJUSTMENTS:
        raise ValueError(f"Invalid adjust: {adjust!r} (allowed: {', '.join(ADJUSTMENTS)})")
    troubles = troubles or {}
    raw = []
    for c in claims:
        res = evaluate_claim(c, curves, epochs, seeds=seeds)
        found = [f"{m}: {troubles[m]}" for m in dict.fromkeys((c.a, c.b)) if m in troubles]
        if found and res.verdict != "not run":
            res = replace(res, p=math.nan, verdict="unstable", note="; ".join(found))
        raw.append(res)
    adjusted = ADJUSTMENTS[adjust]([r.p for r in raw])
    return [r if r.verdict in ("not run", "unstable") else _decide(r, p, alpha)
            for r, p in zip(raw, adjusted)]
