"""The step of :class:`polyak.method.Method`: micro-batches, backward, the optimizer update.

One optimizer step per ``accumulate`` calls of ``step``; its update (SAM: each of its two
passes) runs the pieces of :mod:`polyak.loop` in order: ``GradScaler.unscale_``, completing a
cycle cut short, ``clip``, the finiteness check (with the loss), then ``optimizer.step()`` or a
dropped step. SAM's passes are SAM (Foret et al.) Algorithm 1 over the whole accumulated batch:
the clean gradient of every micro-batch, ``first_step`` (w + e), every micro-batch again at
w + e (BatchNorm statistics frozen), ``second_step``. Private: the API is ``Method``'s.

The loop options (``clip``, ``scaler``, ``accumulate``, ``nonfinite``, ``warmup_steps``,
``schedule``, ``steps_per_epoch``) are properties: the constructor and a later assignment
(``method.clip = ClipGradNorm(1.0)``) go through the same checks (:func:`check_loop_options`).
``clip`` takes a callable only: a bare number is refused, since it could mean a norm or a value
bound. ``accumulate`` and ``scaler``
cannot change while a cycle of micro-batches is in progress (its gradients were scaled for the
old values).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from polyak.loop import Accumulation, grads_finite, params_with_grad

_SAM_CLOSURE = ("{name} needs a closure: SAM takes the gradient at w and again at w + e, so it "
                "must evaluate the loss twice; call method.step(lambda: loss_fn(model(x), y)) "
                "(the closure returns the loss, Method calls backward)")
_BACKWARD_IN_CLOSURE = ("the closure passed to Method.step called backward() itself; it must "
                        "only compute and return the loss (Method calls backward, with loss "
                        "scaling and accumulation); for a loop that calls backward() itself use "
                        "`loss.backward(); method.step()` without a closure")


class NonFiniteError(FloatingPointError):
    """A step met a non-finite loss or gradient under ``nonfinite="raise"``."""


def _check_clip(clip: Any) -> None:
    if clip is None or callable(clip):
        return
    hint = ""
    if isinstance(clip, (int, float)) and not isinstance(clip, bool):
        hint = (f"; for a gradient norm of at most {clip!r} write ClipGradNorm({clip!r}), for "
                f"entries in [-{clip!r}, {clip!r}] ClipGradValue({clip!r})")
    raise ValueError(f"Invalid clip: {clip!r} (allowed: None, polyak.loop.ClipGradNorm(...), "
                     f"ClipGradValue(...) or a callable(parameters) -> norm or None{hint})")


def _check_scaler(scaler: Any) -> None:
    if scaler is not None and not all(hasattr(scaler, a) for a in ("scale", "unscale_",
                                                                   "update")):
        raise ValueError(f"Invalid scaler: {scaler!r} (allowed: None or a "
                         "torch.amp.GradScaler)")


def _check_nonfinite(nonfinite: Any) -> None:
    if not isinstance(nonfinite, str) or nonfinite not in ("raise", "skip"):
        raise ValueError(f"Invalid nonfinite: {nonfinite!r} (allowed: 'raise', 'skip')")


def _check_warmup_steps(warmup_steps: Any) -> None:
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"Invalid warmup_steps: {warmup_steps!r} (allowed: an integer >= 0)")


def _check_schedule(schedule: Any) -> None:
    if schedule is not None and not callable(schedule):
        raise ValueError(f"Invalid schedule: {schedule!r} (allowed: None or a function of the "
                         "progress in epochs returning the lr factor)")


def _check_steps_per_epoch(steps: Any) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"Invalid steps_per_epoch: {steps!r} (allowed: an integer >= 1)")


def check_loop_options(clip: Any = None, scaler: Any = None, accumulate: Any = 1,
                       nonfinite: Any = "raise", warmup_steps: Any = 0, schedule: Any = None,
                       steps_per_epoch: Any = 1) -> None:
    """The checks of the Method's loop options, also run on every later assignment."""
    _check_clip(clip)
    _check_scaler(scaler)
    Accumulation(accumulate)
    _check_nonfinite(nonfinite)
    _check_warmup_steps(warmup_steps)
    _check_schedule(schedule)
    _check_steps_per_epoch(steps_per_epoch)


class Stepping:
    """The step half of :class:`~polyak.method.Method` (a mixin: it uses Method's attributes)
    with its validated loop options."""

    optimizer: Any
    model: nn.Module
    steps: int
    epochs_done: int
    observers: list[Any]
    _accumulation: Accumulation

    # ------------------------------------------------------------------ loop options
    @property
    def clip(self) -> Any:
        """Gradient clipping applied to the gradient each pass steps with (``None``: none)."""
        return self._clip

    @clip.setter
    def clip(self, clip: Any) -> None:
        _check_clip(clip)
        self._clip = clip

    @property
    def scaler(self) -> Any:
        """The ``torch.amp.GradScaler`` scaling the loss (``None``: none)."""
        return self._scaler

    @scaler.setter
    def scaler(self, scaler: Any) -> None:
        _check_scaler(scaler)
        self._refuse_mid_cycle("scaler", scaler)
        self._scaler = scaler

    @property
    def accumulate(self) -> int:
        """Micro-batches (calls of :meth:`step`) per optimizer step."""
        return self._accumulation.n

    @accumulate.setter
    def accumulate(self, accumulate: int) -> None:
        fresh = Accumulation(accumulate)
        self._refuse_mid_cycle("accumulate", accumulate)
        self._accumulation = fresh

    @property
    def nonfinite(self) -> str:
        """``"raise"`` or ``"skip"``: what a non-finite loss or gradient does to its step."""
        return self._nonfinite_policy

    @nonfinite.setter
    def nonfinite(self, nonfinite: str) -> None:
        _check_nonfinite(nonfinite)
        self._nonfinite_policy = nonfinite

    @property
    def warmup_steps(self) -> int:
        """Optimizer steps of linear learning-rate warm-up (0: none)."""
        return self._warmup_steps

    @warmup_steps.setter
    def warmup_steps(self, warmup_steps: int) -> None:
        _check_warmup_steps(warmup_steps)
        self._warmup_steps = warmup_steps

    @property
    def schedule(self) -> Any:
        """The lr factor as a function of the progress in epochs (``None``: the lr is left to
        whatever else sets it, e.g. a torch LR scheduler)."""
        return self._schedule

    @schedule.setter
    def schedule(self, schedule: Any) -> None:
        _check_schedule(schedule)
        self._schedule = schedule

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch (the progress a per-step schedule reads)."""
        return self._steps_per_epoch

    @steps_per_epoch.setter
    def steps_per_epoch(self, steps: int) -> None:
        _check_steps_per_epoch(steps)
        self._steps_per_epoch = steps

    def _refuse_mid_cycle(self, name: str, value: Any) -> None:
        acc = getattr(self, "_accumulation", None)
        if acc is not None and acc.count:
            raise ValueError(f"Invalid {name} change to {value!r}: a cycle of {acc.count} of "
                             f"{acc.n} micro-batches is in progress (its gradients are scaled "
                             "for the current value); change it between optimizer steps")

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One micro-batch: ``closure()`` returns its loss (no backward), or, without a closure,
        the gradients are already there (torch-style). Every ``accumulate``-th call makes the
        optimizer step. Returns the (clean) loss of this micro-batch, detached."""
        if self._accumulation.count == 0:
            self._start_cycle(closure is not None)
        if closure is None:
            if self._is_sam():
                raise ValueError(_SAM_CLOSURE.format(name=type(self.optimizer).__name__))
            loss = None
        else:
            loss = self._forward_backward(closure)
            if self._is_sam():
                self._closures.append(closure)
        if self._accumulation.add():
            self._optimizer_step()
        return loss

    def backward(self, loss: Tensor) -> None:
        """Backward of one micro-batch's ``loss`` for a torch-style loop (then :meth:`step`):
        divided by ``accumulate`` and scaled by the GradScaler when there is one."""
        self._add_loss(loss)
        target = self._accumulation.scale(loss)
        (self.scaler.scale(target) if self.scaler is not None else target).backward()

    def _start_cycle(self, zero: bool) -> None:
        if self.per_step or self.steps < self.warmup_steps:
            self._apply_lr()
        else:
            self._sync_groups()
        if zero:
            self.optimizer.zero_grad(set_to_none=True)

    def _add_loss(self, loss: Tensor) -> None:
        value = loss.detach()
        self._cycle_loss = value if self._cycle_loss is None else self._cycle_loss + value

    def _forward_backward(self, closure: Callable[[], Tensor], second: bool = False) -> Tensor:
        first = self._accumulation.count == 0 and not second
        loss = closure()
        if not isinstance(loss, Tensor) or not loss.requires_grad:
            if first and params_with_grad(self.optimizer):
                raise ValueError(_BACKWARD_IN_CLOSURE)
            raise ValueError(f"Invalid closure result: {type(loss).__name__} (the closure must "
                             "return the loss tensor with its graph; Method calls backward)")
        if first and params_with_grad(self.optimizer):
            raise ValueError(_BACKWARD_IN_CLOSURE)
        try:
            if second:
                target = loss / len(self._closures)
                (self.scaler.scale(target) if self.scaler is not None else target).backward()
            else:
                self.backward(loss)
        except RuntimeError as exc:
            if "second time" in str(exc) or "already been freed" in str(exc):
                raise ValueError(_BACKWARD_IN_CLOSURE) from exc
            raise
        return loss.detach()

    def _optimizer_step(self) -> None:
        """The update of one accumulation cycle: unscale, clip, check, step (or drop)."""
        try:
            done = self._sam_update() if self._is_sam() else self._plain_update()
        finally:
            self.optimizer.zero_grad(set_to_none=True)
            self._accumulation.reset()
            self._closures, self._cycle_loss = [], None
        self.last_step_skipped = not done
        if not done:
            self.skipped_steps += 1
            return
        self._after_step()

    def _after_step(self) -> None:
        """An optimizer step was taken: count it, then tell the averaging and the observers."""
        self.steps += 1
        if self.averaging is not None and self.averaging_started:
            step_hook = getattr(self.averaging, "step", None)
            if step_hook is not None:
                step_hook()
        for observer in self.observers:
            observer.step()

    def _prepared_grads(self, what: str) -> tuple[list[Tensor], bool]:
        """Unscale, complete a short cycle, clip; (parameters with a gradient, all finite)."""
        params = params_with_grad(self.optimizer)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        self._accumulation.rescale(params)
        norm = self.clip(params) if self.clip is not None else None
        self.last_grad_norm = None if norm is None else float(norm)
        finite = grads_finite(params, norm)
        if not finite and self.scaler is None:
            self._nonfinite(f"gradient ({what})", params)
        return params, finite

    def _loss_ok(self) -> bool:
        loss = self._cycle_loss
        if loss is None or bool(torch.isfinite(loss)):
            return True
        return self._nonfinite(f"loss ({float(loss)})", [])

    def _nonfinite(self, what: str, params: list[Tensor]) -> bool:
        if self.nonfinite == "skip":
            return False
        bad = _first_nonfinite(self.model, params)
        raise NonFiniteError(
            f"Non-finite {what}{bad} at optimizer step {self.steps} (epoch {self.epochs_done}); "
            "the step was not taken. Lower the learning rate, clip gradients (clip=...), or "
            "build the Method with nonfinite='skip' to drop such steps")

    def _plain_update(self) -> bool:
        if not self._loss_ok():
            return False
        _, finite = self._prepared_grads("the step")
        if finite:
            self.optimizer.step()
        if self.scaler is not None:
            self.scaler.update()
        return finite

    def _sam_update(self) -> bool:
        from polyak.optim.sam import frozen_bn_stats

        opt = self.optimizer
        if not self._loss_ok():
            return False
        params = params_with_grad(opt)
        if self.scaler is not None:   # unscale by hand: GradScaler.unscale_ once per update
            with torch.no_grad():
                torch._foreach_mul_([p.grad for p in params], 1.0 / self.scaler.get_scale())
        self._accumulation.rescale(params)
        norm = self.clip(params) if self.clip is not None else None
        if not grads_finite(params, norm):
            if self.scaler is None:
                return self._nonfinite("gradient (SAM's first pass)", params)
            self.scaler.unscale_(opt)   # records the overflow, so update() backs off
            self.scaler.update()
            return False
        opt.first_step()
        opt.zero_grad(set_to_none=True)
        with torch.enable_grad(), frozen_bn_stats(self.model):
            for closure in self._closures:
                self._forward_backward(closure, second=True)
        try:
            _, finite = self._prepared_grads("SAM's second pass")
        except NonFiniteError:
            _restore(opt)
            raise
        if finite:
            opt.second_step()
        else:
            _restore(opt)
        if self.scaler is not None:
            self.scaler.update()
        return finite


def _restore(opt: Any) -> None:
    """Back to w after SAM's first step, without a base step (a dropped step)."""
    restore = getattr(opt, "restore", None)
    if not callable(restore):
        raise TypeError(f"{type(opt).__name__} cannot drop a step after first_step(): it has no "
                        "restore() (polyak.optim.SAM has one)")
    restore()


def _first_nonfinite(model: nn.Module, params: list[Tensor]) -> str:
    """`` of <name>``: the first parameter whose gradient has a non-finite entry."""
    names = {id(p): n for n, p in model.named_parameters()}
    for p in params:
        if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
            return f" of {names.get(id(p), tuple(p.shape))}"
    return ""
