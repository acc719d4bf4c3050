"""Parameter groups for recipes: no weight decay on biases and normalization weights, a learning
rate per module, frozen parameters left out.

A group is a torch-style dict: ``"params"`` plus any optimizer hyper-parameter to set for it
(e.g. ``"weight_decay": 0.0``) and ``"lr_scale"``, a multiplier of the recipe's learning rate
(every schedule, warm-up included, then scales each group's own lr)::

    groups = polyak.param_groups.param_groups(model, no_weight_decay=True,
                                              lr_scale={"head": 10.0})
    method = polyak.recipe("sgdm", model, epochs, steps_per_epoch, param_groups=groups)

:func:`split_groups` applies such groups to an optimizer just built on all of a model's
parameters (what every recipe builds): its one group's hyper-parameters are copied into each new
group, then the group's own keys override them. Parameters with ``requires_grad=False`` are left
out of every group (the optimizer never holds them, and no average writes them).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor, nn

__all__ = ["param_groups", "split_groups", "no_weight_decay"]


def no_weight_decay(name: str, param: Tensor) -> bool:
    """The usual rule: biases and normalization scales/shifts, i.e. parameters of at most one
    dimension, take no weight decay."""
    return param.dim() <= 1


def _scale_of(name: str, lr_scale: Mapping[str, float]) -> float:
    """The multiplier of the longest module prefix of ``name`` in ``lr_scale`` (1 if none)."""
    best, scale = -1, 1.0
    for prefix, value in lr_scale.items():
        if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
            best, scale = len(prefix), value
    return scale


def _check_scales(lr_scale: Mapping[str, float], model: nn.Module) -> None:
    names = [n for n, _ in model.named_parameters()]
    for prefix, value in lr_scale.items():
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value < 0:
            raise ValueError(f"Invalid lr_scale[{prefix!r}]: {value!r} (a finite number >= 0)")
        if not any(n == prefix or n.startswith(prefix + ".") for n in names):
            raise ValueError(f"Invalid lr_scale key: {prefix!r} names no parameter of the model "
                             "(a module or parameter name, e.g. 'head' or 'head.weight')")


def param_groups(model: nn.Module, *, no_weight_decay: bool | Any = True,
                 lr_scale: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    """Groups of ``model``'s trainable parameters by (weight decay off?, lr multiplier).

    ``no_weight_decay``: ``True`` for :func:`polyak.param_groups.no_weight_decay` (1-D
    parameters), ``False`` for none, or a function ``(name, param) -> bool``. ``lr_scale``: module
    or parameter name -> multiplier of the lr (the longest matching name wins). Frozen
    parameters (``requires_grad=False``) are in no group.
    """
    rule = _rule(no_weight_decay)
    lr_scale = dict(lr_scale or {})
    _check_scales(lr_scale, model)
    groups: dict[tuple[bool, float], list[Tensor]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((bool(rule(name, p)), _scale_of(name, lr_scale)), []).append(p)
    out = []
    for (no_decay, scale), params in groups.items():
        group: dict[str, Any] = {"params": params}
        if no_decay:
            group["weight_decay"] = 0.0
        if scale != 1.0:
            group["lr_scale"] = scale
        out.append(group)
    return out


def _rule(no_wd: Any) -> Any:
    if no_wd is True:
        return no_weight_decay
    if no_wd is False or no_wd is None:
        return lambda name, p: False
    if callable(no_wd):
        return no_wd
    raise ValueError(f"Invalid no_weight_decay: {no_wd!r} (True, False or a function "
                     "(name, param) -> bool)")


def split_groups(optimizer: Any, groups: Iterable[Mapping[str, Any]]) -> None:
    """Replace the one param group of a freshly built ``optimizer`` by ``groups``.

    Each new group starts from the old group's hyper-parameters, takes the group's own keys, and
    ``lr = old lr * lr_scale``. Trainable parameters of the old group that no group names form a
    first group with the old values; frozen ones are dropped. Per-parameter state (e.g. K-FAC
    factors) is kept; call it before the first step.
    """
    old_groups = optimizer.param_groups
    if len(old_groups) != 1:
        raise ValueError(f"split_groups needs an optimizer with one param group (this one has "
                         f"{len(old_groups)})")
    old = old_groups[0]
    hyper = {k: v for k, v in old.items() if k != "params"}
    owned = {id(p) for p in old["params"]}
    seen: set[int] = set()
    new: list[dict[str, Any]] = []
    for i, group in enumerate(groups):
        if not isinstance(group, Mapping) or "params" not in group:
            raise ValueError(f"Invalid param_groups[{i}]: {group!r} (a dict with 'params')")
        unknown = sorted(set(group) - set(hyper) - {"params", "lr_scale"})
        if unknown:
            raise ValueError(f"Invalid param_groups[{i}] keys {unknown} (allowed: 'params', "
                             f"'lr_scale' and the optimizer's: {', '.join(sorted(hyper))})")
        params = _own_params(group["params"], owned, seen, i)
        scale = group.get("lr_scale", 1.0)
        settings = {k: v for k, v in group.items() if k not in ("params", "lr_scale")}
        entry = {**hyper, **settings, "params": params}
        entry["lr"] = settings.get("lr", old["lr"] * scale)
        new.append(entry)
    rest = [p for p in old["params"] if id(p) not in seen and p.requires_grad]
    if rest:
        new.insert(0, {**hyper, "params": rest})
    old_groups[:] = [g for g in new if g["params"]]


def _own_params(params: Any, owned: set[int], seen: set[int], i: int) -> list[Tensor]:
    out = []
    for p in ([params] if isinstance(params, Tensor) else list(params)):
        if id(p) not in owned:
            raise ValueError(f"Invalid param_groups[{i}]: a tensor of shape {tuple(p.shape)} "
                             "is not a parameter of the model")
        if id(p) in seen:
            raise ValueError(f"Invalid param_groups[{i}]: a parameter of shape "
                             f"{tuple(p.shape)} is in two groups")
        seen.add(id(p))
        if p.requires_grad:
            out.append(p)
    return out
