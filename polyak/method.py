"""Method: optimizer + learning-rate schedule + averaging + switches + triggers, behind two events.

A training loop talks to one object::

    for epoch in range(epochs):
        for x, y in loader:
            method.step(lambda: loss_fn(model(x), y))  # closure returns the loss, no backward
        method.end_epoch(epoch, val_loss=..., val_acc=..., bn_loader=loader)
        if method.should_stop:
            break
    with method.eval_weights(bn_loader=loader):
        evaluate(model)

The pieces are independent and any combination works:

- ``optimizer``: any ``torch.optim.Optimizer``. A SAM-style optimizer (one with ``first_step`` and
  ``second_step``) gets the closure and evaluates it twice; an optimizer with ``end_epoch`` (e.g.
  TSO-ALRA, which switches itself to SGD) is told about every epoch end and the validation loss; a
  schedule-free optimizer (with ``train()``/``eval()``) is switched to its evaluation point inside
  :meth:`Method.eval_weights`.
- ``schedule``: a function of the epoch returning a factor of each group's base learning rate
  (see :mod:`polyak.schedules`), applied at the start of every epoch, or every step with
  ``per_step=True``.
- ``averaging``: a weight average of :mod:`polyak.averaging` (Uniform, EMA, PhaseWise). With an
  ``averaging_trigger`` (GadamAuto) it collects only from the epoch the trigger fires on.
- ``switches``: :class:`SwitchOptimizer` pieces that replace the optimizer once, at an epoch or
  when a trigger fires (e.g. Gadam + Lookahead: Lookahead until the averaging starts).
- ``stop_trigger``: early stopping; :attr:`Method.should_stop` becomes true when it fires.

Triggers are fed the validation accuracy when their ``mode`` is ``"max"`` and the validation loss
when it is ``"min"``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

Schedule = Callable[[float], float]


def _metric_for(trigger: Any, val_loss: float | None, val_acc: float | None, who: str) -> float:
    """The metric a trigger watches: accuracy for mode "max", loss for mode "min"."""
    value = val_acc if getattr(trigger, "mode", "min") == "max" else val_loss
    if value is None:
        name = "val_acc" if getattr(trigger, "mode", "min") == "max" else "val_loss"
        raise ValueError(f"{who} watches {name}: pass {name}= to end_epoch")
    return float(value)


class SwitchOptimizer:
    """Replace the optimizer once, after epoch ``at_epoch - 1`` ends or when ``trigger`` fires.

    ``to(old_optimizer) -> new_optimizer`` builds the replacement; it should reuse the old
    ``param_groups`` so the learning-rate schedule carries on (e.g. ``lambda la: la.optimizer``
    unwraps a Lookahead).
    """

    def __init__(
        self, to: Callable[[torch.optim.Optimizer], torch.optim.Optimizer], *,
        at_epoch: int | None = None, trigger: Any = None,
    ) -> None:
        if (at_epoch is None) == (trigger is None):
            raise ValueError("SwitchOptimizer needs exactly one of at_epoch and trigger")
        if at_epoch is not None and (not isinstance(at_epoch, int) or at_epoch < 0):
            raise ValueError(f"Invalid at_epoch: {at_epoch!r} (an integer >= 0)")
        self.to, self.at_epoch, self.trigger = to, at_epoch, trigger
        self.done_epoch: int | None = None

    def due(self, epoch: int, val_loss: float | None, val_acc: float | None) -> bool:
        """Whether the switch happens at the end of ``epoch`` (at most once)."""
        if self.done_epoch is not None:
            return False
        if self.trigger is not None:
            return bool(self.trigger.update(_metric_for(self.trigger, val_loss, val_acc,
                                                        "SwitchOptimizer"), epoch))
        return epoch + 1 >= self.at_epoch

    def state_dict(self) -> dict[str, Any]:
        trig = self.trigger.state_dict() if self.trigger is not None else None
        return {"done_epoch": self.done_epoch, "trigger": trig}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.done_epoch = state["done_epoch"]
        if self.trigger is not None and state["trigger"] is not None:
            self.trigger.load_state_dict(state["trigger"])


class Method:
    """One training method: the object a training loop talks to (see the module docstring)."""

    def __init__(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, *,
        schedule: Schedule | None = None, per_step: bool = False, steps_per_epoch: int = 1,
        averaging: Any = None, averaging_trigger: Any = None,
        switches: Iterable[SwitchOptimizer] = (), stop_trigger: Any = None, name: str = "",
    ) -> None:
        if not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
            raise ValueError(f"Invalid steps_per_epoch: {steps_per_epoch!r} (an integer >= 1)")
        self.model, self.optimizer, self.name = model, optimizer, name
        self.schedule, self.per_step, self.steps_per_epoch = schedule, per_step, steps_per_epoch
        self.averaging, self.averaging_trigger = averaging, averaging_trigger
        self.switches, self.stop_trigger = list(switches), stop_trigger
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.steps = 0            # optimizer steps taken
        self.epochs_done = 0      # end_epoch calls
        self.averaging_started = averaging_trigger is None
        self.should_stop = False
        if self._is_schedule_free():
            optimizer.train()
        self._apply_lr()

    # ------------------------------------------------------------------ helpers
    def _is_sam(self) -> bool:
        return hasattr(self.optimizer, "first_step") and hasattr(self.optimizer, "second_step")

    def _is_schedule_free(self) -> bool:
        opt = self.optimizer
        return callable(getattr(opt, "train", None)) and callable(getattr(opt, "eval", None))

    def _apply_lr(self) -> None:
        if self.schedule is None:
            return
        progress = self.steps / self.steps_per_epoch if self.per_step else self.epochs_done
        factor = float(self.schedule(progress))
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor

    @property
    def lr(self) -> float:
        """The current learning rate of the first parameter group."""
        return float(self.optimizer.param_groups[0]["lr"])

    # ------------------------------------------------------------------ events
    def step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        """One optimizer step on the batch ``closure`` evaluates; returns its (clean) loss."""
        opt = self.optimizer
        if self.per_step:
            self._apply_lr()
        if self._is_sam():
            def closure_with_backward() -> torch.Tensor:
                opt.zero_grad(set_to_none=True)
                loss = closure()
                loss.backward()
                return loss
            loss = opt.step(closure_with_backward)
        else:
            opt.zero_grad(set_to_none=True)
            loss = closure()
            loss.backward()
            opt.step()
        self.steps += 1
        if self.averaging is not None and self.averaging_started:
            step_hook = getattr(self.averaging, "step", None)
            if step_hook is not None:
                step_hook()
        return loss.detach()

    def end_epoch(
        self, epoch: int, val_loss: float | None = None, val_acc: float | None = None,
        bn_loader: Iterable[Any] | None = None,
    ) -> None:
        """Tell every piece that ``epoch`` (0-based) ended; then set next epoch's learning rate."""
        if self.averaging_trigger is not None and not self.averaging_started:
            metric = _metric_for(self.averaging_trigger, val_loss, val_acc, "averaging_trigger")
            self.averaging_started = bool(self.averaging_trigger.update(metric, epoch))
        if self.averaging is not None and self.averaging_started:
            self.averaging.end_epoch(epoch, bn_loader=bn_loader)
        on_epoch = getattr(self.optimizer, "end_epoch", None)
        if callable(on_epoch):
            on_epoch(epoch, val_loss=val_loss)
        for switch in self.switches:
            if switch.due(epoch, val_loss, val_acc):
                self.optimizer, switch.done_epoch = switch.to(self.optimizer), epoch
        if self.stop_trigger is not None and not self.should_stop:
            metric = _metric_for(self.stop_trigger, val_loss, val_acc, "stop_trigger")
            self.should_stop = bool(self.stop_trigger.update(metric, epoch))
        self.epochs_done = epoch + 1
        if not self.per_step:
            self._apply_lr()

    @contextlib.contextmanager
    def eval_weights(
        self, bn_loader: Iterable[Any] | None = None,
        forward: Callable[[nn.Module, Any], Any] | None = None,
    ) -> Iterator[nn.Module]:
        """The weights this method reports (e.g. the average, with recalibrated BatchNorm).

        Inside the block the model holds them; on exit the live weights, BatchNorm buffers and the
        optimizer's training point are back, also when the block raises.
        """
        avg = self.averaging
        if avg is not None and getattr(avg, "reports_average", True) and avg.has_average:
            with avg.applied(self.model, bn_loader=bn_loader, forward=forward):
                yield self.model
        elif self._is_schedule_free():
            from polyak.averaging import recalibrate_bn, saved_bn_buffers

            live = [p.detach().clone() for p in self.model.parameters()]
            self.optimizer.eval()
            try:
                with saved_bn_buffers(self.model):
                    if bn_loader is not None:
                        recalibrate_bn(self.model, bn_loader, forward=forward)
                    yield self.model
            finally:
                self.optimizer.train()  # back to the training point, then exactly (no rounding)
                with torch.no_grad():
                    torch._foreach_copy_(list(self.model.parameters()), live)
        else:
            yield self.model

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        def sd(obj: Any) -> Any:
            return obj.state_dict() if obj is not None else None
        return {
            "optimizer": self.optimizer.state_dict(), "base_lrs": list(self.base_lrs),
            "steps": self.steps, "epochs_done": self.epochs_done,
            "averaging_started": self.averaging_started, "should_stop": self.should_stop,
            "averaging": sd(self.averaging), "averaging_trigger": sd(self.averaging_trigger),
            "stop_trigger": sd(self.stop_trigger),
            "switches": [s.state_dict() for s in self.switches],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["switches"]) != len(self.switches):
            raise ValueError("state_dict is from a Method with a different number of switches")
        for switch, sw_state in zip(self.switches, state["switches"]):
            switch.load_state_dict(sw_state)
            if sw_state["done_epoch"] is not None:
                self.optimizer = switch.to(self.optimizer)
        self.optimizer.load_state_dict(state["optimizer"])
        for name in ("averaging", "averaging_trigger", "stop_trigger"):
            obj = getattr(self, name)
            if (obj is None) != (state[name] is None):
                raise ValueError(f"state_dict {name} does not match this Method's")
            if obj is not None:
                obj.load_state_dict(state[name])
        self.base_lrs = list(state["base_lrs"])
        self.steps, self.epochs_done = state["steps"], state["epochs_done"]
        self.averaging_started, self.should_stop = state["averaging_started"], state["should_stop"]

    def __repr__(self) -> str:
        parts = [type(self.optimizer).__name__]
        if self.averaging is not None:
            parts.append(type(self.averaging).__name__)
        return f"Method({self.name!r}: {' + '.join(parts)})"
