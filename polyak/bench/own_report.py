"""The parts of the report that a user's own task adds (:mod:`polyak.bench.user_tasks`).

- **Recommendation** (:func:`recommendation`), at the top of the task's section: the method with
  the best mean final validation score of the weights it reports (accuracy, or the loss when
  it is the task's metric), over the methods none of whose runs diverged; its final test score
  (mean ± std over seeds); and the runner-up on validation compared with it on the test set,
  paired over the common seeds (:func:`polyak.bench.stats.paired`; Welch's test without two
  common seeds): the gain of the best over the runner-up with its 95 % CI and p, and for an
  undecided comparison the smallest gain the seeds could detect (power 0.8) and the seeds the
  observed gain would need. Validation chooses, the test set measures: the test split plays no
  part in the choice.
- **The papers' comparisons on your task**: the claims section keeps every claim (a claim
  compares two methods, so it can be run on any task), each arm built from its paper's
  protocol scaled to the task's budget, and says so.
- **A loss metric** (:func:`claims_on_loss`): on a task whose metric is its loss, a claim on
  test accuracy is read on the test loss (lower is better: the gain of A is B's loss minus
  A's), and every loss claim is in the task's loss units ("loss"); a claim that A *matches* B
  within a margin in accuracy points is not read (the margin has no meaning on a loss).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from polyak.bench import stats
from polyak.bench.claims import Claim

__all__ = ["claims_on_loss", "recommendation", "CLAIMS_TITLE", "claims_intro", "final_score"]

CLAIMS_TITLE = "The papers' comparisons on your task"


def claims_on_loss(claims: Sequence[Claim]) -> tuple[list[Claim], list[Claim]]:
    """(the claims read on the task's loss, the claims not read: accuracy-margin matches)."""
    kept, dropped = [], []
    for claim in claims:
        if claim.direction == "matches" and claim.metric == "test_acc":
            dropped.append(claim)
        else:
            kept.append(replace(claim, metric="test_loss", loss_unit="loss"))
    return kept, dropped


def claims_intro(metric: str, dropped: Sequence[Claim]) -> list[str]:
    """The paragraph that opens the claims section of a user's task."""
    lines = ["Each paper claims that one method beats (or matches) another: a comparison of "
             "methods, so it can be run on any task. Here each runs on yours, with its "
             "paper's schedules, averaging starts and phases scaled to your budget; the paper's "
             "own result is from its own task: a reference, not a prediction.", ""]
    if metric == "loss":
        lines += ["Your task's metric is its loss: claims stated on test accuracy are read on "
                  "the test loss (lower is better; the gain of A is B's loss minus A's, in the "
                  "loss's units)."
                  + (f" Not read: {'; '.join(c.text for c in dropped)} (a margin in accuracy "
                     "points has no meaning on a loss)." if dropped else ""), ""]
    return lines


def final_score(curve: Sequence[Any], split: str, metric: str) -> float:
    """A run's final ``split`` ("val"/"test") score: accuracy in %, or the loss."""
    value = curve[-1][f"{split}_{'acc' if metric == 'accuracy' else 'loss'}"]
    if value is None:
        return math.nan
    return 100.0 * value if metric == "accuracy" else float(value)


def _fmt(value: float, metric: str) -> str:
    return f"{value:.2f} %" if metric == "accuracy" else f"{value:.4g}"


def _pm(values: list[float], metric: str) -> str:
    """Mean ± std over seeds (the std only with two or more)."""
    mean, std = stats.mean_std(values)
    if metric == "accuracy":
        return f"{mean:.2f}" + ("" if math.isnan(std) else f" ± {std:.2f}") + " %"
    return f"{mean:.4g}" + ("" if math.isnan(std) else f" ± {std:.2g}")


def _scores(rep: Any, split: str) -> dict[str, dict[Any, float]]:
    return {m: {s: final_score(c, split, rep.metric) for s, c in zip(rep.seeds[m], curves)}
            for m, curves in rep.curves.items() if curves}


def _certainty(test: Any, n: int, unit: str, digits: int) -> str:
    """How sure the comparison is, in words."""
    ci = "—" if math.isnan(test.low) else f"[{test.low:+.{digits}f}, {test.high:+.{digits}f}]"
    how = f"paired over {n} seeds" if test.paired else f"unpaired (Welch), n={test.n_a}/{test.n_b}"
    text = f"{test.diff:+.{digits}f} {unit}, 95% CI {ci}, p = "
    text += "—" if math.isnan(test.p) else f"{test.p:.3g}"
    text += f", {how}"
    if math.isnan(test.p):
        return (f"{text}: too few seeds, or no spread between them, to test it (run more "
                "seeds: --seeds N).")
    if test.p < 0.05:
        verdict = "the best is better on test too" if test.diff > 0 else \
            "but on test the runner-up is better"
        return f"{text}: {verdict}."
    extra = ""
    if test.paired and n >= 2 and test.sd > 0:
        detectable = stats.detectable_effect(test.sd, n)
        needed = stats.seeds_needed(abs(test.diff), test.sd)
        if not math.isnan(detectable):
            extra = f" (the smallest gain {n} seeds detect here: {detectable:.{digits}f} {unit}"
            extra += "" if needed is None else f"; the observed gain would need {needed} seeds"
            extra += ")"
    return f"{text}: not distinguishable at these seeds{extra}; either is a sound choice."


def recommendation(rep: Any) -> list[str]:
    """The recommendation's Markdown lines for a task report (see the module)."""
    metric, higher = rep.metric, rep.metric == "accuracy"
    unit, digits = ("pp", 2) if higher else ("loss", 4)
    name = "accuracy" if higher else "loss"
    unstable = {r.method for r in rep.rows if r.diverged}
    val, test = _scores(rep, "val"), _scores(rep, "test")
    means = {m: stats.mean_std(list(v.values()))[0] for m, v in val.items() if m not in unstable}
    ranked = sorted((m for m in means if not math.isnan(means[m])),
                    key=lambda m: (-means[m] if higher else means[m], m))
    lines = ["### Recommendation", ""]
    if not ranked:
        return lines + ["No method finished its runs without diverging: no recommendation.", ""]
    best = ranked[0]
    lines.append(f"- **Use `{best}`**: the best mean final validation {name} "
                 f"({_fmt(means[best], metric)}, {len(val[best])} seeds); its test {name}: "
                 f"{_pm(list(test[best].values()), metric)}.")
    if len(ranked) > 1:
        runner = ranked[1]
        a, b = test[best], test[runner]
        common = sorted(set(a) & set(b), key=str)
        gain_a, gain_b = ([a[s] for s in common], [b[s] for s in common]) if len(common) >= 2 \
            else (list(a.values()), list(b.values()))
        if not higher:
            gain_a, gain_b = gain_b, gain_a  # a lower loss is a gain
        test_ = stats.paired(gain_a, gain_b) if len(common) >= 2 else stats.welch(gain_a, gain_b)
        lines.append(f"- Runner-up on validation: `{runner}` ({_fmt(means[runner], metric)}; "
                     f"test {_pm(list(b.values()), metric)}). Gain of `{best}` over it on the "
                     "test set: " + _certainty(test_, len(common), unit, digits))
    if unstable:
        lines.append(f"- Not considered (some runs diverged): {', '.join(sorted(unstable))}.")
    lines.append("- Validation chooses, the test set measures; p is unadjusted (one comparison).")
    return lines + [""]
