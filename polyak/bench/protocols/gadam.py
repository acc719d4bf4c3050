"""Granziol, Wan et al., "Beyond SGD: Iterate Averaged Adaptive Gradient Methods" (Gadam).

What the paper ran (Sec. 5, App. A.2, B.2): batch 128, 300 epochs on CIFAR; the schedule of
eq. 12 for every method without iterate averaging (IA) and eq. 13 (to 161 of 300, then constant)
for the IA ones; only the base optimizers tuned, the IA ones reusing their base's values: SGD's
lr from {0.001, 0.01, 0.1}, Padam at SGD's lr, AdamW at its default lr 0.001 (not tuned), then
each base's weight decay in [1e-4, 1e-3] (decoupled decay: the same range scaled by the initial
lr); averaging once per epoch. GadamAuto: a flat lr, averaging started and training terminated
by a patience of 10 epochs; Gadam + Lookahead: Lookahead until epoch 161, IA after.
"""

from __future__ import annotations

from polyak.bench.claims import Claim
from polyak.bench.protocols._model import Arm, PerLr, Plan, Protocol, Quote

KEY = "gadam"
PAPER = "Granziol et al. (Gadam)"

TUNE_BASES = Quote("App. B.2", "we tune the base optimisers (i.e. SGD, Adam(W), Padam(W)) only")
SGD_GRID = Quote("App. B.2", "For SGD, we use a base learning rate of 0.1 and use a grid "
                 "searched initial learning rates in the range of")
PADAM_LR = Quote("App. B.2", "use the same learning rate for Padam")
ADAMW_LR = Quote("App. B.2", "For Adam(W), we simply use the default initial learning rate of "
                 "0.001")
NO_LR = Quote("Sec. 5", "we do not experiment on learning rates that vary from the base "
              "optimiser defaults")
WD_AFTER = Quote("App. B.2", "After the best learning rate has been identified, we conduct a "
                 "further search on the weight decay")
WD_SCALED = Quote("App. B.2", "same range for the weight decay scaled by initial learning rate")
LINEAR = Quote("App. B.2", "For all experiments without IA, we use the following learning rate "
               "schedule")
BATCH = Quote("App. B.2", "use a batch size of 128 for all experiments conducted")
EPOCH = Quote("App. B.2", "we average once per epoch")
AUTO = Quote("App. A.2", "We use a patience of 10 for both the determination of the averaging "
             "activation and early termination.")
FLAT = Quote("App. A.2", "For all experiments, we simply use a flat learning rate schedule.")
LOOKAHEAD = Quote("Suppl., 'Gadam and Lookahead'", "by using Lookahead before the 161st epoch "
                  "where we start IA, and switching to IA after the starting point")

_WD = (1e-4, 2.5e-4, 5e-4, 1e-3)                 # [1e-4, 1e-3], 2.5e-4 the paper's AdamW value
_SGD_PLAN = Plan(({"lr": (1e-3, 1e-2, 1e-1)}, {"weight_decay": _WD}),
                 text="lr in {0.001, 0.01, 0.1}, then weight decay in [1e-4, 1e-3]")
_DECOUPLED = {"weight_decay": tuple(PerLr(v) for v in _WD)}
_ADAMW_PLAN = Plan((_DECOUPLED,), text="lr 0.001 fixed; decoupled weight decay x lr in "
                   "[1e-4, 1e-3]")
_PADAM_PLAN = Plan((_DECOUPLED,), f"sgdm@{KEY}", ("lr",),
                   text="SGD's tuned lr; then decoupled weight decay x lr in [1e-4, 1e-3]")


def _shares(arm: str) -> Plan:
    return Plan(shares=arm, text=f"{arm}'s tuned values (IA optimizers reuse their base's)")


_SGD_SOURCES = {"schedule": LINEAR, "plan": SGD_GRID, "weight_decay": WD_AFTER, "batch": BATCH}
_ADAMW_SOURCES = {"lr": ADAMW_LR, "schedule": LINEAR, "weight_decay": WD_SCALED}

ARMS = (
    Arm(f"sgdm@{KEY}", "sgdm", {"schedule": "linear"}, _SGD_PLAN,
        "Momentum SGD on Gadam eq. 12, lr then weight decay tuned (Gadam App. B.2)",
        _SGD_SOURCES),
    Arm("swa", "swa", {}, _shares(f"sgdm@{KEY}"), "", {"plan": TUNE_BASES, "avg_start": EPOCH},
        baseline=f"sgdm@{KEY}"),
    Arm(f"adamw@{KEY}", "adamw", {"lr": 1e-3}, _ADAMW_PLAN,
        "AdamW at its default lr 1e-3 on Gadam eq. 12, decoupled weight decay tuned",
        {**_ADAMW_SOURCES, "plan": NO_LR}, baseline=f"sgdm@{KEY}"),
    Arm("gadam", "gadam", {"lr": 1e-3}, _shares(f"adamw@{KEY}"), "",
        {"plan": TUNE_BASES, "lr": ADAMW_LR}, baseline=f"adamw@{KEY}"),
    Arm(f"padam@{KEY}", "padam", {}, _PADAM_PLAN,
        "Padam (partial 1/8, AMSGrad) at SGD's tuned lr on eq. 12, decoupled weight decay tuned",
        {"lr": PADAM_LR, "schedule": LINEAR, "weight_decay": WD_SCALED},
        baseline=f"adamw@{KEY}"),
    Arm("gadamx", "gadamx", {}, _shares(f"padam@{KEY}"), "", {"plan": TUNE_BASES},
        baseline=f"padam@{KEY}"),
    Arm("gadam-auto", "gadam-auto", {"lr": 1e-3}, _shares(f"adamw@{KEY}"), "",
        {"patience": AUTO, "schedule": FLAT}, baseline="gadam"),
    Arm("gadam-lookahead", "gadam-lookahead", {"lr": 1e-3}, _shares(f"adamw@{KEY}"), "",
        {"avg_start": LOOKAHEAD}, baseline="gadam"),
)

_BASE_IA = ("weight_decay", "lr", "budget")   # an IA optimizer and its base: the same values
CLAIMS = (
    Claim(PAPER, "Gadam beats AdamW", "gadam", f"adamw@{KEY}",
          figure="75.73 vs 73.26 % accuracy (Table 2, VGG-16, CIFAR-100)", held_equal=_BASE_IA,
          source=TUNE_BASES, protocol=KEY),
    Claim(PAPER, "Gadam beats tuned momentum SGD", "gadam", f"sgdm@{KEY}",
          figure="75.73 vs 74.15 % accuracy (Table 2, VGG-16, CIFAR-100)",
          held_equal=("budget",), source=SGD_GRID, protocol=KEY),
    Claim(PAPER, "GadamX beats SWA", "gadamx", "swa",
          figure="76.85 vs 74.57 % accuracy (Table 2, VGG-16, CIFAR-100)",
          held_equal=("schedule", "lr", "budget"), source=PADAM_LR, protocol=KEY),
    Claim(PAPER, "GadamX beats Gadam", "gadamx", "gadam",
          figure="76.85 vs 75.73 % accuracy (Table 2, VGG-16, CIFAR-100)",
          held_equal=("schedule", "budget"), source=TUNE_BASES, protocol=KEY),
    Claim(PAPER, "GadamX beats its unaveraged base Padam", "gadamx", f"padam@{KEY}",
          figure="76.85 vs 74.56 % accuracy (Table 2, VGG-16, CIFAR-100)",
          held_equal=_BASE_IA, source=TUNE_BASES, protocol=KEY),
    Claim(PAPER, "SWA beats momentum SGD", "swa", f"sgdm@{KEY}",
          figure="74.57 vs 74.15 % accuracy (Table 2, VGG-16, CIFAR-100)",
          held_equal=_BASE_IA, source=TUNE_BASES, protocol=KEY),
    Claim(PAPER, "GadamAuto matches tuned Gadam (within 0.5 pp)", "gadam-auto", "gadam",
          direction="matches", margin=0.5,
          figure="75.39 vs 75.73 % accuracy (Tables 8 and 2, VGG-16, CIFAR-100)",
          held_equal=("weight_decay", "lr"), source=AUTO, protocol=KEY),
)

PROTOCOL = Protocol(
    key=KEY, paper=PAPER,
    title="Beyond SGD: Iterate Averaged Adaptive Gradient Methods (Gadam, GadamX)",
    ran=(
        "batch 128, 300 epochs (CIFAR); eq. 12 for the methods without IA, eq. 13 with "
        "averaging once per epoch from epoch 161 for SWA, Gadam, GadamX",
        "tuned: the bases only; SGD lr in {0.001, 0.01, 0.1}, Padam at SGD's lr, AdamW at "
        "lr 0.001 (fixed); then each base's weight decay in [1e-4, 1e-3] (decoupled: "
        "x the initial lr); SWA, Gadam, GadamX, GadamAuto reuse their base's values",
        "GadamAuto: flat lr, averaging start and early termination by a patience of 10",
        "Gadam + Lookahead: Lookahead (k 5, alpha 0.5) until epoch 161, IA after",
    ),
    deviations=(
        "budget: the task's epochs; averaging from 161/300 of them; GadamAuto's patience "
        "10/300 of the budget, at least 2 epochs",
        "batch: the task's (128 on the built-in tasks, as in the paper)",
        "weight-decay grid: {1e-4, 2.5e-4, 5e-4, 1e-3} (per unit lr for decoupled decay): the "
        "paper gives the range [1e-4, 1e-3], not its points",
        "GadamAuto's termination watches the averaged model's validation accuracy once "
        "averaging runs (the paper does not say which model it watches)",
        "Gadam + Lookahead: the switch to IA continues from Lookahead's slow weights (the "
        "weights Lookahead reports; the paper does not say)",
    ),
    arms=ARMS, claims=CLAIMS,
)
