"""Padam: partially adaptive Adam(W)/AMSGrad (Chen & Gu, 2018), the base of Gadam and GadamX.

Granziol, Wan et al., "Beyond SGD: Iterate Averaged Adaptive Gradient Methods" (Gadam/GadamX),
Appendix Algorithm 1, with the update rule of the authors' code (docs/methods.md section 1), which
differs from the algorithm as printed:

    p <- p * (1 - lr*wd)                     (decoupled; coupled L2 instead: g <- g + wd*p)
    m <- b1*m + (1 - b1)*g
    v <- b2*v + (1 - b2)*g^2
    v_used = max(v_used, v) if amsgrad else v           (max on the RAW v)
    p <- p - lr * sqrt(1 - b2^t)/(1 - b1^t) * m / (sqrt(v_used) + eps)^(2*partial)

Where the code departs from Algorithm 1: ``eps`` is added to ``sqrt(v)`` before the power
``2*partial`` (Algorithm 1: ``(v_hat + eps)^p``), and the bias correction is
``sqrt(bc2)/bc1`` for every ``partial`` (for small ``partial`` the first steps are small: a
built-in warm-up that GadamX's published lr of 0.1 relies on). ``partial=0.5`` is AdamW/Adam
with torch's ``eps`` scaled by ``1/sqrt(bc2)``; ``partial -> 0`` is bias-corrected momentum.

``fused=True`` (``partial=0.5`` only) runs torch's own fused Adam kernels, ``torch._fused_adamw_``
(decoupled) or ``torch._fused_adam_`` (coupled L2), which compute
``p <- p - (lr/bc1) * m / (sqrt(v_used)/sqrt(bc2) + eps_k)`` with the same weight decay, moments
and raw-v AMSGrad maximum as above. Passing ``eps_k = eps/sqrt(bc2)`` gives Padam's rule:

    (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps/sqrt(bc2)) = lr*sqrt(bc2)/bc1 * m / (sqrt(v) + eps)

``eps_k`` depends on the step ``t``, so the kernel runs once per (device, dtype, step) group
(normally one per device and dtype). Same values as the other paths up to rounding (the kernel
orders the arithmetic differently); the same state, so checkpoints move between the paths.

``fused=True`` with any other ``partial`` runs the rule above as one
``torch.compile``d kernel per tensor (:mod:`polyak.optim._compiled`), the power written as square
roots for ``2*partial`` in {1/2, 1/4, 1/8}; same state, same values up to rounding.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from polyak.optim import _compiled
from polyak.optim._carry import Carried, CarriesAverage
from polyak.optim._functional import (
    KeepsPathChoice,
    by_device_and_dtype,
    check,
    check_betas,
    check_foreach,
    check_nonneg,
    check_params,
    gather_adam_state,
    increment_steps,
    is_real,
    power_,
    use_foreach,
)

__all__ = ["Padam"]


def _validate(group: dict[str, Any]) -> None:
    check_nonneg("lr", group["lr"])
    check_betas(group["betas"])
    check_nonneg("eps", group["eps"])
    check_nonneg("weight_decay", group["weight_decay"])
    partial = group["partial"]
    check("partial", partial, is_real(partial) and 0 < partial <= 0.5, "0 < partial <= 0.5")
    check_foreach(group["foreach"])
    fused = group["fused"]
    check("fused", fused, fused is None or isinstance(fused, bool), "None, True, False")
    if fused:
        check("fused", fused, not group["foreach"], "fused=True with foreach=None or False")


def _fused_devices() -> list[str]:
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        return list(_get_fused_kernels_supported_devices())
    except ImportError:  # pragma: no cover - very old or very new torch
        return ["cpu", "cuda"]


def _is_dense(t: Tensor) -> bool:
    """Non-overlapping and dense: the elements fill ``numel()`` consecutive slots in some dim
    order. Strides of size-1 dims do not matter (autograd may set them differently)."""
    expected = 1
    for size, stride in sorted((x for x in zip(t.shape, t.stride()) if x[0] != 1),
                               key=lambda x: x[1]):
        if stride != expected:
            return t.numel() == 0
        expected *= size
    return True


def _same_layout(a: Tensor, b: Tensor) -> bool:
    """Same strides: the fused kernels index param, grad and state linearly (and CUDA's checks
    that the strides are equal, even those of size-1 dims)."""
    return a.stride() == b.stride()


def _check_fused(p: Tensor) -> None:
    devices = _fused_devices()
    if p.device.type not in devices or not p.is_floating_point():
        raise ValueError(f"Padam(fused=True) needs floating-point parameters on a device with "
                         f"fused Adam kernels ({', '.join(devices)}); got {p.dtype} on {p.device}")
    if not _is_dense(p):
        raise ValueError(f"Padam(fused=True) needs parameters dense in memory (not a strided "
                         f"view); got shape {tuple(p.shape)}, strides {p.stride()}")


class Padam(KeepsPathChoice, CarriesAverage, Optimizer):
    """Partially adaptive Adam: ``partial=0.5`` is AdamW (Adam with
    ``decoupled_weight_decay=False``), ``partial=1/8, amsgrad=True`` is GadamX's base optimizer.
    See the module docstring for the rule.

    Kernels: ``foreach=None`` (default) picks the multi-tensor ``torch._foreach_*`` path where
    every tensor allows it, else the single-tensor one (both give identical bits).
    ``fused=True`` (opt-in, not with ``foreach=True``; floating-point parameters, dense in
    memory, on a device torch has fused kernels for): ``partial=0.5`` runs torch's fused Adam(W)
    kernel (on CPU about 5x faster than foreach); any other ``partial`` one ``torch.compile``d
    kernel per tensor (:mod:`polyak.optim._compiled`: compiled once per configuration and
    process, seconds to a minute; a one-time warning and the foreach path where no compiler
    works). Both equal the other paths up to rounding. ``fused=None`` (default) is not fused, as
    in torch.optim: the compile time outweighs the gain in short runs of small models (the
    default benchmark's), see ``benchmarks/optim_step.py`` for large ones.

    ``carry_average(avg)`` folds an EMA (or a Uniform collecting every n steps) into the
    compiled fused step (``partial != 0.5``; at 0.5 torch's kernel runs and the average collects
    by itself): the kernel moves the average toward the new weights while they are in registers
    (:mod:`polyak.optim._carry`); the average is the one ``avg.step()`` would compute.

    State per parameter: ``step`` (CPU float32 tensor, as torch.optim's non-fused paths),
    ``exp_avg``, ``exp_avg_sq`` and, with ``amsgrad``, ``max_exp_avg_sq``; the same for every
    path. ``load_state_dict`` takes the hyper-parameters from the checkpoint but keeps this
    instance's ``foreach`` and ``fused`` (they choose kernels, not the rule), so a checkpoint
    moves between fused and foreach instances. A parameter whose ``.grad`` is None is skipped.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        partial: float = 0.5,
        amsgrad: bool = False,
        decoupled_weight_decay: bool = True,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, partial=partial,
                        amsgrad=bool(amsgrad), decoupled_weight_decay=bool(decoupled_weight_decay),
                        foreach=foreach, fused=fused)
        _validate(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        _validate({**self.defaults, **param_group})
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_params(group["params"], "Padam")
        if group["fused"]:
            for p in group["params"]:
                _check_fused(p)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # KeepsPathChoice defaults fused
        for p, s in self.state.items():
            step = s.get("step")
            if isinstance(step, Tensor) and (not step.is_cpu or step.dtype != torch.float32):
                s["step"] = step.to("cpu", torch.float32)  # torch moves it to p's device if fused
            for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                v = s.get(key)
                if isinstance(p, Tensor) and v is not None and _is_dense(p) \
                        and not _same_layout(p, v):
                    s[key] = torch.empty_like(p).copy_(v)  # p's memory order, for fused

    def _carry(self, groups: list[tuple[dict[str, Any], tuple[list[Tensor], ...]]]
               ) -> Carried | None:
        # partial=0.5 runs torch's own fused kernel, which cannot carry an average; carrying
        # would swap it for a compiled kernel (a compile that short runs never win back), so
        # the average collects by itself there
        if any(g["partial"] == 0.5 for g, t in groups if t[0]):
            return None
        return super()._carry(groups)

    def _init_group(self, group: dict[str, Any]) -> tuple[list[Tensor], ...]:
        return gather_adam_state(self, group, "Padam", "amsgrad",
                                 _check_fused if group["fused"] else None)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One Padam step for every parameter with a gradient; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        groups = [(group, self._init_group(group)) for group in self.param_groups]
        carried = self._carry(groups)
        for group, tensors in groups:
            if not tensors[0]:
                continue
            beta1, beta2 = group["betas"]
            kwargs = dict(lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                          weight_decay=group["weight_decay"], amsgrad=group["amsgrad"],
                          decoupled=group["decoupled_weight_decay"])
            if group["fused"] and group["partial"] == 0.5:  # never carried (see _carry)
                _fused_padam(*tensors, **kwargs)
                continue
            if group["fused"] and _compiled_padam(*tensors, carried, partial=group["partial"],
                                                  **kwargs):
                continue
            fn = _multi_tensor_padam if use_foreach(group["foreach"], tensors[0]) \
                else _single_tensor_padam
            fn(*tensors, partial=group["partial"], **kwargs)
        if carried is not None:
            carried.done()
        return loss


def _step_size(lr: float, beta1: float, beta2: float, step: float) -> float:
    """``lr * sqrt(1 - b2^t) / (1 - b1^t)``, in double precision on the host."""
    return lr * math.sqrt(1.0 - beta2**step) / (1.0 - beta1**step)


def _single_tensor_padam(
    params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor], steps: list[Tensor], *, lr: float, beta1: float,
    beta2: float, eps: float, weight_decay: float, partial: float, amsgrad: bool, decoupled: bool,
) -> None:
    """Reference path: one tensor at a time, the same kernels as the foreach path."""
    for i, p in enumerate(params):
        g, m, v, step_t = grads[i], exp_avgs[i], exp_avg_sqs[i], steps[i]
        step_t.add_(1.0)
        if weight_decay != 0:
            if decoupled:
                p.mul_(1 - lr * weight_decay)
            else:
                g = g.add(p, alpha=weight_decay)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        if amsgrad:
            torch.maximum(max_exp_avg_sqs[i], v, out=max_exp_avg_sqs[i])
            v = max_exp_avg_sqs[i]
        denom = v.sqrt().add_(eps)
        power_([denom], 2 * partial, foreach=False)
        p.addcdiv_(m, denom, value=-_step_size(lr, beta1, beta2, step_t.item()))


def _multi_tensor_padam(
    params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor], steps: list[Tensor], *, lr: float, beta1: float,
    beta2: float, eps: float, weight_decay: float, partial: float, amsgrad: bool, decoupled: bool,
) -> None:
    """Fast path: ``torch._foreach_*`` kernels per (device, dtype) group, scalars on the host.

    Kernels per group: [wd] lerp, mul, addcmul, [maximum], sqrt, add, [power], addcdiv - the
    power is nothing for partial=0.5, one sqrt for 1/4, two rsqrt for 1/8, one pow otherwise.
    """
    lists = [params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps]
    for p_, g_, m_, v_, vmax_, steps_ in by_device_and_dtype(lists):
        increment_steps(steps_)
        if weight_decay != 0:
            if decoupled:
                torch._foreach_mul_(p_, 1 - lr * weight_decay)
            else:
                g_ = torch._foreach_add(g_, p_, alpha=weight_decay)
        torch._foreach_lerp_(m_, g_, 1 - beta1)
        torch._foreach_mul_(v_, beta2)
        torch._foreach_addcmul_(v_, g_, g_, 1 - beta2)
        del g_
        if amsgrad:
            torch._foreach_maximum_(vmax_, v_)
            v_ = vmax_
        denom = torch._foreach_sqrt(v_)
        torch._foreach_add_(denom, eps)
        power_(denom, 2 * partial, foreach=True)
        step_sizes = [-_step_size(lr, beta1, beta2, s.item()) for s in steps_]
        torch._foreach_addcdiv_(p_, m_, denom, step_sizes)


def _grads_like_params(params: list[Tensor], grads: list[Tensor]) -> list[Tensor]:
    """The grads, each with its parameter's strides (autograd's normally have them; a grad set
    by hand may not, and the fused kernels index both linearly): copies where needed."""
    out = grads
    for i, (p, g) in enumerate(zip(params, grads)):
        if not _same_layout(p, g):
            out = list(grads) if out is grads else out
            out[i] = torch.empty_like(p).copy_(g)
    return out


def _by_step(lists: list[list[Any]]) -> list[tuple[float, list[list[Any]]]]:
    """Split parallel lists (the step tensors last) by step value: ``[(t, lists_t), ...]``.
    The steps are CPU tensors, so reading them does not synchronise a device."""
    values = [s.item() for s in lists[-1]]
    if all(t == values[0] for t in values):  # the usual case: one group
        return [(values[0], lists)]
    index: dict[float, list[int]] = defaultdict(list)
    for i, t in enumerate(values):
        index[t].append(i)
    return [(t, [[xs[i] for i in ids] if xs else xs for xs in lists]) for t, ids in index.items()]


def _fused_padam(
    params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor], steps: list[Tensor], *, lr: float, beta1: float,
    beta2: float, eps: float, weight_decay: float, amsgrad: bool, decoupled: bool,
) -> None:
    """partial=0.5 with torch's fused Adam(W) kernel and ``eps/sqrt(1 - b2^t)`` for eps (module
    docstring). The kernel reads ``t`` from a float32 tensor on the parameters' device: the
    CPU steps themselves on CPU, one device scalar per call elsewhere (a fill, no copy)."""
    kernel = torch._fused_adamw_ if decoupled else torch._fused_adam_
    lists = [params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps]
    for device_lists in by_device_and_dtype(lists):
        increment_steps(device_lists[-1])
        for t, (p_, g_, m_, v_, vmax_, steps_) in _by_step(device_lists):
            if not p_[0].is_cpu:
                steps_ = [torch.full((), t, dtype=torch.float32, device=p_[0].device)] * len(p_)
            kernel(p_, _grads_like_params(p_, g_), m_, v_, vmax_, steps_, lr=lr, beta1=beta1,
                   beta2=beta2, weight_decay=weight_decay, eps=eps / math.sqrt(1.0 - beta2**t),
                   amsgrad=amsgrad, maximize=False)


def _compiled_padam(
    params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor], steps: list[Tensor], carried: Carried | None, *, lr: float,
    beta1: float, beta2: float, eps: float, weight_decay: float, partial: float, amsgrad: bool,
    decoupled: bool,
) -> bool:
    """Any ``partial`` with one compiled kernel per tensor (:mod:`polyak.optim._compiled`), the
    carried average's lerp included; False (nothing changed) when no compiler works."""
    if not _compiled.available():
        return False
    hyper = (beta1, beta2, eps, weight_decay, 2 * partial, amsgrad, decoupled)
    avgs = carried.tensors(params) if carried is not None else []
    lists = [params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, avgs, steps]
    for p_, g_, m_, v_, vmax_, a_, steps_ in by_device_and_dtype(lists):
        increment_steps(steps_)
        device = p_[0].device
        scalars = [_compiled.scalar_tensor(1 - lr * weight_decay, device),
                   _compiled.scalar_tensor(
                       [-_step_size(lr, beta1, beta2, s.item()) for s in steps_], device)]
        weight = None if carried is None else \
            _compiled.scalar_tensor(carried.weight, device, p_[0].dtype)
        if not _compiled.run("padam", hyper, [p_, g_, m_, v_, vmax_, a_], scalars, weight):
            torch._foreach_sub_(steps_, 1.0)  # no compiler: the foreach path, which counts it
            _multi_tensor_padam(p_, g_, m_, v_, vmax_, steps_, lr=lr, beta1=beta1, beta2=beta2,
                                eps=eps, weight_decay=weight_decay, partial=partial,
                                amsgrad=amsgrad, decoupled=decoupled)
            if carried is not None:
                carried.lerp_(p_)
    return True
