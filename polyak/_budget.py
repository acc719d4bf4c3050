"""Defaults that depend on the training budget: rules resolved for a run's epochs and steps.

A paper states its settings for its own budget (PWA: phases of 80/40/40 of 160 epochs; Gadam:
averaging from epoch 161 of 300; TSO-ALRA: an inverse root every ``T_int`` steps of a 391-step
epoch). polyak scales them to a run's budget by one rule: **epoch counts and phase boundaries
are fixed fractions of the budget, step counts fixed fractions of an epoch, and per-epoch
factors follow the paper's own formula** (PWA's ``gamma = gamma0^(80/T_p)`` stays a formula of
the phase length). Each rule is a frozen value that prints as its formula (``polyak list``):

- :class:`OfBudget`: an epoch count ``round(fraction * epochs)``;
- :class:`PerEpoch`: a step count ``round(fraction * steps_per_epoch)``;
- :class:`WindowPerStep`: a per-step EMA weight whose window is a fixed fraction of an epoch;
- the learning-rate shapes :class:`Steps` (step decay at fixed fractions of the budget),
  :class:`Linear` (Gadam eq. 12), :class:`SWALinear` (Gadam eq. 13: the averaging schedule) and
  :class:`Constant`, named in :data:`SCHEDULES` (``"sgdm:schedule=thirds"``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["OfBudget", "PerEpoch", "WindowPerStep", "Steps", "Linear", "SWALinear", "Constant",
           "SCHEDULES", "schedule_rule", "phase_lengths", "Rule", "ScheduleRule"]


@dataclass(frozen=True)
class OfBudget:
    """An epoch count that is a fixed fraction of the budget: ``round(fraction * epochs)``,
    at least ``minimum`` and, with ``before_end``, at most ``epochs - 1``."""

    fraction: float
    source: str
    minimum: int = 1
    before_end: bool = False

    def __call__(self, epochs: int, steps_per_epoch: int) -> int:
        value = max(self.minimum, round(self.fraction * epochs))
        return min(value, max(epochs - 1, self.minimum)) if self.before_end else value

    def __str__(self) -> str:
        low = f", at least {self.minimum}" if self.minimum > 1 else ""
        return f"{self.fraction:.3g} x epochs{low} ({self.source})"


@dataclass(frozen=True)
class PerEpoch:
    """A step count that is a fixed fraction of an epoch:
    ``max(1, round(fraction * steps_per_epoch))``."""

    fraction: float
    source: str

    def __call__(self, epochs: int, steps_per_epoch: int) -> int:
        return max(1, round(self.fraction * steps_per_epoch))

    def __str__(self) -> str:
        return f"{self.fraction:.3g} x steps per epoch ({self.source})"


@dataclass(frozen=True)
class WindowPerStep:
    """A per-step EMA weight whose window is a fixed fraction of an epoch: the weight ``gamma``
    at ``reference`` steps per epoch becomes ``1 - (1 - gamma)^(reference / steps_per_epoch)``
    (the same decay per epoch, so the same number of epochs averaged)."""

    gamma: float
    reference: int
    source: str

    def __call__(self, epochs: int, steps_per_epoch: int) -> float:
        return min(1.0, 1.0 - (1.0 - self.gamma) ** (self.reference / steps_per_epoch))

    def __str__(self) -> str:
        return (f"{self.gamma:g} per step at {self.reference} steps per epoch, the same decay "
                f"per epoch at other epoch lengths ({self.source})")


Rule = OfBudget | PerEpoch | WindowPerStep


def phase_lengths(epochs: int, fractions: tuple[float, ...]) -> list[int]:
    """Split ``epochs`` into phases at the cumulative ``fractions`` (each at least one epoch)."""
    if epochs < len(fractions):
        return [1] * epochs
    bounds, acc = [], 0.0
    for frac in fractions[:-1]:
        acc += frac
        bounds.append(min(max(round(acc * epochs), len(bounds) + 1),
                          epochs - (len(fractions) - 1 - len(bounds))))
    edges = [0, *bounds, epochs]
    return [b - a for a, b in zip(edges, edges[1:])]


# ------------------------------------------------------------------ learning-rate shapes
Factor = Callable[[float], float]


@dataclass(frozen=True)
class Steps:
    """Step decay: phases of ``fractions`` of the budget, the lr times ``factor^i`` in phase i
    (PWA: 80/40/40 of 160 epochs with /10; SGDL: thirds; TSO-ALRA: /10 at 81 and 122 of 164)."""

    fractions: tuple[float, ...]
    source: str
    factor: float = 0.1

    def phases(self, epochs: int) -> list[int]:
        return phase_lengths(epochs, self.fractions)

    def factors(self, epochs: int) -> list[float]:
        return [self.factor ** i for i in range(len(self.phases(epochs)))]

    def build(self, epochs: int, hp: Mapping[str, Any]) -> Factor | None:
        from polyak.schedules import step_phases

        return step_phases(self.phases(epochs), self.factors(epochs))

    def __str__(self) -> str:
        cuts = [sum(self.fractions[: i + 1]) for i in range(len(self.fractions) - 1)]
        return (f"lr x{self.factor:g} at {', '.join(f'{c:.3g}' for c in cuts)} of the budget "
                f"({self.source})")


@dataclass(frozen=True)
class Linear:
    """Gadam eq. 12: constant to half the budget, linear down to ``r`` of the lr at 90 %."""

    source: str
    r: float = 0.01

    def phases(self, epochs: int) -> None:
        return None

    def build(self, epochs: int, hp: Mapping[str, Any]) -> Factor | None:
        from polyak.schedules import gadam_linear

        return gadam_linear(epochs, r=self.r)

    def __str__(self) -> str:
        return f"linear to {self.r:g} x lr over 50-90 % of the budget ({self.source})"


@dataclass(frozen=True)
class SWALinear:
    """Gadam eq. 13 (the SWA schedule): eq. 12's shape over ``avg_start`` epochs down to
    ``avg_ratio`` of the lr, held there while averaging (reads ``avg_start``/``avg_ratio``)."""

    source: str

    def phases(self, epochs: int) -> None:
        return None

    def build(self, epochs: int, hp: Mapping[str, Any]) -> Factor | None:
        from polyak.schedules import gadam_linear

        start = max(int(hp["avg_start"]), 1)
        return gadam_linear(epochs, avg_start=min(start, epochs), avg_ratio=hp["avg_ratio"])

    def __str__(self) -> str:
        return f"linear to avg_ratio x lr by 0.9 avg_start, held while averaging ({self.source})"


@dataclass(frozen=True)
class Constant:
    """The initial learning rate throughout (one phase)."""

    source: str

    def phases(self, epochs: int) -> list[int]:
        return [epochs]

    def build(self, epochs: int, hp: Mapping[str, Any]) -> Factor | None:
        return None

    def __str__(self) -> str:
        return f"constant ({self.source})"


ScheduleRule = Steps | Linear | SWALinear | Constant

#: named schedules a spec may select with ``schedule=<name>``.
SCHEDULES: dict[str, ScheduleRule] = {
    "step": Steps((0.5, 0.25, 0.25), "PWA: /10 after epochs 80 and 120 of 160"),
    "thirds": Steps((1 / 3, 1 / 3, 1 / 3), "SGDL: /10 at 1/3 and 2/3 of training"),
    "tso-alra": Steps((81 / 164, 41 / 164, 42 / 164), "TSO-ALRA: /10 at epochs 81 and 122 of 164"),
    "linear": Linear("Gadam eq. 12"),
    "swa": SWALinear("Gadam eq. 13, the SWA code's schedule"),
    "constant": Constant("one constant-lr phase"),
}


def schedule_rule(value: Any) -> ScheduleRule:
    """The schedule rule ``value`` names (a rule object is returned as it is)."""
    if isinstance(value, (Steps, Linear, SWALinear, Constant)):
        return value
    if isinstance(value, str) and value in SCHEDULES:
        return SCHEDULES[value]
    raise ValueError(f"Invalid schedule: {value!r} (allowed: {', '.join(SCHEDULES)}, or a "
                     "polyak._budget.Steps/Linear/SWALinear/Constant value)")
