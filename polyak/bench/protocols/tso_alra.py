"""Ida & Fujiwara, TSO-ALRA: block-diagonal (Kronecker-factored) F^(-1/2) preconditioning, then
plain SGD (Sec. V).

What the paper ran: every algorithm with batch 128 for 164 epochs, the lr divided by 10 at
epochs 81 and 122, no weight decay stated for any; plain SGD's lr from {1e-1, ..., 1e-4}; Adam's
and AMSGrad's lr from the same grid and beta1 from {0.9, 0.99} (0.99 chosen); TSO-ALRA's lr from
{1e-1, 1e-2, 1e-3} and its switch epoch from {5, 10, ..., 75}. It compares test-loss (NLL)
curves (Figs. 1-4): TSO-ALRA's falls faster than the others' and ends lower than Adam's and
AMSGrad's, which rise in the last phase.
"""

from __future__ import annotations

from polyak._recipe_parts import OfBudget
from polyak.bench.claims import Claim
from polyak.bench.protocols._model import Arm, Plan, Protocol, Quote

KEY = "tso-alra"
PAPER = "Ida & Fujiwara (TSO-ALRA)"

SETUP = Quote("Sec. V-A", "All algorithms used the mini-batch size of 128. The number of "
              "training epochs was 164. The learning rate was divided by 10 for 81 and 122 "
              "epochs.")
ADAM_GRID = Quote("Sec. V-A", "For Adam and AMSGrad, we tuned the hyper-parameters on {0.9, "
                  "0.99} using the coefficient of momentum")
SGD_GRID = Quote("Sec. V-A", "We also tuned the learning rate of plain SGD using")
TSO_GRID = Quote("Sec. V-A", "In TSO-ALRA, the learning rate and switchover point were tuned "
                 "using")
DAMPING = Quote("Sec. III-A", "is a small constant value such as")
NLL = Quote("Sec. V-A", "We measured the test loss (negative log likelihood for test data) to "
            "investigate the generalization performance.")
FASTER = Quote("Sec. V-B", "Our method reduced the test losses more rapidly than SGD, Adam and "
               "AMSGrad for all datasets and combinations.")
LOWER = Quote("Sec. V-B", "our method finally outperformed both of them")

_SETTINGS = {"schedule": "tso-alra", "weight_decay": 0.0}
_LRS = (1e-1, 1e-2, 1e-3, 1e-4)
_SOURCES = {"schedule": SETUP, "weight_decay": SETUP, "metric": NLL}
_SWITCH = tuple(OfBudget(k / 164, f"epoch {k} of the paper's 164") for k in range(5, 80, 5))
_ADAM_PLAN = Plan(({"lr": _LRS, "beta1": (0.9, 0.99)},),
                  text="lr in {1e-1, ..., 1e-4} x beta1 in {0.9, 0.99} (Sec. V-A)")


def _adam(name: str, label: str) -> Arm:
    return Arm(f"{name}@{KEY}", name, _SETTINGS, _ADAM_PLAN,
               f"{label}, /10 at 81 and 122 of 164 epochs, no weight decay, lr and beta1 tuned "
               "(TSO-ALRA Sec. V)", {**_SOURCES, "plan": ADAM_GRID}, baseline=f"sgd@{KEY}")


ARMS = (
    Arm(f"sgd@{KEY}", "sgd", _SETTINGS,
        Plan(({"lr": _LRS},), text="lr in {1e-1, ..., 1e-4} (Sec. V-A)"),
        "Plain SGD, /10 at 81 and 122 of 164 epochs, no weight decay, lr tuned (TSO-ALRA)",
        {**_SOURCES, "plan": SGD_GRID}),
    _adam("adam", "Adam"),
    _adam("amsgrad", "AMSGrad"),
    Arm("tso-alra", "tso-alra", {"schedule": "tso-alra", "damping": 1e-6},   # (no weight decay)
        Plan(({"lr": (1e-1, 1e-2, 1e-3), "switch_epoch": _SWITCH},),
             text="lr in {1e-1, 1e-2, 1e-3} x switch epoch in {5, 10, ..., 75} of 164"),
        "", {**_SOURCES, "plan": TSO_GRID, "damping": DAMPING}, baseline=f"sgd@{KEY}"),
)

_SAME = ("schedule", "weight_decay", "budget")


def _faster(b: str, label: str) -> Claim:
    return Claim(PAPER, f"TSO-ALRA's test loss falls faster than {label}'s (NLL at 10 % of the "
                 "budget)", "tso-alra", b, metric="test_loss", at=0.1,
                 figure="falls faster than SGD, Adam and AMSGrad on every dataset (Figs. 1-4; "
                 "curves, no numbers)", held_equal=_SAME, source=FASTER, protocol=KEY)


def _lower(b: str, label: str) -> Claim:
    return Claim(PAPER, f"TSO-ALRA ends with a lower test loss than {label}", "tso-alra", b,
                 metric="test_loss", figure=f"{label}'s test loss rises in the last phase, "
                 "TSO-ALRA's does not (Figs. 1-4; curves, no numbers)", held_equal=_SAME,
                 source=LOWER, protocol=KEY)


CLAIMS = (
    _faster(f"adam@{KEY}", "Adam"),
    _faster(f"amsgrad@{KEY}", "AMSGrad"),
    _faster(f"sgd@{KEY}", "plain SGD"),
    _lower(f"adam@{KEY}", "Adam"),
    _lower(f"amsgrad@{KEY}", "AMSGrad"),
)

PROTOCOL = Protocol(
    key=KEY, paper=PAPER,
    title="Switching from Block Diagonal Matrix Preconditioning to SGD (TSO-ALRA)",
    ran=(
        "every algorithm: batch 128, 164 epochs, lr /10 at epochs 81 and 122, no weight decay "
        "stated",
        "plain SGD: lr in {1e-1, ..., 1e-4}; Adam, AMSGrad: lr in {1e-1, ..., 1e-4} x beta1 in "
        "{0.9, 0.99} (0.99 chosen)",
        "TSO-ALRA: lr in {1e-1, 1e-2, 1e-3} x switch epoch in {5, 10, ..., 75}; damping 'such "
        "as 1e-6'",
        "compared: test NLL curves (Figs. 1-4)",
    ),
    deviations=(
        "budget: the task's epochs, decayed at 81/164 and 122/164 of them; switch epochs "
        "5..75 of 164 scaled to the budget",
        "batch: the task's (128 on the built-in tasks, as in the paper)",
        "'falls faster' is read as the test NLL at 10 % of the budget (the paper shows curves)",
        "K-FAC settings the paper does not give: factor average weight 0.05 per step (K-FAC's "
        "usual 0.95 decay), inverse roots 4 times per epoch (T_int), factors started from the "
        "first batches' statistics",
    ),
    arms=ARMS, claims=CLAIMS,
)
