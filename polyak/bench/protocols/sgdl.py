"""Wu et al., vanilla SGD with learning rates 10x larger than usual (SGDL; ICLR 2021 submission).

What the paper ran (Sec. 6.1, App. A.3.1, Table 1): BatchNorm networks without dropout, 150
epochs, batch 256, the lr divided by 10 at epochs 50 and 100 for every optimizer, weight decay
0.005 for SGD, SGDM and SGDL; SGD's and SGDM's lr chosen from {0.001, 0.01, 0.05, 0.1}; SGDL's
"more than 10 times larger than the best SGDM lr", picked from {1.0, 1.1, 1.2, 1.3} on CIFAR
(SGDM 0.1, or 0.05 for VGG16 on CIFAR-10) and 15x SGDM's 0.01 on the BatchNorm-free speech model.
"""

from __future__ import annotations

from polyak.bench.claims import Claim
from polyak.bench.protocols._model import Arm, LargeLr, Plan, Protocol, Quote

KEY = "sgdl"
PAPER = "Wu et al. (SGDL)"

SETUP = Quote("App. A.3.1", "BN (Ioffe & Szegedy, 2015) but without dropout")
BUDGET = Quote("App. A.3.1", "The models are trained for up to 150 epochs and minibatch size to "
               "256")
STEPS = Quote("App. A.3.1", "we use an annealing strategy to divide learning rate by 10 on 50 "
              "and 100 epochs")
GRID = Quote("App. A.3.1, Table 1", "SGDM {0.001, 0.01, 0.05, 0.1} η=0.9,γ=0.005")
SGDL_LR = Quote("App. A.3.1", "the learning rate is more than 10 times larger than the best "
                "SGDM lr, in our paper, we select it from {1.0, 1.1, 1.2, 1.3}")
SPEECH = Quote("App. A.3.2", "We choose 0.01 from {0.001, 0.01, 0.05, 0.1} as the best for SGDM "
               "and 0.15 for SGDL")
MATCH = Quote("Sec. 6.1", "has the same or even better performance in comparison to SGDM")
BEATS = Quote("Sec. 6.3", "outperforms vanilla SGD exceedingly")

_SETTINGS = {"schedule": "thirds", "weight_decay": 5e-3}
_SMALL = (1e-3, 1e-2, 5e-2, 1e-1)
_GRID = Plan(({"lr": _SMALL},), text="lr in {0.001, 0.01, 0.05, 0.1} (App. A.3.1, Table 1)")
_SOURCES = {"schedule": STEPS, "weight_decay": GRID, "lr": GRID, "budget": BUDGET,
            "network": SETUP}

ARMS = (
    Arm(f"sgd@{KEY}", "sgd", _SETTINGS, _GRID,
        "Plain SGD, /10 at 1/3 and 2/3, wd 5e-3, lr tuned on the small grid (SGDL App. A.3.1)",
        _SOURCES),
    Arm(f"sgdm@{KEY}", "sgdm", _SETTINGS, _GRID,
        "Momentum SGD (0.9), /10 at 1/3 and 2/3, wd 5e-3, lr tuned on the small grid",
        _SOURCES, baseline=f"sgd@{KEY}"),
    Arm("sgdl", "sgdl", _SETTINGS,
        Plan(({"lr": LargeLr((1.0, 1.1, 1.2, 1.3), (10.0, 12.0, 15.0))},), f"sgdm@{KEY}", (),
             text="lr >= 10x SGDM's tuned lr, from {1.0, ..., 1.3} (CIFAR) and 10, 12, 15x "
             "it (speech: 15x)"),
        "", {**_SOURCES, "lr": SGDL_LR, "plan": SPEECH}, baseline=f"sgdm@{KEY}"),
)

_SAME = ("schedule", "weight_decay", "budget")
CLAIMS = (
    Claim(PAPER, "Vanilla SGD with a large lr matches momentum SGD (within 0.5 pp)", "sgdl",
          f"sgdm@{KEY}", direction="matches", margin=0.5,
          figure="same or better than SGDM on CIFAR (Fig. 4); +0.5 pp on ImageNet32 (Fig. 5)",
          held_equal=_SAME, source=MATCH, protocol=KEY),
    Claim(PAPER, "Vanilla SGD with a large lr beats vanilla SGD tuned on the small grid",
          "sgdl", f"sgd@{KEY}", figure="'outperforms vanilla SGD exceedingly' (speech, Fig. 6)",
          held_equal=_SAME, source=BEATS, protocol=KEY),
)

PROTOCOL = Protocol(
    key=KEY, paper=PAPER,
    title="Vanilla SGD with learning rates 10x larger than usual (ICLR 2021 submission)",
    ran=(
        "VGG/ResNet/DenseNet with BatchNorm, no dropout; 150 epochs, batch 256",
        "every optimizer: lr /10 at epochs 50 and 100; SGD, SGDM, SGDL: weight decay 0.005",
        "SGD and SGDM: lr from {0.001, 0.01, 0.05, 0.1}; SGDL: >= 10x SGDM's best, from "
        "{1.0, 1.1, 1.2, 1.3} (speech: 15x SGDM's 0.01)",
    ),
    deviations=(
        "budget: the task's epochs, decayed at 1/3 and 2/3 of them, not 150",
        "batch: the task's 128, not 256 (the same for every arm)",
        "SGDL's grid: the paper's CIFAR values and 10, 12, 15x momentum SGD's tuned lr, those "
        ">= 10x it, so the rule holds whatever SGDM's lr is (the paper's values are 10-24x)",
    ),
    arms=ARMS, claims=CLAIMS,
)
