"""Phase-wise parameter aggregation (PWA): Kobayashi, "Phase-wise Parameter Aggregation for
Improving SGD Optimization", eq. (3) and Algorithm 1; docs/methods.md, "PWA".

Training is a sequence of phases of constant learning rate, of ``T_p`` epochs each. In phase p,
with ``gamma = gamma0^(T_ref/T_p)``:

    at its start        avg <- 0
    after epoch t       avg <- gamma*avg + (1-gamma)*w_t              (Alg. 1 line 8)
    at its end          w <- avg / (1-gamma^T_p)                      (Alg. 1 line 10)

i.e. ``w <- sum_t (1-gamma) gamma^(T_p-t) / (1-gamma^T_p) * w_t``, written into the live model
(every trainable parameter, rounded once to its dtype from the float32 aggregate of bf16/fp16
ones; ``requires_grad=False`` ones are left as they are), after which
BatchNorm is recalibrated (when a loader is given) and the next phase trains on from the
aggregate. ``gamma^T_p = gamma0^T_ref`` for every phase length.

Not built on ``torch.optim.swa_utils.get_ema_multi_avg_fn``: its copy-on-first-update would give
the first epoch weight ``gamma^(T-1)`` instead of ``(1-gamma)gamma^(T-1)/(1-gamma^T)``.

The paper is silent on the optimizer state at a phase end. ``momentum="keep"`` (default) leaves it
as it is: Algorithm 1 modifies only theta, and that is what the reference description trains
with. ``momentum="reset"`` zeroes the first-moment buffers of the model's parameters -- SGD's
``momentum_buffer`` and the Adam family's ``exp_avg`` (Adam, AdamW, Padam, AdaBound, ...) -- and
keeps second moments (``exp_avg_sq``, ``max_exp_avg_sq``) and step counts, so the restart
starts without the pre-aggregation velocity but with the learned per-parameter scales.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from polyak.averaging.base import WeightAverage, check_epoch
from polyak.averaging.bn import Forward, bn_loader_for, recalibrate_bn

__all__ = ["PhaseWise", "phase_weights", "reset_momentum"]

#: optimizer state entries holding a first moment ("velocity"), zeroed by momentum="reset".
MOMENTUM_KEYS = ("momentum_buffer", "exp_avg")


def phase_weights(T_p: int, gamma: float) -> list[float]:
    """Weight ``(1-gamma) gamma^(T_p-t) / (1-gamma^T_p)`` of epoch t = 1..T_p in the aggregate."""
    return [(1.0 - gamma) * gamma ** (T_p - t) / (1.0 - gamma ** T_p) for t in range(1, T_p + 1)]


def _optimizers(optimizer: Any) -> list[Any]:
    """The optimizer and those it wraps (``.optimizer``, ``.base_optimizer``), each once."""
    found: list[Any] = []
    todo = [optimizer]
    while todo:
        opt = todo.pop()
        if opt is None or any(opt is f for f in found):
            continue
        found.append(opt)
        todo += [getattr(opt, "optimizer", None), getattr(opt, "base_optimizer", None)]
    return found


@torch.no_grad()
def reset_momentum(optimizer: Any, params: Iterable[Tensor]) -> int:
    """Zero the :data:`MOMENTUM_KEYS` state entries of ``params``; returns how many were zeroed."""
    params = list(params)
    zeroed = 0
    for opt in _optimizers(optimizer):
        state = getattr(opt, "state", None)
        if not state:
            continue
        for p in params:
            entry = state.get(p)
            for key in MOMENTUM_KEYS:
                buf = entry.get(key) if entry else None
                if isinstance(buf, Tensor):
                    buf.zero_()
                    zeroed += 1
    return zeroed


def _check_phases(phases: Any) -> list[int]:
    try:
        values = list(phases)
    except TypeError:
        values = []
    bad = [p for p in values if isinstance(p, bool) or not isinstance(p, int) or p < 1]
    if not values or bad:
        raise ValueError(f"Invalid phases: {phases!r} (a non-empty list of integers >= 1)")
    return values


class PhaseWise(WeightAverage):
    """Phase-wise aggregation over ``phases`` (epoch counts, e.g. ``[80, 40, 40]``).

    Call :meth:`end_epoch` after every epoch, 0-based and consecutive; at the end of each phase
    the aggregate is written into the live model (so the final model, after the last phase, is
    the last aggregate) and, given ``bn_loader``, BatchNorm is recalibrated (without one, on a
    model with BatchNorm, a :class:`~polyak.averaging.bn.StaleBatchNormWarning` says the
    statistics are the pre-aggregation weights'; ``bn_loader=KEEP_BN_STATS`` keeps them on
    purpose, without the warning). An epoch past the
    sum of the phases raises ValueError: it would belong to no phase. :meth:`applied` mid-phase
    shows the partial aggregate ``avg/(1-gamma^t)`` after t epochs (weights summing to 1); at a
    phase boundary there is none, and it shows the live weights (the aggregate).

    Example::

        pwa = PhaseWise(model, phases=[80, 40, 40])   # with lr 0.1, 0.01, 0.001 in the phases
        for epoch in range(160):
            train_one_epoch(model)
            pwa.end_epoch(epoch, bn_loader=train_loader)
    """

    #: the result is the live model (the aggregate is written into it at each phase end).
    reports_average = False

    def __init__(
        self, model: nn.Module, phases: Iterable[int], gamma0: float = 0.9,
        ref_epochs: float = 80, momentum: str = "keep", optimizer: Any = None,
        device: torch.device | str | None = None, *, foreach: bool | None = None,
        nonfinite: str = "raise", dtype: torch.dtype | None = None,
    ) -> None:
        phases = _check_phases(phases)
        if not isinstance(gamma0, (int, float)) or not 0.0 < gamma0 < 1.0:
            raise ValueError(f"Invalid gamma0: {gamma0!r} (allowed: 0 < gamma0 < 1)")
        ok = isinstance(ref_epochs, (int, float)) and not isinstance(ref_epochs, bool)
        if not ok or not math.isfinite(ref_epochs) or ref_epochs <= 0:
            raise ValueError(f"Invalid ref_epochs: {ref_epochs!r} (a finite number > 0)")
        if momentum not in ("keep", "reset"):
            raise ValueError(f"Invalid momentum: {momentum!r} (allowed: 'keep', 'reset')")
        if momentum == "reset" and optimizer is None:
            raise ValueError("Invalid optimizer: None (momentum='reset' needs the optimizer)")
        self.phases = phases
        self.gamma0, self.ref_epochs = float(gamma0), ref_epochs
        self.momentum, self.optimizer = momentum, optimizer
        self._ends = [sum(phases[: i + 1]) for i in range(len(phases))]
        super().__init__(model, every="epoch", start_epoch=0, device=device, foreach=foreach,
                         nonfinite=nonfinite, dtype=dtype)

    # ------------------------------------------------------------------ phases
    @property
    def total_epochs(self) -> int:
        return self._ends[-1]

    @property
    def phase_index(self) -> int:
        """0-based phase of the running epoch; ``len(phases)`` once every phase has ended."""
        return bisect.bisect_right(self._ends, self.epoch)

    @property
    def finished(self) -> bool:
        return self.epoch >= self.total_epochs

    def gamma_of(self, p: int) -> float:
        """``gamma0^(ref_epochs/T_p)`` of phase p."""
        return self.gamma0 ** (self.ref_epochs / self.phases[p])

    @property
    def gamma(self) -> float:
        """gamma of the running phase (of the last phase once all have ended)."""
        return self.gamma_of(min(self.phase_index, len(self.phases) - 1))

    def weights(self, p: int | None = None) -> list[float]:
        """Per-epoch weights of phase p (default: the running one), see :func:`phase_weights`."""
        p = min(self.phase_index, len(self.phases) - 1) if p is None else p
        return phase_weights(self.phases[p], self.gamma_of(p))

    def _divisor(self) -> float:
        return 1.0 - self.gamma ** self.n_averaged

    # ------------------------------------------------------------------ events
    def _update(self, src: list[Tensor]) -> None:
        one_minus_gamma = 1.0 - self.gamma
        if self.n_averaged == 0:        # avg <- 0, then gamma*0 + (1-gamma)*w
            self._copy_(self.average, src)
            self._mul_(self.average, one_minus_gamma)
        else:
            self._lerp_(self.average, src, one_minus_gamma)

    def end_epoch(
        self, epoch: int, bn_loader: Iterable[Any] | None = None, forward: Forward | None = None,
    ) -> None:
        """Aggregate after epoch ``epoch`` (0-based, consecutive); at a phase end write the
        aggregate into the model, recalibrate BatchNorm on ``bn_loader`` (through ``forward``)
        and apply ``momentum``. When it raises, the model, its BatchNorm buffers, the aggregate
        and the phase bookkeeping are as they were before the call."""
        epoch = check_epoch(epoch)
        if self.finished:
            raise ValueError(
                f"Invalid epoch: {epoch} is past the last phase (phases {self.phases} sum to "
                f"{self.total_epochs} epochs, 0-based)"
            )
        if epoch != self.epoch:
            raise ValueError(
                f"Invalid epoch: {epoch} (expected {self.epoch}: PhaseWise needs every epoch, "
                "0-based and in order; use load_state_dict to resume)"
            )
        if epoch + 1 < self._ends[self.phase_index]:  # (a skipped epoch does not move the end)
            self._collect()
        else:   # a phase end: all of it or (on an exception, e.g. from bn_loader) none of it
            with self._all_or_nothing():
                self._collect()
                self._end_phase(bn_loader, forward)
        self.epoch = epoch + 1

    def skip_to(self, epoch: int) -> None:
        """Not for PhaseWise: every epoch of every phase is aggregated."""
        raise ValueError("PhaseWise cannot skip epochs: every epoch of a phase is aggregated "
                         "(call end_epoch after each one)")

    @torch.no_grad()
    def _end_phase(self, bn_loader: Iterable[Any] | None, forward: Forward | None) -> None:
        params = self._params()
        if self.n_averaged == 0:  # every epoch of the phase skipped (nonfinite="skip")
            return
        self._write_into(params, self._divisor())
        self.n_averaged = 0
        bn_loader = bn_loader_for(self, self.model, bn_loader,
                                  "PhaseWise wrote the phase's aggregate into the model")
        if bn_loader is not None:
            recalibrate_bn(self.model, bn_loader, forward=forward)
        if self.momentum == "reset":
            reset_momentum(self.optimizer, params)

    # ------------------------------------------------------------------ checkpoints
    def _hyper(self) -> dict[str, Any]:
        return {"phases": list(self.phases), "gamma0": self.gamma0,
                "ref_epochs": self.ref_epochs, "momentum": self.momentum}

    def __repr__(self) -> str:
        return (f"PhaseWise(phases={self.phases}, gamma0={self.gamma0}, "
                f"ref_epochs={self.ref_epochs}, momentum={self.momentum!r}, "
                f"phase_index={self.phase_index}, n_averaged={self.n_averaged})")
