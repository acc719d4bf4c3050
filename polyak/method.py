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

or, where the optimizer allows it (not SAM, which needs the loss at two points), torch-style::

        method.backward(loss_fn(model(x), y))   # or loss.backward() without scaler/accumulation
        method.step()

The pieces are independent and any combination works:

- ``optimizer``: any ``torch.optim.Optimizer``. A SAM-style optimizer (one with ``first_step`` and
  ``second_step``) gets both passes from the closure; an optimizer with ``end_epoch`` (e.g.
  TSO-ALRA, which switches itself to SGD) is told about every epoch end and the validation loss; a
  optimizer with an evaluation point (``train()``/``eval()``: schedule-free's averaged point,
  Lookahead's slow weights) is switched to it inside :meth:`Method.eval_weights`.
- ``schedule``: a function of the epoch returning a factor of each group's base learning rate
  (see :mod:`polyak.schedules`), applied at the start of every epoch, or every step with
  ``per_step=True``; ``warmup_steps`` multiplies it by the linear ramp ``min(1, (t+1)/W)`` over
  the first ``W`` optimizer steps. Groups added later (``optimizer.add_param_group``) are
  scheduled from their own lr. A Method that schedules refuses an lr changed by anything else
  (e.g. a torch LR scheduler); build it with ``schedule=None`` to leave the lr to your scheduler.
- ``averaging``: a weight average of :mod:`polyak.averaging` (Uniform, EMA, PhaseWise). With an
  ``averaging_trigger`` (GadamAuto) it collects only from the epoch the trigger fires on.
- ``switches``: :class:`SwitchOptimizer` pieces that replace the optimizer once, at an epoch or
  when a trigger fires (e.g. Gadam + Lookahead: Lookahead until the averaging starts).
- ``stop_trigger``: early stopping; :attr:`Method.should_stop` becomes true when it fires. With
  an ``averaging_trigger`` it watches from the epoch after averaging started (GadamAuto's early
  termination, Gadam App. A.2, never stops a run before it averages).
- ``observers`` (or :meth:`Method.observe`): objects told about every optimizer step taken
  (``step()``, after the averaging's) and every epoch end (``end_epoch(epoch)``, before the
  averaging's, so they see the raw iterate), whose ``state_dict()`` the Method's carries, e.g.
  :class:`polyak.averaging.Snapshots` for post-hoc averaging.
- the step pieces of :mod:`polyak.loop`: ``clip`` (:class:`~polyak.loop.ClipGradNorm` or
  :class:`~polyak.loop.ClipGradValue`, applied to the gradient each pass steps with),
  ``scaler`` (a ``torch.amp.GradScaler``), ``accumulate`` (micro-batches per optimizer step) and
  ``nonfinite`` (``"raise"``: a non-finite loss or gradient is an error at that step;
  ``"skip"``: the step is dropped and counted in :attr:`Method.skipped_steps`). A dropped step
  (also a GradScaler overflow) updates no weight, average, trigger or step counter. Every recipe
  takes them too (``polyak.recipe("pwa", model, 4, 10, accumulate=2)``), and assigning one later
  (``method.clip = ClipGradNorm(1.0)``, ``method.accumulate = 2``) runs the constructor's
  checks: ``clip`` is a callable (a bare number is refused: it could bound the norm or the
  entries), ``accumulate`` and ``scaler`` change only between optimizer steps.

A Method built by a recipe knows it (:attr:`Method.recipe`, ``"<base>+<averaging>"``; its spec
is :attr:`Method.name`): :meth:`Method.load_state_dict` refuses a state of another recipe, and
checks every piece before it changes any (a refused state leaves the Method as it was).

Triggers are fed the validation accuracy when their ``mode`` is ``"max"`` and the validation loss
when it is ``"min"``: pass those of the weights :meth:`Method.eval_weights` reports (the live
ones until an average is in effect). Epochs are 0-based and every one is reported, in order.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from polyak import _method_state
from polyak._step import NonFiniteError, Stepping, check_loop_options
from polyak.loop import ClipGradNorm, ClipGradValue

__all__ = ["Method", "SwitchOptimizer", "NonFiniteError", "ClipGradNorm", "ClipGradValue"]

Schedule = Callable[[float], float]

def _trigger_mode(trigger: Any) -> str:
    return getattr(trigger, "mode", "min")


def _metric_for(trigger: Any, val_loss: float | None, val_acc: float | None, who: str
                ) -> float | None:
    """The metric a trigger watches: accuracy for mode "max", loss for mode "min", nothing for
    mode None (e.g. :class:`polyak.triggers.AtEpoch`)."""
    if _trigger_mode(trigger) is None:
        return None
    name = "val_acc" if _trigger_mode(trigger) == "max" else "val_loss"
    value = val_acc if name == "val_acc" else val_loss
    if value is None:
        raise ValueError(f"{who} watches {name}: pass {name}= to end_epoch")
    if math.isnan(float(value)):
        raise ValueError(f"Invalid {name}: nan ({who} needs a number)")
    return float(value)


def _check_trigger(trigger: Any, who: str) -> None:
    if trigger is None:
        return
    if not callable(getattr(trigger, "update", None)):
        raise ValueError(f"Invalid {who}: {trigger!r} (an object with update(value, epoch))")
    if _trigger_mode(trigger) not in ("min", "max", None):
        raise ValueError(f"Invalid {who} mode: {_trigger_mode(trigger)!r} (allowed: 'min' to "
                         "watch val_loss, 'max' to watch val_acc, None to watch nothing)")


class SwitchOptimizer:
    """Replace the optimizer once, after epoch ``at_epoch - 1`` ends or when ``trigger`` fires.

    ``to(old_optimizer) -> new_optimizer`` builds the replacement; it should reuse the old
    ``param_groups`` so the learning-rate schedule carries on (e.g. ``lambda la: la.optimizer``
    unwraps a Lookahead) and change nothing else, because loading a checkpoint taken after the
    switch calls it again. ``on_switch(old_optimizer)``, when given, runs at the switch itself
    only (never on that replay): e.g. ``Lookahead.to_slow`` moves the model to its slow weights.
    """

    def __init__(
        self, to: Callable[[torch.optim.Optimizer], torch.optim.Optimizer], *,
        at_epoch: int | None = None, trigger: Any = None,
        on_switch: Callable[[torch.optim.Optimizer], None] | None = None,
    ) -> None:
        if (at_epoch is None) == (trigger is None):
            raise ValueError("SwitchOptimizer needs exactly one of at_epoch and trigger")
        if at_epoch is not None and (not isinstance(at_epoch, int) or at_epoch < 0):
            raise ValueError(f"Invalid at_epoch: {at_epoch!r} (an integer >= 0)")
        if on_switch is not None and not callable(on_switch):
            raise ValueError(f"Invalid on_switch: {on_switch!r} (a callable(old_optimizer))")
        self.to, self.at_epoch, self.trigger = to, at_epoch, trigger
        self.on_switch = on_switch
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


class Method(Stepping):
    """One training method: the object a training loop talks to (see the module docstring).

    ``epochs`` is the epoch budget the Method was built for (``polyak.recipe`` sets it; its
    schedule and averaging are laid out over it), ``None`` when it has none; the framework
    integrations refuse a trainer whose epoch budget differs.

    Counters: :attr:`steps` (optimizer steps taken), :attr:`skipped_steps` (steps dropped for a
    non-finite value or a GradScaler overflow), :attr:`epochs_done`; :attr:`last_step_skipped`
    and :attr:`last_grad_norm` (the norm :class:`~polyak.loop.ClipGradNorm` measured, before
    clipping) describe the last optimizer step. :attr:`recipe`: the base optimizer and
    averaging of the recipe that built it (``None`` for a hand-built Method); :attr:`name`: its
    spec, for display.
    """

    def __init__(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, *,
        schedule: Schedule | None = None, per_step: bool = False, steps_per_epoch: int = 1,
        averaging: Any = None, averaging_trigger: Any = None,
        switches: Iterable[SwitchOptimizer] = (), stop_trigger: Any = None, name: str = "",
        clip: Callable[[list[Tensor]], Tensor | None] | None = None, scaler: Any = None,
        accumulate: int = 1, warmup_steps: int = 0, nonfinite: str = "raise",
        observers: Iterable[Any] = (), epochs: int | None = None, recipe: str | None = None,
    ) -> None:
        check_loop_options(clip, scaler, accumulate, nonfinite, warmup_steps, schedule,
                           steps_per_epoch)
        if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int)
                                   or epochs < 1):
            raise ValueError(f"Invalid epochs: {epochs!r} (allowed: None or an integer >= 1)")
        for trigger, who in ((averaging_trigger, "averaging_trigger"),
                             (stop_trigger, "stop_trigger")):
            _check_trigger(trigger, who)
        if recipe is not None and not isinstance(recipe, str):
            raise ValueError(f"Invalid recipe: {recipe!r} (a string such as 'sgdm+phasewise')")
        self.model, self.optimizer, self.name, self.recipe = model, optimizer, name, recipe
        self.epochs = epochs      # the budget it was built for (recipes set it), or None
        self.schedule, self.per_step, self.steps_per_epoch = schedule, per_step, steps_per_epoch
        self.averaging, self.averaging_trigger = averaging, averaging_trigger
        self.switches, self.stop_trigger = list(switches), stop_trigger
        self.clip, self.scaler, self.nonfinite = clip, scaler, nonfinite   # validated setters
        self.warmup_steps = warmup_steps
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.steps = 0            # optimizer steps taken
        self.skipped_steps = 0    # optimizer steps dropped (non-finite, GradScaler overflow)
        self.epochs_done = 0      # end_epoch calls
        self.averaging_started = averaging_trigger is None
        self.should_stop = False
        self.last_step_skipped = False
        self.last_grad_norm: float | None = None
        self.accumulate = accumulate
        self._closures: list[Callable[[], Tensor]] = []   # SAM: the cycle's micro-batches
        self._cycle_loss: Tensor | None = None            # sum of the cycle's losses
        self._applied_lrs: list[float] | None = None
        self.observers: list[Any] = []
        for observer in observers:
            self.observe(observer)
        if self._has_eval_point():
            optimizer.train()
        self._apply_lr()
        self._carry_average()

    # ------------------------------------------------------------------ helpers
    def _is_sam(self) -> bool:
        return hasattr(self.optimizer, "first_step") and hasattr(self.optimizer, "second_step")

    def _has_eval_point(self) -> bool:
        opt = self.optimizer
        return callable(getattr(opt, "train", None)) and callable(getattr(opt, "eval", None))

    @property
    def schedules_lr(self) -> bool:
        """Whether this Method sets the learning rate (a schedule or a warm-up)."""
        return self.schedule is not None or self.warmup_steps > 0

    def _lr_factor(self) -> float:
        factor = 1.0
        if self.schedule is not None:
            progress = self.steps / self.steps_per_epoch if self.per_step else self.epochs_done
            factor = float(self.schedule(progress))
        if self.steps < self.warmup_steps:
            factor *= (self.steps + 1) / self.warmup_steps
        return factor

    def _sync_groups(self) -> None:
        """Adopt param groups added since the last step; refuse an lr set by someone else."""
        groups = self.optimizer.param_groups
        if len(groups) > len(self.base_lrs):
            new = groups[len(self.base_lrs):]
            self.base_lrs += [g["lr"] for g in new]
            if self._applied_lrs is not None:
                self._applied_lrs += [float(g["lr"]) for g in new]
        if self._applied_lrs is None or not self.schedules_lr:
            return
        for i, (group, lr) in enumerate(zip(groups, self._applied_lrs)):
            if float(group["lr"]) != lr:
                raise ValueError(
                    f"The learning rate of param group {i} is {float(group['lr']):.6g}, not the "
                    f"{lr:.6g} this Method set: something else (a torch LR scheduler?) changes "
                    "it while the Method schedules it. Let one of them own the lr: drop the "
                    "other scheduler, or set method.schedule = None and method.warmup_steps = 0 "
                    "(or build the Method with schedule=None) to hand the lr to it")

    def _apply_lr(self) -> None:
        if not self.schedules_lr:
            return
        self._sync_groups()
        factor = self._lr_factor()
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor   # a tensor lr stays a tensor (a new one: base is kept)
        self._applied_lrs = [float(g["lr"]) for g in self.optimizer.param_groups]

    def _carry_average(self) -> None:
        """Let an optimizer that can (Padam/AdaBound, fused) make the average's per-step
        collections inside its step: the same average, no second pass (polyak.optim._carry)."""
        carry = getattr(self.optimizer, "carry_average", None)
        if callable(carry) and self.averaging is not None and self.averaging_started:
            carry(self.averaging)

    def observe(self, observer: Any) -> Any:
        """Attach ``observer`` (before training; see the module docstring); returns it."""
        missing = [m for m in ("step", "end_epoch", "state_dict", "load_state_dict")
                   if not callable(getattr(observer, m, None))]
        if missing:
            raise ValueError(f"Invalid observer: {observer!r} (it needs step(), "
                             "end_epoch(epoch), state_dict() and load_state_dict(); missing "
                             f"{', '.join(missing)})")
        self.observers.append(observer)
        return observer

    @property
    def lr(self) -> float:
        """The current learning rate of the first parameter group."""
        return float(self.optimizer.param_groups[0]["lr"])

    # ------------------------------------------------------------------ events
    def end_epoch(
        self, epoch: int, val_loss: float | None = None, val_acc: float | None = None,
        bn_loader: Iterable[Any] | None = None,
        forward: Callable[[nn.Module, Any], Any] | None = None,
    ) -> None:
        """Tell every piece that ``epoch`` (0-based, the next one) ended; then set the next
        epoch's learning rate. ``bn_loader``/``forward`` reach the averaging (PWA recalibrates
        BatchNorm at a phase end, and warns without a loader; ``KEEP_BN_STATS`` keeps the
        statistics on purpose). Raising leaves the Method as it was."""
        self._check_epoch(epoch)
        self._check_metrics(val_loss, val_acc)
        if self._accumulation.count:          # a cycle cut short by the end of the epoch
            self._optimizer_step()
        for observer in self.observers:       # before the averaging: the raw iterate
            observer.end_epoch(epoch)
        was_averaging = self.averaging_started
        self._end_averaging(epoch, val_loss, val_acc, bn_loader, forward)
        on_epoch = getattr(self.optimizer, "end_epoch", None)
        if callable(on_epoch):
            on_epoch(epoch, val_loss=val_loss)
        for switch in self.switches:
            if switch.due(epoch, val_loss, val_acc):
                if switch.on_switch is not None:
                    switch.on_switch(self.optimizer)
                self.optimizer, switch.done_epoch = switch.to(self.optimizer), epoch
                self._carry_average()
        if self.stop_trigger is not None and not self.should_stop and was_averaging:
            metric = _metric_for(self.stop_trigger, val_loss, val_acc, "stop_trigger")
            self.should_stop = bool(self.stop_trigger.update(metric, epoch))
        self.epochs_done = epoch + 1
        if not self.per_step:
            self._apply_lr()

    def _check_epoch(self, epoch: int) -> None:
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch != self.epochs_done:
            raise ValueError(
                f"Invalid epoch: {epoch!r} (expected {self.epochs_done}: end_epoch takes every "
                "epoch, 0-based and in order; to resume a run, load_state_dict() a checkpoint "
                "of this Method first)")

    def _check_metrics(self, val_loss: float | None, val_acc: float | None) -> None:
        """Every metric this epoch's triggers will read is there, before anything changes."""
        watchers = [("averaging_trigger", self.averaging_trigger, not self.averaging_started),
                    ("stop_trigger", self.stop_trigger,
                     not self.should_stop and self.averaging_started)]
        watchers += [("SwitchOptimizer", s.trigger, s.done_epoch is None) for s in self.switches]
        for who, trigger, active in watchers:
            if trigger is not None and active:
                _metric_for(trigger, val_loss, val_acc, who)
        opt = self.optimizer
        if (getattr(opt, "trigger", None) is not None and not getattr(opt, "switched", True)
                and callable(getattr(opt, "end_epoch", None))):
            _metric_for(opt.trigger, val_loss, None, type(opt).__name__)

    def _end_averaging(self, epoch, val_loss, val_acc, bn_loader, forward) -> None:
        trigger, avg = self.averaging_trigger, self.averaging
        saved = None
        if trigger is not None and not self.averaging_started:
            saved = copy.deepcopy(trigger.state_dict())
            metric = _metric_for(trigger, val_loss, val_acc, "averaging_trigger")
            self.averaging_started = bool(trigger.update(metric, epoch))
        try:
            if avg is not None and self.averaging_started:
                avg.end_epoch(epoch, bn_loader=bn_loader, forward=forward)
            elif avg is not None and callable(getattr(avg, "skip_to", None)):
                avg.skip_to(epoch + 1)
        except BaseException:
            if saved is not None:
                trigger.load_state_dict(saved)
                self.averaging_started = False
            raise
        self._carry_average()

    @property
    def reads_val_metrics(self) -> bool:
        """Whether the next :meth:`end_epoch` reads ``val_loss``/``val_acc`` (a trigger that
        is still active watches one); a loop may skip evaluating them when it does not."""
        try:
            self._check_metrics(None, None)
        except ValueError:
            return True
        return False

    @property
    def reports_live_weights(self) -> bool:
        """Whether :meth:`eval_weights` would yield the live weights and BatchNorm buffers
        unchanged (no average in effect, no evaluation point such as schedule-free's or
        Lookahead's slow weights)."""
        avg = self.averaging
        averaged = avg is not None and getattr(avg, "reports_average", True) and avg.has_average
        return not averaged and not self._has_eval_point()

    @contextlib.contextmanager
    def eval_weights(
        self, bn_loader: Iterable[Any] | None = None,
        forward: Callable[[nn.Module, Any], Any] | None = None,
    ) -> Iterator[nn.Module]:
        """The weights this method reports (e.g. the average, with recalibrated BatchNorm).

        Inside the block the model holds them; on exit the live weights, BatchNorm buffers and the
        optimizer's training point are back, also when the block raises. When they are not the
        live weights and the model has BatchNorm, pass ``bn_loader`` (training batches) to
        recompute its statistics for them: without it a
        :class:`~polyak.averaging.StaleBatchNormWarning` says they are the live weights' (once
        per Method); ``bn_loader=polyak.averaging.KEEP_BN_STATS`` keeps them on purpose.
        """
        avg = self.averaging
        if avg is not None and getattr(avg, "reports_average", True) and avg.has_average:
            with avg.applied(self.model, bn_loader=bn_loader, forward=forward):
                yield self.model
        elif self._has_eval_point():
            from polyak.averaging import recalibrate_bn, saved_bn_buffers
            from polyak.averaging.bn import bn_loader_for

            bn_loader = bn_loader_for(self, self.model, bn_loader, "Method.eval_weights() "
                                      "put the schedule-free optimizer's evaluation point in")
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
        """Optimizer, averaging, triggers, switches, observers, scaler and counters, with the
        recipe the Method was built from (:attr:`recipe`, :attr:`name`) and its optimizer's
        class."""
        return _method_state.state_of(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`: all of it or, when it raises, none of it. Everything is
        checked before anything changes: a state of another recipe (another base optimizer or
        averaging than :attr:`recipe`; other hyper-parameters load, and come with the state),
        of another optimizer class, of other averages/triggers/switches/observers, of averages
        of another budget or model. A cycle of gradient accumulation in progress is dropped
        (save at epoch ends)."""
        _method_state.load_into(self, state)
        self._accumulation.reset()
        self._closures, self._cycle_loss = [], None
        self._applied_lrs = [float(g["lr"]) for g in self.optimizer.param_groups]
        self._carry_average()

    def __repr__(self) -> str:
        parts = [type(self.optimizer).__name__]
        if self.averaging is not None:
            parts.append(type(self.averaging).__name__)
        return f"Method({self.name!r}: {' + '.join(parts)})"

