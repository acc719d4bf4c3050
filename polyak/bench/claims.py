"""The claims of the five papers that a benchmark task can test, and their verdicts.

A :class:`Claim` compares method ``a`` with method ``b`` on one metric read at a point of the
budget (``at=1.0``: the final epoch; ``at=0.1``: the epoch at 10 % of it). The measured quantity
is the *improvement* of ``a`` over ``b``: accuracy difference in percentage points
(``a - b``) or NLL difference (``b - a``), so positive always favours ``a``. Its 95 % Welch
confidence interval over seeds decides the verdict (:func:`verdict`):

- ``better``: CI entirely above 0 -> supported; entirely below 0 -> contradicted;
- ``matches`` (within ``margin``): CI inside ``[-margin, margin]`` -> supported; CI entirely
  outside it -> contradicted;
- otherwise inconclusive; "not run" when either method has no finished runs.

Sources: Kobayashi (PWA, Tables 1-3), Wu et al. (SGDL, Sec. 5: vanilla SGD with a large
learning rate about matches momentum SGD), Ida & Fujiwara (TSO-ALRA, Figs. 1-4: test loss falls
faster than Adam's/AMSGrad's/SGD's and ends lower than Adam's), Granziol et al. (Gadam, Sec. 5:
averaging improves every base; GadamX strongest), Nitanda et al. (averaged SGD/SAM table).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from polyak.bench.stats import welch

__all__ = ["Claim", "ClaimResult", "CLAIMS", "verdict", "evaluate_claim", "run_value"]

_METRICS = {"test_acc": "higher", "test_loss": "lower"}


@dataclass(frozen=True)
class Claim:
    """``a`` is better than / matches ``b`` on ``metric`` read at fraction ``at`` of the budget."""

    paper: str
    text: str
    a: str
    b: str
    metric: str = "test_acc"
    direction: str = "better"
    margin: float = 0.0
    at: float = 1.0

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
        return "pp" if self.metric == "test_acc" else "nats"


@dataclass(frozen=True)
class ClaimResult:
    claim: Claim
    n_a: int
    n_b: int
    diff: float
    low: float
    high: float
    p: float
    verdict: str


def verdict(low: float, high: float, direction: str, margin: float = 0.0) -> str:
    """"supported" / "contradicted" / "inconclusive" from the CI ``[low, high]`` of the gain."""
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


def evaluate_claim(claim: Claim, curves: Mapping[str, Sequence[Sequence[Mapping[str, float]]]],
                   epochs: int, confidence: float = 0.95) -> ClaimResult:
    """Verdict of ``claim`` from the finished runs' curves of each method (one list per run)."""
    runs_a, runs_b = curves.get(claim.a, []), curves.get(claim.b, [])
    if not runs_a or not runs_b:
        nan = math.nan
        return ClaimResult(claim, len(runs_a), len(runs_b), nan, nan, nan, nan, "not run")
    a = [run_value(c, epochs, claim.metric, claim.at) for c in runs_a]
    b = [run_value(c, epochs, claim.metric, claim.at) for c in runs_b]
    test = welch(a, b, confidence) if claim.metric == "test_acc" else welch(b, a, confidence)
    return ClaimResult(claim, len(a), len(b), test.diff, test.low, test.high, test.p,
                       verdict(test.low, test.high, claim.direction, claim.margin))


_PWA, _SGDL, _TSO = "Kobayashi (PWA)", "Wu et al. (SGDL)", "Ida & Fujiwara (TSO-ALRA)"
_GADAM, _ASGD = "Granziol et al. (Gadam)", "Nitanda et al. (averaged SGD)"

CLAIMS: tuple[Claim, ...] = (
    Claim(_PWA, "PWA beats step-decayed momentum SGD", "pwa", "sgdm"),
    Claim(_PWA, "PWA beats averaging at the end only (SWA)", "pwa", "swa"),
    Claim(_PWA, "PWA beats Lookahead", "pwa", "lookahead"),
    Claim(_PWA, "PWA on SGD beats AdaBound", "pwa", "adabound"),
    Claim(_PWA, "PWA improves constant-lr Adam (Table 3)", "pwa-adam", "adam"),
    Claim(_PWA, "PWA improves constant-lr AMSGrad (Table 3)", "pwa-amsgrad", "amsgrad"),
    Claim(_PWA, "PWA improves constant-lr AdaBound (Table 3)", "pwa-adabound", "adabound"),
    Claim(_SGDL, "Vanilla SGD with a large lr matches momentum SGD (within 0.5 pp)", "sgdl",
          "sgdm", direction="matches", margin=0.5),
    Claim(_SGDL, "Vanilla SGD with a large lr beats vanilla SGD with a small lr", "sgdl", "sgd"),
    Claim(_TSO, "TSO-ALRA's test loss falls faster than Adam's (NLL at 10 % of the budget)",
          "tso-alra", "adam", metric="test_loss", at=0.1),
    Claim(_TSO, "TSO-ALRA's test loss falls faster than AMSGrad's (NLL at 10 %)", "tso-alra",
          "amsgrad", metric="test_loss", at=0.1),
    Claim(_TSO, "TSO-ALRA's test loss falls faster than SGD's (NLL at 10 %)", "tso-alra",
          "sgdm", metric="test_loss", at=0.1),
    Claim(_TSO, "TSO-ALRA ends with a lower test loss than Adam", "tso-alra", "adam",
          metric="test_loss"),
    Claim(_GADAM, "Gadam beats AdamW", "gadam", "adamw"),
    Claim(_GADAM, "Gadam beats tuned momentum SGD", "gadam", "sgdm"),
    Claim(_GADAM, "GadamX beats SWA", "gadamx", "swa"),
    Claim(_GADAM, "GadamX beats Gadam", "gadamx", "gadam"),
    Claim(_GADAM, "GadamX beats its unaveraged base Padam", "gadamx", "padam"),
    Claim(_GADAM, "SWA beats momentum SGD", "swa", "sgdm"),
    Claim(_ASGD, "Averaged SGD with a larger lr beats SGD", "asgd", "sgdm"),
    Claim(_ASGD, "Averaged SAM beats SAM", "sam-avg", "sam"),
    Claim(_ASGD, "SAM beats SGD", "sam", "sgdm"),
)
