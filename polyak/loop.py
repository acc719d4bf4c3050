"""Pieces of a training step that :class:`polyak.method.Method` composes: gradient clipping,
the finiteness check of a step, loss scaling for mixed precision and gradient accumulation.

Each piece is usable on its own in a hand-written loop; ``Method`` applies them in this order,
once per optimizer step (for SAM: once per pass, on the gradient that pass steps with)::

    scaled backward of loss / N for N micro-batches      (Accumulation, GradScaler.scale)
    GradScaler.unscale_(optimizer)                        (gradients back to their true size)
    clip(parameters) -> total norm                        (ClipGradNorm / ClipGradValue)
    finite? -> optimizer.step() : skip the step           (grads_finite; scaler.update())

A skipped step changes no weight, no optimizer state, no average, no trigger and no step counter.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = ["ClipGradNorm", "ClipGradValue", "grads_finite", "params_with_grad",
           "Accumulation"]


def params_with_grad(optimizer: Any) -> list[Tensor]:
    """Every parameter of ``optimizer``'s groups that has a gradient, each once, in order."""
    seen: set[int] = set()
    out = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is not None and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


class ClipGradNorm:
    """Rescale the gradients so that their joint ``norm_type``-norm is at most ``max_norm``
    (``torch.nn.utils.clip_grad_norm_``). Calling it returns the norm before clipping."""

    def __init__(self, max_norm: float, norm_type: float = 2.0) -> None:
        ok = isinstance(max_norm, (int, float)) and not isinstance(max_norm, bool)
        if not ok or not math.isfinite(max_norm) or max_norm <= 0:
            raise ValueError(f"Invalid max_norm: {max_norm!r} (a finite number > 0)")
        ok = isinstance(norm_type, (int, float)) and not isinstance(norm_type, bool)
        if not ok or not (norm_type > 0):
            raise ValueError(f"Invalid norm_type: {norm_type!r} (a number > 0, or inf)")
        self.max_norm, self.norm_type = float(max_norm), float(norm_type)

    def __call__(self, params: Iterable[Tensor]) -> Tensor | None:
        params = list(params)
        if not params:
            return None
        return torch.nn.utils.clip_grad_norm_(params, self.max_norm, norm_type=self.norm_type)

    def __repr__(self) -> str:
        return f"ClipGradNorm(max_norm={self.max_norm}, norm_type={self.norm_type})"


class ClipGradValue:
    """Clamp every gradient entry to ``[-clip_value, clip_value]``
    (``torch.nn.utils.clip_grad_value_``). Calling it returns ``None`` (no norm computed)."""

    def __init__(self, clip_value: float) -> None:
        ok = isinstance(clip_value, (int, float)) and not isinstance(clip_value, bool)
        if not ok or not math.isfinite(clip_value) or clip_value <= 0:
            raise ValueError(f"Invalid clip_value: {clip_value!r} (a finite number > 0)")
        self.clip_value = float(clip_value)

    def __call__(self, params: Iterable[Tensor]) -> None:
        params = list(params)
        if params:
            torch.nn.utils.clip_grad_value_(params, self.clip_value)
        return None

    def __repr__(self) -> str:
        return f"ClipGradValue(clip_value={self.clip_value})"


def grads_finite(params: list[Tensor], norm: Tensor | None = None,
                 loss: Tensor | None = None) -> bool:
    """Whether every gradient entry (and ``loss``, when given) is finite: one device sync.

    ``norm``: a norm of all the gradients already computed (by clipping); it is finite exactly
    when every entry is, so it stands for them. Otherwise one multi-tensor kernel per device
    checks the dense real gradients: torch's AMP overflow check
    (``_amp_foreach_non_finite_check_and_unscale_`` with the scale 1, which leaves every
    gradient bit unchanged); the others (sparse, complex) are checked one by one."""
    parts: list[Tensor] = []
    if norm is not None:
        parts.append(torch.isfinite(norm.detach().float().reshape(1)))
    elif params:
        by_device: dict[torch.device, list[Tensor]] = {}
        for p in params:
            by_device.setdefault(p.grad.device, []).append(p.grad)
        for device, grads in by_device.items():
            parts.append(_finite_on(device, grads))
    if loss is not None:
        parts.append(torch.isfinite(loss.detach().float().reshape(1)))
    if not parts:
        return True
    device = parts[0].device
    return bool(torch.cat([part.to(device) for part in parts]).all())


_AMP_CHECK_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@torch.no_grad()
def _finite_on(device: torch.device, grads: list[Tensor]) -> Tensor:
    """A one-element bool tensor on ``device``: all of ``grads`` (on ``device``) are finite."""
    dense = [g for g in grads if g.layout == torch.strided and g.dtype in _AMP_CHECK_DTYPES]
    found = torch.zeros(1, device=device)
    if dense:
        torch._amp_foreach_non_finite_check_and_unscale_(dense, found,
                                                         torch.ones(1, device=device))
    flags = [found == 0]
    for g in grads:  # the rest (sparse, complex): one reduction each
        if g.layout != torch.strided or g.dtype not in _AMP_CHECK_DTYPES:
            values = g.coalesce().values() if g.is_sparse else g
            flags.append(torch.isfinite(values).all().reshape(1))
    return torch.cat(flags).all().reshape(1) if len(flags) > 1 else flags[0]


class Accumulation:
    """Gradient accumulation over ``n`` micro-batches per optimizer step.

    Each micro-batch's loss is divided by ``n`` before backward (:meth:`scale`), so the summed
    gradient is that of the mean loss over the ``n`` micro-batches (equal-sized micro-batches:
    the gradient of the whole batch). :meth:`add` counts a micro-batch and says whether the
    optimizer step is due. A cycle cut short (end of an epoch) is completed by :meth:`rescale`,
    which turns the sum over ``k < n`` micro-batches into their mean.
    """

    def __init__(self, n: int = 1) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"Invalid accumulate: {n!r} (an integer >= 1)")
        self.n = n
        self.count = 0   # micro-batches of the running cycle

    def scale(self, loss: Tensor) -> Tensor:
        return loss if self.n == 1 else loss / self.n

    def add(self) -> bool:
        self.count += 1
        return self.count >= self.n

    @property
    def pending(self) -> bool:
        """A cycle has started and not stepped yet."""
        return 0 < self.count < self.n

    @torch.no_grad()
    def rescale(self, params: list[Tensor]) -> None:
        """Gradients summed over ``count`` micro-batches of loss/n -> the mean over them."""
        if 0 < self.count < self.n and params:
            torch._foreach_mul_([p.grad for p in params], self.n / self.count)

    def reset(self) -> None:
        self.count = 0
