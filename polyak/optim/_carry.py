"""An optimizer step that carries a weight average's collection (the average folded into the step).

``opt.carry_average(avg)`` registers a :class:`~polyak.averaging.WeightAverage` (EMA, or Uniform
collecting every n steps). Before each fused step the optimizer asks the average whether its next
``step()`` collects and with which lerp weight (``avg.next_step_weight()``); when it does, and the
step updates exactly the average's parameters with compiled kernels, the kernels also compute
``avg <- lerp(avg, p_new, weight)`` and the average is told (``avg.mark_carried()``) so that its
own ``step()``, called after the optimizer's as always, only counts the collection. In every
other case (no fused path, a parameter without a gradient, the average on another device, a step
that does not collect) nothing is carried and ``avg.step()`` collects by itself: the average is
the same either way (the kernel's lerp is the one ``avg.step()`` would run).

Private: the public entry point is the optimizers' ``carry_average``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class Carried:
    """One step's carried collection: the lerp weight and the average's tensor of each param."""

    def __init__(self, average: Any, weight: float, by_param: dict[int, Tensor]) -> None:
        self.average, self.weight, self._by_param = average, weight, by_param

    def tensors(self, params: list[Tensor]) -> list[Tensor]:
        return [self._by_param[id(p)] for p in params]

    def lerp_(self, params: list[Tensor]) -> None:
        """The collection for ``params`` as a separate pass (a group whose kernel fell back)."""
        torch._foreach_lerp_(self.tensors(params), params, self.weight)

    def done(self) -> None:
        self.average.mark_carried()


def plan(average: Any, groups: list[tuple[dict[str, Any], tuple[list[Tensor], ...]]],
         fused: bool) -> Carried | None:
    """The carried collection of this step, or None when the average collects by itself."""
    if average is None or not fused:
        return None
    weight = average.next_step_weight()
    if weight is None:
        return None
    stepped = [p for _, tensors in groups for p in tensors[0]]
    params = average.tracked_params()
    if len(stepped) != len(params) or {id(p) for p in stepped} != {id(p) for p in params}:
        return None
    by_param = {id(p): a for p, a in zip(params, average.average)}
    if any(a.device != p.device or a.dtype != p.dtype for p, a in zip(params, average.average)):
        return None
    return Carried(average, weight, by_param)


class CarriesAverage:
    """Mixin of the optimizers whose fused step can carry an average (Padam, AdaBound)."""

    _carry_target: Any = None

    def carry_average(self, average: Any) -> None:
        """Fold ``average``'s per-step collections into this optimizer's fused steps (see
        :mod:`polyak.optim._carry`); ``None`` stops. Call ``average.step()`` after every
        ``step()`` as usual; the average is the same as without carrying."""
        if average is not None and not callable(getattr(average, "next_step_weight", None)):
            raise ValueError(f"Invalid average: {average!r} (allowed: a polyak.averaging "
                             "WeightAverage, or None)")
        self._carry_target = average

    def _carry(self, groups: list[tuple[dict[str, Any], tuple[list[Tensor], ...]]]
               ) -> Carried | None:
        from polyak.optim import _compiled

        fused = _compiled.available() and all(g["fused"] for g, t in groups if t[0])
        return plan(self._carry_target, groups, fused)
