"""Nitanda, Kikuchi, Maeda & Wu, "Why is Parameter Averaging Beneficial in SGD? An Objective
Smoothing Perspective" (poster).

What the paper reports (Sec. 4, its one table): on CIFAR-10/100 (ResNet-50, WRN-28-10,
PyramidNet), SGD and SAM at their usual step size "s", and their parameter averages at "s" and at
a larger step ("m" on CIFAR-10, "l" on CIFAR-100); it gives neither the step sizes, nor the
schedules, nor when averaging starts.
"""

from __future__ import annotations

from polyak.bench.claims import Claim
from polyak.bench.protocols._model import Arm, Plan, Protocol, Quote, Times

KEY = "nitanda"
PAPER = "Nitanda et al. (averaged SGD)"

LARGE = Quote("Sec. 4", "ASGD achieved high accuracy by using relatively large step-sizes.")
AVERAGE = Quote("Sec. 3", "Taking average of parameters during training")
SGD_S = "sgdm@gadam"          # SGD(s): the Gadam protocol's tuned momentum SGD (eq. 12)
ASGD_S = "swa"                # averaged SGD(s): SWA at that step size (eq. 13)

_S = Plan(shares=SGD_S, keys=("lr", "weight_decay"),
          text="s: momentum SGD's tuned lr and weight decay (the Gadam protocol's)")
_LARGER = Plan(({"lr": (Times(2.0), Times(4.0))},), SGD_S, ("weight_decay",),
               text="m or l: 2x or 4x s, chosen on validation (the poster's m on CIFAR-10, l "
               "on CIFAR-100)")

ARMS = (
    Arm("asgd", "asgd", {}, _LARGER, "", {"lr": LARGE, "plan": AVERAGE}, baseline=ASGD_S),
    Arm(f"sam@{KEY}", "sam", {"schedule": "linear"}, _S,
        "SAM (rho 0.05) on momentum SGD at step size s, Gadam eq. 12", {"lr": AVERAGE},
        baseline=SGD_S),
    Arm(f"sam-avg@{KEY}", "sam-avg", {"lr": 0.1}, _S,   # s; tuning sets it
        "Averaged SAM at step size s (SWA's eq. 13 and averaging start)", {"plan": AVERAGE},
        baseline=f"sam@{KEY}"),
    Arm("sam-avg", "sam-avg", {}, _LARGER, "", {"lr": LARGE}, baseline=f"sam-avg@{KEY}"),
)

_IA = ("weight_decay", "budget")
CLAIMS = (
    Claim(PAPER, "Averaged SGD with a larger step beats averaged SGD at the usual one", "asgd",
          ASGD_S, figure="84.23 vs 83.13 % accuracy (WRN-28-10, CIFAR-100: l vs s)",
          held_equal=("schedule", *_IA), source=LARGE, protocol=KEY),
    Claim(PAPER, "Averaged SGD with a larger step beats SGD", "asgd", SGD_S,
          figure="84.23 vs 81.81 % accuracy (WRN-28-10, CIFAR-100)", held_equal=_IA,
          source=LARGE, protocol=KEY),
    Claim(PAPER, "Averaged SAM beats SAM at the same step", f"sam-avg@{KEY}", f"sam@{KEY}",
          figure="84.09 vs 83.80 % accuracy (WRN-28-10, CIFAR-100; CIFAR-10: 97.21 vs 97.14)",
          held_equal=("lr", *_IA), source=AVERAGE, protocol=KEY),
    Claim(PAPER, "Averaged SAM with a larger step beats averaged SAM at the usual one",
          "sam-avg", f"sam-avg@{KEY}", figure="84.55 vs 84.09 % (WRN-28-10, CIFAR-100; "
          "CIFAR-10: 97.20 vs 97.21, m vs s)", held_equal=("schedule", *_IA), source=LARGE,
          protocol=KEY),
    Claim(PAPER, "Averaged SAM with a larger step beats SAM", "sam-avg", f"sam@{KEY}",
          figure="84.55 vs 83.80 % accuracy (WRN-28-10, CIFAR-100)", held_equal=_IA,
          source=LARGE, protocol=KEY),
    Claim(PAPER, "SAM beats SGD", f"sam@{KEY}", SGD_S,
          figure="83.80 vs 81.81 % accuracy (WRN-28-10, CIFAR-100)",
          held_equal=("schedule", "lr", *_IA), source=AVERAGE, protocol=KEY),
)

PROTOCOL = Protocol(
    key=KEY, paper=PAPER,
    title="Why is Parameter Averaging Beneficial in SGD? An Objective Smoothing Perspective",
    ran=(
        "SGD and SAM at their usual step size s; their averages at s and at a larger step "
        "(m on CIFAR-10, l on CIFAR-100)",
        "not given: the step sizes, schedules, weight decay, SAM's rho, when averaging starts",
    ),
    deviations=(
        "everything the poster does not give is the SWA code's protocol, as the Gadam paper "
        "runs it: s is momentum SGD's tuned lr and weight decay (eq. 12), the averages follow "
        "eq. 13 with averaging once per epoch from 161/300 of the budget (Nitanda's theorem "
        "averages every iterate from the start; its experiments do not say)",
        "m and l: 2x and 4x s, the larger step chosen on the validation split",
        "SAM's rho 0.05 (the SAM authors' CIFAR-10 value; 0.10 on CIFAR-100)",
        "averaged SGD at s is SWA: its claim against SGD is the Gadam protocol's 'SWA beats "
        "momentum SGD' (same arms, not repeated here)",
    ),
    arms=ARMS, claims=CLAIMS, uses=(SGD_S, ASGD_S),
)
