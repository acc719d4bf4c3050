"""Learning-rate schedules as pure functions of training progress, and a torch adapter.

Each constructor returns a callable ``f(epoch) -> factor``: the multiplier of the base learning
rate at fractional progress ``epoch`` (0-based; per-step use passes
``epoch + step/steps_per_epoch``). The shapes of the papers:

- :func:`step_phases`: constant within phases, e.g. lr x [1, 0.1, 0.01] over [80, 40, 40]
  epochs (Kobayashi, PWA, Sec. 3; the phases PhaseWise averages over).
- :func:`gadam_linear`: Granziol et al. (Gadam), App. B, eq. (12) and with averaging eq. (13);
  the same schedule as the SWA code (Izmailov et al.), where eq. (13)'s ``t/T`` in the middle
  case is ``t/T_avg`` (the schedule is continuous only that way).
- :func:`pwa_decay`: Kobayashi eq. (6): the a-priori decayed rate ``(1-gamma^(T-t+1))/(1-gamma^T)``
  equivalent to phase-wise averaging, constant within each epoch t = 1..T of a phase.
- :func:`cosine` (Loshchilov & Hutter, SGDR without restarts), :func:`constant`.

:func:`as_scheduler` wraps any of them (or any callable) as a ``torch.optim.lr_scheduler``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor
from torch.optim.lr_scheduler import LRScheduler

__all__ = [
    "LambdaSchedule", "as_scheduler", "constant", "cosine", "gadam_linear", "pwa_decay",
    "step_phases",
]


def _positive(name: str, value: Any, integer: bool = False) -> float:
    kinds = (int,) if integer else (int, float)
    ok = isinstance(value, kinds) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        what = "an integer >= 1" if integer else "a finite number > 0"
        raise ValueError(f"Invalid {name}: {value!r} ({what})")
    return value


def _ratio(name: str, value: Any) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not 0.0 < value <= 1.0:
        raise ValueError(f"Invalid {name}: {value!r} (allowed: 0 < {name} <= 1)")
    return float(value)


def _phases(phase_epochs: Sequence[int]) -> list[int]:
    try:
        phases = list(phase_epochs)
    except TypeError:
        phases = []
    if not phases:
        raise ValueError(f"Invalid phase_epochs: {phase_epochs!r} (a non-empty list)")
    for T in phases:
        _positive("phase_epochs entry", T, integer=True)
    return phases


def _factors(factors: Sequence[float] | None, n: int) -> list[float]:
    if factors is None:
        return [1.0] * n
    values = [float(f) for f in factors]
    if len(values) != n:
        raise ValueError(f"Invalid factors: {list(factors)!r} ({n} values, one per phase)")
    if any(not math.isfinite(f) or f < 0 for f in values):
        raise ValueError(f"Invalid factors: {list(factors)!r} (finite numbers >= 0)")
    return values


class _Schedule:
    """Base: a picklable callable with a readable repr of its arguments."""

    _args: dict[str, Any]

    def __call__(self, epoch: float) -> float:
        return self.factor(float(epoch))

    def factor(self, epoch: float) -> float:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._args.items())
        return f"{self._name}({args})"

    _name = "schedule"


class _Phased(_Schedule):
    def __init__(self, phase_epochs: Sequence[int], factors: Sequence[float] | None) -> None:
        self.phases = _phases(phase_epochs)
        self.factors = _factors(factors, len(self.phases))
        self._ends = [sum(self.phases[: i + 1]) for i in range(len(self.phases))]

    def _locate(self, epoch: float) -> tuple[int, float]:
        """(phase index, progress within it); past the end: the last phase, at its end."""
        p = bisect.bisect_right(self._ends, epoch)
        if p >= len(self.phases):
            return len(self.phases) - 1, float(self.phases[-1] - 1)
        start = self._ends[p] - self.phases[p]
        return p, max(epoch - start, 0.0)


class _StepPhases(_Phased):
    _name = "step_phases"

    def __init__(self, phase_epochs: Sequence[int], factors: Sequence[float]) -> None:
        super().__init__(phase_epochs, factors)
        self._args = {"phase_epochs": self.phases, "factors": self.factors}

    def factor(self, epoch: float) -> float:
        return self.factors[self._locate(epoch)[0]]


def step_phases(phase_epochs: Sequence[int], factors: Sequence[float]) -> Callable[[float], float]:
    """``factors[i]`` during phase i (``phase_epochs[i]`` epochs); the last factor past the end."""
    if factors is None:
        raise ValueError("Invalid factors: None (one factor per phase)")
    return _StepPhases(phase_epochs, factors)


class _PWADecay(_Phased):
    _name = "pwa_decay"

    def __init__(self, phase_epochs, gamma0, ref_epochs, factors) -> None:
        super().__init__(phase_epochs, factors)
        self.gamma0, self.ref_epochs = gamma0, ref_epochs
        self._args = {"phase_epochs": self.phases, "gamma0": gamma0, "ref_epochs": ref_epochs,
                      "factors": None if factors is None else self.factors}

    def factor(self, epoch: float) -> float:
        p, local = self._locate(epoch)
        T = self.phases[p]
        t = min(int(math.floor(local)) + 1, T)          # epoch within the phase, 1..T
        gamma = self.gamma0 ** (self.ref_epochs / T)
        return self.factors[p] * (1.0 - gamma ** (T - t + 1)) / (1.0 - gamma ** T)


def pwa_decay(
    phase_epochs: Sequence[int], gamma0: float = 0.9, ref_epochs: float = 80,
    factors: Sequence[float] | None = None,
) -> Callable[[float], float]:
    """Kobayashi eq. (6): in epoch t = 1..T of a phase of T epochs,
    ``(1-gamma^(T-t+1))/(1-gamma^T)`` with ``gamma = gamma0^(ref_epochs/T)``, times the phase's
    factor when ``factors`` is given. Constant within an epoch; past the end, the last value."""
    ok = isinstance(gamma0, (int, float)) and not isinstance(gamma0, bool)
    if not ok or not 0.0 < gamma0 < 1.0:
        raise ValueError(f"Invalid gamma0: {gamma0!r} (allowed: 0 < gamma0 < 1)")
    _positive("ref_epochs", ref_epochs)
    return _PWADecay(phase_epochs, float(gamma0), ref_epochs, factors)


class _GadamLinear(_Schedule):
    _name = "gadam_linear"

    def __init__(self, total_epochs, avg_start, r, avg_ratio) -> None:
        self.T = total_epochs if avg_start is None else avg_start
        self.r = r if avg_start is None else avg_ratio
        self._args = {"total_epochs": total_epochs, "avg_start": avg_start, "r": r,
                      "avg_ratio": avg_ratio}

    def factor(self, epoch: float) -> float:
        t = epoch / self.T
        if t <= 0.5:
            return 1.0
        if t <= 0.9:
            return 1.0 - (1.0 - self.r) * (t - 0.5) / 0.4
        return self.r


def gadam_linear(
    total_epochs: float, avg_start: float | None = None, r: float = 0.01, avg_ratio: float = 0.5,
) -> Callable[[float], float]:
    """Gadam eq. (12): with ``t = epoch/total_epochs``, 1 for t <= 0.5, ``1-(1-r)(t-0.5)/0.4``
    for t <= 0.9, ``r`` after. With ``avg_start`` (T_avg), eq. (13): the same shape over
    ``t = epoch/avg_start`` down to ``avg_ratio`` (alpha_avg/alpha_0), held from 0.9 T_avg on."""
    _positive("total_epochs", total_epochs)
    r, avg_ratio = _ratio("r", r), _ratio("avg_ratio", avg_ratio)
    if avg_start is not None:
        _positive("avg_start", avg_start)
        if avg_start > total_epochs:
            raise ValueError(
                f"Invalid avg_start: {avg_start!r} (allowed: 0 < avg_start <= total_epochs "
                f"= {total_epochs})"
            )
    return _GadamLinear(total_epochs, avg_start, r, avg_ratio)


class _Cosine(_Schedule):
    _name = "cosine"

    def __init__(self, total_epochs, min_factor, warmup_epochs) -> None:
        self.T, self.min_factor, self.warmup = total_epochs, min_factor, warmup_epochs
        self._args = {"total_epochs": total_epochs, "min_factor": min_factor,
                      "warmup_epochs": warmup_epochs}

    def factor(self, epoch: float) -> float:
        if epoch < self.warmup:
            return (epoch + 1.0) / (self.warmup + 1.0)
        progress = min(max((epoch - self.warmup) / (self.T - self.warmup), 0.0), 1.0)
        cos = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_factor + (1.0 - self.min_factor) * cos


def cosine(
    total_epochs: float, min_factor: float = 0.0, warmup_epochs: float = 0,
) -> Callable[[float], float]:
    """Cosine from 1 at ``warmup_epochs`` to ``min_factor`` at ``total_epochs`` (held after).
    During warm-up, the linear ramp ``(epoch+1)/(warmup_epochs+1)``: positive from epoch 0 and 1
    when the cosine begins."""
    _positive("total_epochs", total_epochs)
    ok = isinstance(min_factor, (int, float)) and not isinstance(min_factor, bool)
    if not ok or not 0.0 <= min_factor <= 1.0:
        raise ValueError(f"Invalid min_factor: {min_factor!r} (allowed: 0 <= min_factor <= 1)")
    ok = isinstance(warmup_epochs, (int, float)) and not isinstance(warmup_epochs, bool)
    if not ok or not 0 <= warmup_epochs < total_epochs:
        raise ValueError(
            f"Invalid warmup_epochs: {warmup_epochs!r} (allowed: 0 <= warmup_epochs < "
            f"total_epochs = {total_epochs})"
        )
    return _Cosine(total_epochs, float(min_factor), warmup_epochs)


class _Constant(_Schedule):
    _name = "constant"
    _args: dict[str, Any] = {}

    def factor(self, epoch: float) -> float:
        return 1.0


def constant() -> Callable[[float], float]:
    """The factor 1 throughout."""
    return _Constant()


class LambdaSchedule(LRScheduler):
    """A schedule as a torch LR scheduler: ``lr = base_lr * schedule(progress)`` per group.

    With ``steps_per_epoch=None`` call :meth:`step` once per epoch (progress = epochs done); with
    ``steps_per_epoch=n`` call it after every optimizer step (progress = steps done / n). The
    base learning rates are the groups' ``initial_lr`` (set from ``lr`` when missing, as torch's
    schedulers do). Works with any object exposing ``param_groups``, wrapper optimizers
    included: it subclasses ``LRScheduler`` for ``isinstance`` checks but implements its own
    ``__init__``/``step`` so it neither requires a ``torch.optim.Optimizer`` nor patches its
    ``step``.
    """

    def __init__(
        self, optimizer: Any, schedule: Callable[[float], float],
        steps_per_epoch: int | None = None,
    ) -> None:
        if not callable(schedule):
            raise ValueError(f"Invalid schedule: {schedule!r} (a callable epoch -> factor)")
        if steps_per_epoch is not None:
            _positive("steps_per_epoch", steps_per_epoch, integer=True)
        if not hasattr(optimizer, "param_groups"):
            raise ValueError(f"Invalid optimizer: {type(optimizer).__name__} has no param_groups")
        self.optimizer = optimizer
        self.schedule = schedule
        self.steps_per_epoch = steps_per_epoch
        for group in optimizer.param_groups:
            lr = group["lr"]
            group.setdefault("initial_lr", lr.clone() if isinstance(lr, Tensor) else lr)
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = 0
        self._step_count = 1
        self._apply()

    @property
    def progress(self) -> float:
        """Fractional epochs of training done (what the schedule is evaluated at)."""
        if self.steps_per_epoch is None:
            return float(self.last_epoch)
        return self.last_epoch / self.steps_per_epoch

    def get_lr(self) -> list[float]:
        factor = float(self.schedule(self.progress))
        return [float(base) * factor for base in self.base_lrs]

    def _apply(self) -> None:
        lrs = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs):
            if isinstance(group["lr"], Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        self._last_lr = lrs

    def step(self, epoch: int | None = None) -> None:
        """Advance by one epoch (or one optimizer step with ``steps_per_epoch``)."""
        if epoch is not None:
            raise ValueError("LambdaSchedule.step takes no epoch: it counts its own calls")
        self.last_epoch += 1
        self._step_count += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs),
                "steps_per_epoch": self.steps_per_epoch, "schedule": repr(self.schedule),
                "_step_count": self._step_count, "_last_lr": list(self._last_lr)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("steps_per_epoch") != self.steps_per_epoch:
            raise ValueError(
                f"Invalid state_dict: steps_per_epoch={state_dict.get('steps_per_epoch')!r}, "
                f"this scheduler has {self.steps_per_epoch!r}"
            )
        self.last_epoch = int(state_dict["last_epoch"])
        self._step_count = int(state_dict["_step_count"])
        self.base_lrs = list(state_dict["base_lrs"])
        self._apply()

    def __repr__(self) -> str:
        return (f"LambdaSchedule({self.schedule!r}, steps_per_epoch={self.steps_per_epoch}, "
                f"last_epoch={self.last_epoch})")


def as_scheduler(
    optimizer: Any, schedule: Callable[[float], float], steps_per_epoch: int | None = None,
) -> LambdaSchedule:
    """``schedule`` as a torch LR scheduler (see :class:`LambdaSchedule`)."""
    return LambdaSchedule(optimizer, schedule, steps_per_epoch)
