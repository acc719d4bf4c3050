"""Weight averages of the noisy quadratic model, as linear events on the state ``[x, (v), a]``.

Each average says, for a run of ``steps`` optimizer steps, which linear maps act on the state
after step ``k`` (a collection ``a <- (1-w) a + w x``, a phase-end restart) and how the model in
use is read out (the iterate, or ``scale * a``). Step ``k`` means "after the k-th optimizer step";
``k = 0`` is the initial point.

- :class:`Tail`: uniform average of ``x_k`` for ``k = start, start+every, ...`` (Polyak / SWA /
  Gadam tail averaging, Gadam eq. for ``w_avg``; docs/methods.md section 5).
- :class:`EMA`: ``a <- decay*a + (1-decay) x`` every ``every`` steps, bias-corrected
  (``a`` from 0, read ``a/(1-decay^n)``) or started at ``x_0``.
- :class:`PhaseWise`: Kobayashi's Algorithm 1 (docs/methods.md section 6): within phase ``p`` of
  ``T_p`` collections, ``a <- gamma a + (1-gamma) x`` with ``gamma = gamma0^(T_ref/T_p)``; at its
  end ``x <- a/(1-gamma^T_p)``, ``a <- 0``, the momentum buffer kept or reset. The model in use is
  always the iterate (the last phase's end leaves the final aggregate in it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Averaging", "Events", "Tail", "EMA", "PhaseWise"]


@dataclass
class Events:
    """Linear maps to apply after each step, the read-out of the model, the average's start."""

    maps: dict[int, list[np.ndarray]] = field(default_factory=dict)
    read_scale: np.ndarray = field(default_factory=lambda: np.empty(0))
    a0_is_x0: bool = False


def _check_int(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"Invalid {name}: {value!r} (an integer >= {low})")


def _collect(n: int, w: float) -> np.ndarray:
    C = np.eye(n)
    C[n - 1, n - 1] = 1.0 - w
    C[n - 1, 0] = w
    return C


class Averaging:
    """Base class: an average of the iterates of the noisy quadratic model."""

    def events(self, steps: int, nb: int) -> Events:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True)
class Tail(Averaging):
    """Uniform average of the iterates ``x_start, x_{start+every}, ...`` (tail averaging)."""

    start: int
    every: int = 1

    def __post_init__(self) -> None:
        _check_int("start", self.start, 0)
        _check_int("every", self.every, 1)

    def events(self, steps: int, nb: int) -> Events:
        n = nb + 1
        ev = Events(read_scale=np.full(steps + 1, np.nan))
        count = 0
        for k in range(self.start, steps + 1, self.every):
            count += 1
            ev.maps[k] = [_collect(n, 1.0 / count)]
            ev.read_scale[k:] = 1.0
        return ev


@dataclass(frozen=True)
class EMA(Averaging):
    """Exponential moving average of every ``every``-th iterate, optionally bias-corrected."""

    decay: float
    every: int = 1
    bias_correction: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"Invalid decay: {self.decay} (allowed: 0 <= decay < 1)")
        _check_int("every", self.every, 1)

    def events(self, steps: int, nb: int) -> Events:
        n = nb + 1
        ev = Events(read_scale=np.full(steps + 1, np.nan), a0_is_x0=not self.bias_correction)
        if not self.bias_correction:
            ev.read_scale[:] = 1.0
        count = 0
        for k in range(self.every, steps + 1, self.every):
            count += 1
            ev.maps[k] = [_collect(n, 1.0 - self.decay)]
            if self.bias_correction:
                ev.read_scale[k:] = 1.0 / (1.0 - self.decay ** count)
        return ev


@dataclass(frozen=True)
class PhaseWise(Averaging):
    """Phase-wise aggregation: EMA within each phase, restart from its bias-corrected value.

    Phase ``p`` has ``phases[p]`` collections, one every ``every`` steps.
    """

    phases: Sequence[int]
    every: int = 1
    gamma0: float = 0.9
    T_ref: float = 80.0
    momentum: str = "keep"

    def __post_init__(self) -> None:
        if len(self.phases) < 1:
            raise ValueError("Invalid phases: empty (need at least one phase length)")
        for T_p in self.phases:
            _check_int("phase length", T_p, 1)
        _check_int("every", self.every, 1)
        if not 0.0 < self.gamma0 < 1.0:
            raise ValueError(f"Invalid gamma0: {self.gamma0} (allowed: 0 < gamma0 < 1)")
        if not (np.isfinite(self.T_ref) and self.T_ref > 0):
            raise ValueError(f"Invalid T_ref: {self.T_ref} (a finite number > 0)")
        if self.momentum not in ("keep", "reset"):
            raise ValueError(f"Invalid momentum: {self.momentum!r} (allowed: 'keep', 'reset')")

    def gammas(self) -> list[float]:
        """``gamma_p = gamma0^(T_ref/T_p)`` of each phase."""
        return [self.gamma0 ** (self.T_ref / T_p) for T_p in self.phases]

    def _restart(self, n: int, nb: int, scale: float) -> np.ndarray:
        R = np.zeros((n, n))
        R[0, n - 1] = scale
        if nb == 2 and self.momentum == "keep":
            R[1, 1] = 1.0
        return R

    def events(self, steps: int, nb: int) -> Events:
        total = sum(self.phases) * self.every
        if total != steps:
            raise ValueError(
                f"Invalid phases: {list(self.phases)} x every={self.every} = {total} steps, "
                f"but the learning-rate schedule has {steps}"
            )
        n = nb + 1
        ev = Events(read_scale=np.full(steps + 1, np.nan))
        k = 0
        for T_p, gamma in zip(self.phases, self.gammas()):
            for _ in range(T_p):
                k += self.every
                ev.maps[k] = [_collect(n, 1.0 - gamma)]
            ev.maps[k].append(self._restart(n, nb, 1.0 / (1.0 - gamma ** T_p)))
        return ev
