"""Shared pieces of the optimizers: argument checks, the foreach default, grouping, roots.

Private: nothing here is part of the public API.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from numbers import Real
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer


def is_real(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def check(name: str, value: Any, ok: bool, allowed: str) -> None:
    """Raise ``ValueError`` naming the parameter, its value and what is allowed, unless ``ok``."""
    if not ok:
        raise ValueError(f"Invalid {name}: {value!r} (allowed: {allowed})")


def check_nonneg(name: str, value: Any) -> None:
    """A finite real number >= 0 (lr, eps, weight_decay, rho)."""
    ok = is_real(value) and math.isfinite(value) and value >= 0
    check(name, value, ok, f"a finite number {name} >= 0")


def check_positive(name: str, value: Any) -> None:
    """A finite real number > 0 (final_lr, gamma)."""
    ok = is_real(value) and math.isfinite(value) and value > 0
    check(name, value, ok, f"a finite number {name} > 0")


def check_betas(betas: Any) -> None:
    """Two real numbers, each in [0, 1)."""
    ok = (
        isinstance(betas, Sequence)
        and len(betas) == 2
        and all(is_real(b) and 0.0 <= b < 1.0 for b in betas)
    )
    check("betas", betas, ok, "a pair (beta1, beta2) with 0 <= beta < 1")


def check_foreach(foreach: Any) -> None:
    check("foreach", foreach, foreach is None or isinstance(foreach, bool), "None, True, False")


def check_params(params: list[Tensor], name: str) -> None:
    """Reject complex parameters, which these update rules are not written for."""
    for p in params:
        if p.is_complex():
            raise ValueError(f"{name} does not support complex parameters (got {p.dtype})")


def check_dense(grad: Tensor, name: str) -> None:
    if grad.is_sparse:
        raise RuntimeError(
            f"{name} does not support sparse gradients; use a dense layer "
            "(e.g. nn.Embedding(sparse=False)) or torch.optim.SparseAdam"
        )


_FOREACH_DEVICES: tuple[str, ...] | None = None


def _foreach_devices() -> tuple[str, ...]:
    global _FOREACH_DEVICES
    if _FOREACH_DEVICES is None:
        try:
            from torch.utils._foreach_utils import _get_foreach_kernels_supported_devices

            devices = list(_get_foreach_kernels_supported_devices())
        except ImportError:  # pragma: no cover - very old or very new torch
            devices = ["cuda"]
        _FOREACH_DEVICES = tuple({*devices, "cpu"})
    return _FOREACH_DEVICES


def use_foreach(foreach: bool | None, tensors: list[Tensor]) -> bool:
    """Resolve ``foreach=None``: the multi-tensor path when every tensor is a plain tensor on a
    device with ``torch._foreach_*`` kernels (CPU included), the single-tensor path otherwise."""
    if foreach is not None:
        return foreach
    if torch.jit.is_scripting():
        return False
    devices = _foreach_devices()
    return all(type(t) in (Tensor, torch.nn.Parameter) and t.device.type in devices
               for t in tensors)


def by_device_and_dtype(tensorlists: list[list[Any]]) -> list[list[list[Any]]]:
    """Split parallel tensor lists into groups of one device and dtype (the first list decides).

    Returns one ``[list0, list1, ...]`` per group. Empty lists stay empty in every group.
    """
    grouped = Optimizer._group_tensors_by_device_and_dtype(tensorlists)
    return [list(lists) for lists, _ in grouped.values()]


def _root_chain(exponent: float) -> tuple[str, ...] | None:
    """In-place kernels computing ``x ** exponent`` for exponent 1, 1/2, 1/4, 1/8; else None.

    ``x**(1/4) = rsqrt(rsqrt(x))``: two roundings per rsqrt (1/sqrt), still within about 2 ulp,
    and on CPU torch's rsqrt kernel is ~1.5x faster than its sqrt kernel and 9x faster than pow.
    """
    return {1.0: (), 0.5: ("sqrt",), 0.25: ("rsqrt", "rsqrt"),
            0.125: ("sqrt", "rsqrt", "rsqrt")}.get(exponent)


def power_(tensors: list[Tensor], exponent: float, foreach: bool) -> None:
    """``x <- x ** exponent`` in place: a chain of square roots for 1/2, 1/4, 1/8 (cheaper than
    pow), one ``pow`` for any other exponent. Both paths run the same kernels."""
    chain = _root_chain(exponent)
    if chain is None:
        if foreach:
            torch._foreach_pow_(tensors, exponent)
        else:
            for x in tensors:
                x.pow_(exponent)
        return
    for op in chain:
        if foreach:
            getattr(torch, f"_foreach_{op}_")(tensors)
        else:
            for x in tensors:
                getattr(x, f"{op}_")()


def increment_steps(steps: list[Tensor]) -> None:
    """``step += 1`` on a list of per-parameter float step counters (as torch.optim keeps them)."""
    if steps and steps[0].is_cpu:
        # One wrapped scalar for the whole list: the CPU path otherwise re-wraps 1 per tensor.
        torch._foreach_add_(steps, torch.tensor(1.0), alpha=1.0)
    else:
        torch._foreach_add_(steps, 1.0)


def gather_adam_state(
    optimizer: Optimizer, group: dict[str, Any], name: str, max_key: str,
    on_new_state: Callable[[Tensor], None] | None = None,
) -> tuple[list[Tensor], ...]:
    """Params with a gradient and their Adam-style state (created lazily, as torch does):
    ``(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps)``; ``group[max_key]``
    (``"amsgrad"``/``"amsbound"``) adds the running maximum of the second moment."""
    params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps = [], [], [], [], [], []
    for p in group["params"]:
        if p.grad is None:
            continue
        check_dense(p.grad, name)
        state = optimizer.state[p]
        if len(state) == 0:
            if on_new_state is not None:
                on_new_state(p)
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if group[max_key]:
            if "max_exp_avg_sq" not in state:
                state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            max_exp_avg_sqs.append(state["max_exp_avg_sq"])
        params.append(p)
        grads.append(p.grad)
        exp_avgs.append(state["exp_avg"])
        exp_avg_sqs.append(state["exp_avg_sq"])
        steps.append(state["step"])
    return params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps


class KeepsPathChoice:
    """Mixin of the Adam-type optimizers: a checkpoint moves between the single-tensor, foreach
    and fused paths. ``load_state_dict`` restores state and hyper-parameters but keeps this
    instance's ``foreach``/``fused`` choice; unpickling a checkpoint from before ``fused``
    existed defaults it to ``None``."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore state and hyper-parameters; ``foreach`` and ``fused`` stay this instance's."""
        modes = [(group["foreach"], group["fused"]) for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, (foreach, fused) in zip(self.param_groups, modes):
            group["foreach"], group["fused"] = foreach, fused

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("fused", None)  # checkpoints and pickles from before fused
