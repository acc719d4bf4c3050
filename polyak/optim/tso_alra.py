"""TSO-ALRA: Kronecker-factored ``F^(-1/2)`` preconditioning, then plain SGD.

Ida & Fujiwara, "Improving Generalization Performance of Adaptive Learning Rate by Switching from
Block Diagonal Matrix Preconditioning to SGD", Algorithm 1. Stage 1 (lines 1-9) is
:class:`polyak.optim.kfac.KFACSqrt` (eq. 14-18). When the stopping criterion of line 1 is met the
optimizer switches, once and for all, to stage 2 (lines 10-13): plain SGD, eq. 1,
``w <- w - lr * g`` (with ``momentum``/``weight_decay`` exactly as ``torch.optim.SGD`` if they were
configured; the paper uses neither).

The criterion is either a fixed epoch (the paper tunes it on validation data over 5, 10, ..., 75)
or a trigger such as :class:`polyak.triggers.Plateau` fed the validation loss (the paper's
"real-time" rule: switch when the minimum validation loss has not changed for several epochs).
Conventions:
- ``end_epoch(epoch, val_loss)`` is called after epoch ``epoch`` (0-based) has been trained;
  with ``switch_epoch=k`` epochs ``0 .. k-1`` use stage 1 and the switch happens in
  ``end_epoch(k - 1)``; ``switch_epoch_taken`` is the index of the first SGD epoch (``k``).
- Exactly one of ``switch_epoch`` and ``trigger`` must be given (a ``ValueError`` otherwise;
  for stage 1 alone use ``KFACSqrt``). ``switch()`` forces the switch at any time.
- At the switch the forward hooks are removed and the factors and inverse roots are dropped; the
  param groups (and so the learning rate and any attached LR scheduler) are kept; momentum buffers
  are reset, so stage 2 is ``torch.optim.SGD`` started from the current weights.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from polyak.optim.kfac import KFACSqrt

__all__ = ["TSOALRA"]


class TSOALRA(KFACSqrt):
    """Two-stage optimizer: ``KFACSqrt`` until the switch, plain SGD after it.

    Parameters K-FAC does not cover get plain SGD from the start; a ``UserWarning`` names them
    with the share preconditioned (see :class:`~polyak.optim.kfac.KFACSqrt`).

    Args:
        model: the network (see :class:`~polyak.optim.kfac.KFACSqrt`).
        lr: learning rate of both stages.
        switch_epoch: number of stage-1 epochs (integer >= 1), or ``None`` with a ``trigger``.
        trigger: an object with ``update(value, epoch) -> bool`` that returns ``True`` once
            (e.g. ``Plateau(patience=5)``) fed the validation loss by :meth:`end_epoch`.
        **kfac_kwargs: ``factor_decay``, ``damping``, ``inv_every``, ``factor_every``,
            ``factor_init``, ``momentum``, ``weight_decay``, ``foreach`` of ``KFACSqrt``.
    """

    label = "TSO-ALRA"

    def __init__(self, model: nn.Module, *, lr: float = 1e-2, switch_epoch: int | None = None,
                 trigger: Any = None, **kfac_kwargs: Any) -> None:
        if switch_epoch is not None and trigger is not None:
            raise ValueError("Invalid switch rule: both switch_epoch and trigger given "
                             "(allowed: exactly one of them)")
        if switch_epoch is None and trigger is None:
            raise ValueError("Invalid switch rule: neither switch_epoch nor trigger given "
                             "(allowed: exactly one of them; KFACSqrt is stage 1 alone)")
        if switch_epoch is not None and (isinstance(switch_epoch, bool)
                                         or not isinstance(switch_epoch, int) or switch_epoch < 1):
            raise ValueError(f"Invalid switch_epoch: {switch_epoch!r} (allowed: an integer >= 1)")
        if trigger is not None and not callable(getattr(trigger, "update", None)):
            raise ValueError(f"Invalid trigger: {trigger!r} (allowed: an object with "
                             "update(value, epoch) -> bool, e.g. polyak.triggers.Plateau)")
        if getattr(trigger, "mode", "min") != "min":
            raise ValueError(f"Invalid trigger mode: {trigger.mode!r} (TSOALRA feeds its trigger "
                             "the validation loss, which improves downwards: use mode='min')")
        super().__init__(model, lr=lr, **kfac_kwargs)
        self.switch_epoch = switch_epoch
        self.trigger = trigger
        self._switched = False
        self.switch_epoch_taken: int | None = None
        self._epochs_done = 0

    @property
    def switched(self) -> bool:
        """``True`` once the optimizer runs plain SGD."""
        return self._switched

    def end_epoch(self, epoch: int, val_loss: float | None = None) -> bool:
        """Report the end of epoch ``epoch``; switch if the rule says so. ``True`` if it did."""
        if self.trigger is not None and val_loss is None:
            raise ValueError("Invalid val_loss: None (the switch trigger needs the validation "
                             "loss of every epoch)")
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch != self._epochs_done:
            raise ValueError(
                f"Invalid epoch: {epoch!r} (expected {self._epochs_done}: end_epoch takes every "
                "epoch, 0-based and in order; to resume, load_state_dict() a checkpoint first)")
        self._epochs_done = epoch + 1
        if self._switched:
            return False
        if self.trigger is not None:
            fire = self.trigger.update(val_loss, epoch)
        else:
            fire = self._epochs_done >= self.switch_epoch
        if fire:
            self.switch(self._epochs_done)
        return bool(fire)

    def switch(self, epoch: int | None = None) -> None:
        """Switch to plain SGD now (idempotent); ``epoch``: the first SGD epoch, for the record."""
        if self._switched:
            return
        self._release_layers()
        for p in (p for g in self.param_groups for p in g["params"]):
            self.state[p].pop("momentum_buffer", None)
            if not self.state[p]:
                del self.state[p]
        self._switched = True
        self.switch_epoch_taken = self._epochs_done if epoch is None else int(epoch)

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        trigger = self.trigger.state_dict() if hasattr(self.trigger, "state_dict") else None
        sd["tso_alra"] = {"switched": self._switched, "switch_epoch_taken": self.switch_epoch_taken,
                          "epochs_done": self._epochs_done, "trigger": trigger}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore either stage; a stage-2 state switches this optimizer (unhooks the model)."""
        sd = dict(state_dict)
        meta = sd.pop("tso_alra", None)
        if meta is None:
            raise ValueError("not a TSOALRA state (no 'tso_alra' entry)")
        if not meta["switched"] and self._switched:
            raise ValueError("cannot load a stage-1 TSOALRA state into an optimizer that has "
                             "already switched to SGD")
        if meta["switched"]:
            self.switch(meta["switch_epoch_taken"])
        super().load_state_dict(sd)
        self._epochs_done = int(meta["epochs_done"])
        self.switch_epoch_taken = meta["switch_epoch_taken"]
        if meta["trigger"] is not None and hasattr(self.trigger, "load_state_dict"):
            self.trigger.load_state_dict(meta["trigger"])
