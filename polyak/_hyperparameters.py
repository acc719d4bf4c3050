"""What every recipe hyper-parameter may be: checked when a recipe is parsed and when it is built.

One entry per hyper-parameter name, whatever the recipe: ``momentum`` is in [0, 1) in ``sgdm``,
``sam`` and ``tso-alra`` alike. The ranges are at least torch's own (``torch.optim.SGD``/``Adam``:
lr, momentum, betas, weight decay) and the ones the paper's update needs to stay a contraction
(``momentum < 1``, ``beta < 1``, ``0 < gamma0 < 1``). A value that is NaN or infinite is refused
everywhere. The error names the hyper-parameter, the value and what is allowed, in the style of
the optimizers' own checks (``Invalid lr: nan (allowed: a finite number lr >= 0)``).

Private: the API is :func:`polyak.recipes.parse` / :meth:`polyak.recipes.Recipe.build`, which
call :func:`check_hyperparameters`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from numbers import Integral, Real
from typing import Any

from polyak._budget import SCHEDULES, ScheduleRule

__all__ = ["CHECKS", "check_hyperparameter", "check_hyperparameters"]


def _real(value: Any) -> float | None:
    """The value as a float when it is a real number (a one-element tensor counts), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, Real):
        return float(value)
    numel, item = getattr(value, "numel", None), getattr(value, "item", None)
    if callable(numel) and callable(item) and numel() == 1 and not value.is_complex():
        return float(item())
    return None


def _finite(low: float, high: float = math.inf, *, low_open: bool = False,
            high_open: bool = True) -> Callable[[Any], bool]:
    def ok(value: Any) -> bool:
        x = _real(value)
        if x is None or not math.isfinite(x):
            return False
        above = x > low if low_open else x >= low
        below = x < high if high_open else x <= high
        return above and below
    return ok


def _integer(low: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, Integral) and not isinstance(v, bool) and v >= low


def _one_of(*allowed: Any) -> Callable[[Any], bool]:
    return lambda v: not isinstance(v, bool) and any(v == a and type(v) is type(a)
                                                     for a in allowed)


def _schedule(value: Any) -> bool:
    return isinstance(value, ScheduleRule.__args__) or (isinstance(value, str)
                                                        and value in SCHEDULES)


def _boolean(value: Any) -> bool:
    return isinstance(value, bool)


_NONNEG = _finite(0.0)
_POSITIVE = _finite(0.0, low_open=True)
_UNIT_OPEN = _finite(0.0, 1.0)                                    # [0, 1)
_UNIT_HALF_OPEN = _finite(0.0, 1.0, low_open=True, high_open=False)   # (0, 1]
_BOOL = (_boolean, "True or False")

#: name -> (is the value allowed?, what is allowed).
CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "lr": (_NONNEG, "a finite number lr >= 0"),
    "momentum": (_UNIT_OPEN, "a number with 0 <= momentum < 1"),
    "weight_decay": (_NONNEG, "a finite number weight_decay >= 0"),
    "beta1": (_UNIT_OPEN, "a number with 0 <= beta1 < 1"),
    "beta2": (_UNIT_OPEN, "a number with 0 <= beta2 < 1"),
    "partial": (_finite(0.0, 0.5, low_open=True, high_open=False), "0 < partial <= 0.5"),
    "amsgrad": _BOOL, "decoupled": _BOOL, "amsbound": _BOOL, "adaptive": _BOOL,
    "final_lr": (_POSITIVE, "a finite number final_lr > 0"),
    "gamma": (_POSITIVE, "a finite number gamma > 0"),
    "k": (_integer(1), "an integer k >= 1"),
    "alpha": (_UNIT_HALF_OPEN, "a number with 0 < alpha <= 1"),
    "rho": (_NONNEG, "a finite number rho >= 0"),
    "switch_epoch": (_integer(1), "an integer switch_epoch >= 1"),
    "factor_decay": (_UNIT_HALF_OPEN, "a number with 0 < factor_decay <= 1"),
    "damping": (_NONNEG, "a finite number damping >= 0"),
    "inv_every": (_integer(1), "an integer inv_every >= 1"),
    "factor_every": (_integer(1), "an integer factor_every >= 1"),
    "factor_init": (_one_of("batches", "identity"), "'batches', 'identity'"),
    "warmup_fraction": (_finite(0.0, 1.0, high_open=False),
                        "a number with 0 <= warmup_fraction <= 1"),
    "warmup": (_NONNEG, "a finite number warmup >= 0 (epochs of linear lr warm-up)"),
    "avg_start": (_integer(0), "an integer avg_start >= 0 (an epoch)"),
    "avg_ratio": (_UNIT_HALF_OPEN, "a number with 0 < avg_ratio <= 1"),
    "ema_decay": (_UNIT_OPEN, "a number with 0 <= ema_decay < 1"),
    "ema_warmup": _BOOL,
    "budget": (_finite(0.0, 1.0, low_open=True, high_open=False),
               "the fraction of the epochs trained, 0 < budget <= 1"),
    "schedule": (_schedule, f"{', '.join(SCHEDULES)}, or a polyak._budget schedule rule"),
    "gamma0": (_finite(0.0, 1.0, low_open=True), "a number with 0 < gamma0 < 1"),
    "momentum_policy": (_one_of("keep", "reset"), "'keep', 'reset'"),
    "patience": (_integer(0), "an integer patience >= 0"),
}


def check_hyperparameter(name: str, value: Any) -> None:
    """Raise ``ValueError`` naming ``name``, ``value`` and what is allowed, unless allowed.
    A name without an entry in :data:`CHECKS` is left to the piece that takes it."""
    entry = CHECKS.get(name)
    if entry is not None and not entry[0](value):
        raise ValueError(f"Invalid {name}: {value!r} (allowed: {entry[1]})")


def check_hyperparameters(values: Mapping[str, Any]) -> None:
    """:func:`check_hyperparameter` for every item, in order."""
    for name, value in values.items():
        check_hyperparameter(name, value)
