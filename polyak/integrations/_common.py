"""What both framework integrations share: the optimizer a framework holds, one Method step
when the framework runs forward and backward itself, and the reported weights as a state dict.

A training framework owns the loop: it calls ``optimizer.step(closure)`` (Lightning: the closure
runs the forward AND backward pass) or ``optimizer.step()`` after its own backward (Hugging Face,
and Lightning under a ``GradScaler``), and zeroes gradients itself, also between the micro-batches
of gradient accumulation. :class:`MethodOptimizer` is the optimizer it is given: every step it
takes is one :class:`~polyak.method.Method` step (per-step learning rate, the optimizer update,
SAM's two passes, the per-step averaging collection), so under accumulation the average is
collected once per optimizer step, and a step a ``GradScaler`` skips collects nothing. Its
``state_dict`` is the whole Method's, so the framework's own checkpoints carry it.

Nothing here imports a framework; :mod:`polyak.integrations.lightning` and
:mod:`polyak.integrations.hf` do.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from polyak.method import Method
from polyak.optim.sam import frozen_bn_stats

__all__ = ["MethodOptimizer", "method_step", "sam_step", "check_method", "reported_state",
           "metric_needs", "budget_epochs"]


def _is_sam(optimizer: Any) -> bool:
    return hasattr(optimizer, "first_step") and hasattr(optimizer, "second_step")


def budget_epochs(method: Method) -> int | None:
    """The epoch budget ``method`` was built for: :attr:`Method.epochs` (every recipe sets it),
    else the epochs a :class:`~polyak.averaging.PhaseWise` average's phases sum to; ``None``
    for a Method built without one. The integrations refuse a trainer whose budget differs,
    for every recipe alike (the schedule, the averaging start and the phases are laid out over
    it)."""
    epochs = getattr(method, "epochs", None)
    return epochs if epochs is not None else getattr(method.averaging, "total_epochs", None)


def method_step(method: Method, closure: Callable[[], Any] | None = None,
                second_pass: Callable[[], Any] | None = None) -> Any:
    """One optimizer step of ``method`` whose forward and backward the framework runs.

    ``closure`` (Lightning) runs forward and backward and returns the loss; without it the
    gradients are already there (Hugging Face, a ``GradScaler``). Any optimizer but SAM: the
    closure, then the torch-style :meth:`Method.step` (learning rate, ``clip``, the update, the
    per-step averaging collection). SAM: :func:`sam_step`.
    """
    if _is_sam(method.optimizer):
        return sam_step(method, closure, second_pass)
    loss = None
    if closure is not None:
        with torch.enable_grad():
            loss = closure()
    method.step()
    return loss


def sam_step(method: Method, closure: Callable[[], Any] | None,
             second_pass: Callable[[], Any] | None) -> Any:
    """SAM's step when the framework runs both backward passes (``Method.step`` wants a closure
    that leaves backward to it). With ``closure``: ``SAM.step(closure)``, the closure evaluated
    at w and at w + e. Without: the first step from the present (clean) gradients, then
    ``second_pass()`` (forward and backward of the same batch) at w + e with BatchNorm statistics
    frozen, then the second step. The Method's ``clip`` applies to each pass's gradient; the
    learning rate, step count, per-step averaging and observers are those of :meth:`Method.step`."""
    opt = method.optimizer
    params = [p for group in opt.param_groups for p in group["params"]]

    def clip() -> None:
        if method.clip is not None:
            method.clip([p for p in params if p.grad is not None])

    method._start_cycle(False)        # this step's learning rate, as Method.step sets it
    loss = None
    if closure is not None:
        def clipped() -> Any:
            out = closure()
            clip()
            return out
        loss = opt.step(clipped)
    elif second_pass is not None:
        clip()
        opt.first_step(zero_grad=True)
        with torch.enable_grad(), frozen_bn_stats(method.model):
            second_pass()
        clip()
        opt.second_step()
    else:
        raise ValueError("SAM needs a second forward and backward pass per step: "
                         "give step() a closure")
    opt.zero_grad(set_to_none=True)
    method.last_step_skipped = False
    method._after_step()     # the step count, the per-step averaging and the observers
    return loss


def check_method(method: Method, fail: Callable[[str], None], accumulate_option: str) -> None:
    """What the framework does itself must not be configured in the Method too."""
    if method.accumulate != 1:
        fail(f"Method(accumulate={method.accumulate}) is not supported here: the framework "
             f"accumulates, set {accumulate_option} instead")
    if method.scaler is not None:
        fail("Method(scaler=...) is not supported here: set the framework's precision instead")


class MethodOptimizer(torch.optim.Optimizer):
    """The optimizer handed to a framework: a view of ``method.optimizer`` whose ``step`` is one
    Method step (:func:`method_step`) and whose state is the Method's.

    ``param_groups``, ``state`` and ``defaults`` are those of the optimizer the Method holds now
    (a switch may replace it). ``second_pass`` is set by an integration that steps without a
    closure (Hugging Face) so that SAM can run its pass at the perturbed point.
    """

    def __init__(self, method: Method) -> None:  # no super().__init__: the state is the Method's
        self.method = method
        self.second_pass: Callable[[], Any] | None = None
        for hooks in ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks",
                      "_optimizer_state_dict_pre_hooks", "_optimizer_state_dict_post_hooks",
                      "_optimizer_load_state_dict_pre_hooks",
                      "_optimizer_load_state_dict_post_hooks"):
            setattr(self, hooks, OrderedDict())

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.method.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, groups: list[dict[str, Any]]) -> None:
        self.method.optimizer.param_groups = groups

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self.method.optimizer.state

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return getattr(self.method.optimizer, "defaults", {})

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        return method_step(self.method, closure, self.second_pass)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.method.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self.method.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.method.load_state_dict(state_dict)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        raise ValueError("Invalid add_param_group: the Method's optimizer is fixed when the "
                         "Method is built; build it on every parameter to train")

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"MethodOptimizer({self.method!r})"


def reported_state(method: Method, bn_loader: Iterable[Any] | None,
                   forward: Callable[[nn.Module, Any], Any] | None = None) -> dict[str, Any]:
    """A copy of the model's state dict holding the weights ``method`` reports (the average with
    BatchNorm recalibrated on ``bn_loader``, or the live weights); the model is left as it was."""
    with method.eval_weights(bn_loader=bn_loader, forward=forward) as model:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}


def metric_needs(method: Method) -> list[str]:
    """The validation metrics ``method``'s triggers read at an epoch end ("val_loss"/"val_acc")."""
    triggers = []
    if method.averaging_trigger is not None and not method.averaging_started:
        triggers.append(method.averaging_trigger)
    if method.stop_trigger is not None:
        triggers.append(method.stop_trigger)
    triggers += [s.trigger for s in method.switches if s.trigger is not None]
    opt_trigger = getattr(method.optimizer, "trigger", None)
    needs = ["val_loss"] if opt_trigger is not None else []
    for trigger in triggers:
        needs.append("val_acc" if getattr(trigger, "mode", "min") == "max" else "val_loss")
    return sorted(set(needs))
