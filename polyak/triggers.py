"""Triggers: "fire once, ``patience`` epochs after the last best".

One ``Plateau`` drives three decisions of the papers:
- GadamAuto (Granziol et al., App. A.2): averaging starts once ``patience`` epochs pass without a
  new best validation accuracy (``mode="max"``);
- TSO-ALRA (Ida & Fujiwara): the switch to SGD when the validation loss stops improving;
- early stopping (GadamAuto, App. A.2: terminated by the same patience once averaging runs).

:class:`AtEpoch` fires at a fixed epoch and watches no metric: a run that trains a fraction of
the budget (PWA Table 3's 80 of 160 epochs) stops with it.

Under ``torch.distributed`` every update takes rank 0's metric (one broadcast), so all ranks fire
at the same epoch even when they were handed different values.
"""

from __future__ import annotations

import math
from typing import Any

from polyak.distributed import broadcast_value

__all__ = ["Plateau", "AtEpoch"]


class Plateau:
    """Fires exactly once, on the ``patience``-th consecutive epoch without improvement.

    Feed it one metric per epoch with :meth:`update`; it returns ``True`` on the one call where it
    fires and ``False`` on every other call (before and after). An epoch improves when its value
    beats the best so far by more than ``min_delta`` (smaller for ``mode="min"``, larger for
    ``mode="max"``). With ``patience=0`` it fires on the first update.
    """

    def __init__(self, patience: int, mode: str = "min", min_delta: float = 0.0) -> None:
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"Invalid patience: {patience!r} (an integer >= 0)")
        if mode not in ("min", "max"):
            raise ValueError(f"Invalid mode: {mode!r} (allowed: 'min', 'max')")
        if not math.isfinite(min_delta) or min_delta < 0:
            raise ValueError(f"Invalid min_delta: {min_delta!r} (a finite number >= 0)")
        self.patience = patience
        self.mode = mode
        self.min_delta = float(min_delta)
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.num_bad = 0
        self.epochs_seen = 0
        self.fired = False
        self.fired_epoch: int | None = None
        self.last_epoch: int | None = None

    def _improves(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, value: float, epoch: int | None = None) -> bool:
        """Record this epoch's metric; ``True`` exactly once, when the trigger fires."""
        value = broadcast_value(float(value))  # DDP: every rank decides on rank 0's metric
        if math.isnan(value):
            raise ValueError("Plateau.update got NaN: the metric is undefined")
        epoch = self.epochs_seen if epoch is None else int(epoch)
        if self.last_epoch is not None and epoch <= self.last_epoch:
            raise ValueError(
                f"Invalid epoch: {epoch} (the last update was for epoch {self.last_epoch}: one "
                "update per epoch, in order; to resume, load_state_dict() a checkpoint first)")
        self.last_epoch = epoch
        self.epochs_seen += 1
        if self.fired:
            return False
        if self._improves(value):
            self.best, self.best_epoch, self.num_bad = value, epoch, 0
        else:
            self.num_bad += 1
        if self.num_bad >= self.patience:
            self.fired, self.fired_epoch = True, epoch
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        keys = ("patience", "mode", "min_delta", "best", "best_epoch", "num_bad", "epochs_seen",
                "fired", "fired_epoch", "last_epoch")
        return {k: getattr(self, k) for k in keys}

    def check_state_dict(self, state: dict[str, Any]) -> None:
        """Raise ``ValueError`` unless :meth:`load_state_dict` would accept ``state``; changes
        nothing (:class:`~polyak.method.Method` checks every piece before loading any)."""
        if not isinstance(state, dict) or state.get("mode") != self.mode \
                or state.get("patience") != self.patience:
            got = state if not isinstance(state, dict) else \
                f"patience={state.get('patience')}, mode={state.get('mode')!r}"
            raise ValueError(f"Plateau state is for {got}; "
                             f"this trigger has patience={self.patience}, mode={self.mode!r}")
        unknown = sorted(set(state) - set(self.state_dict()))
        if unknown:
            raise ValueError(f"Plateau state has unknown entries {unknown}")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.check_state_dict(state)
        for k, v in state.items():
            setattr(self, k, v)

    def __repr__(self) -> str:
        return f"Plateau(patience={self.patience}, mode={self.mode!r}, min_delta={self.min_delta})"


class AtEpoch:
    """Fires once, at the end of epoch ``epoch`` (0-based); watches no metric (``mode=None``).

    As a ``stop_trigger`` it ends a run after ``epoch + 1`` epochs: the budget fraction of
    recipes with ``budget < 1``."""

    mode = None

    def __init__(self, epoch: int) -> None:
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"Invalid epoch: {epoch!r} (an integer >= 0, 0-based)")
        self.epoch = epoch
        self.fired = False

    def update(self, value: Any, epoch: int) -> bool:
        """``True`` once, on the first update at or after ``epoch`` (``value`` is ignored)."""
        if self.fired or int(epoch) < self.epoch:
            return False
        self.fired = True
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "fired": self.fired}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("epoch") != self.epoch:
            raise ValueError(f"AtEpoch state is for epoch {state.get('epoch')}; this trigger "
                             f"fires at epoch {self.epoch}")
        self.fired = bool(state["fired"])

    def __repr__(self) -> str:
        return f"AtEpoch({self.epoch})"
