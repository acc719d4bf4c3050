"""Padam: partially adaptive Adam(W)/AMSGrad (Chen & Gu, 2018), the base of Gadam and GadamX.

Granziol, Wan et al., "Beyond SGD: Iterate Averaged Adaptive Gradient Methods" (Gadam/GadamX),
Appendix Algorithm 1, with the update rule of the authors' code (METHODS.md section 1), which
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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from polyak.optim._functional import (
    by_device_and_dtype,
    check,
    check_betas,
    check_dense,
    check_foreach,
    check_nonneg,
    check_params,
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


class Padam(Optimizer):
    """Partially adaptive Adam: ``partial=0.5`` is AdamW (Adam with
    ``decoupled_weight_decay=False``), ``partial=1/8, amsgrad=True`` is GadamX's base optimizer.
    See the module docstring for the rule.

    State per parameter: ``step`` (float tensor, as torch.optim), ``exp_avg``, ``exp_avg_sq``
    and, with ``amsgrad``, ``max_exp_avg_sq``. A parameter whose ``.grad`` is None is skipped.
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
    ) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, partial=partial,
                        amsgrad=bool(amsgrad), decoupled_weight_decay=bool(decoupled_weight_decay),
                        foreach=foreach)
        _validate(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        _validate({**self.defaults, **param_group})
        super().add_param_group(param_group)
        check_params(self.param_groups[-1]["params"], "Padam")

    def _init_group(self, group: dict[str, Any]) -> tuple[list[Tensor], ...]:
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps = [], [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            check_dense(p.grad, "Padam")
            state = self.state[p]
            if len(state) == 0:
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if group["amsgrad"]:
                if "max_exp_avg_sq" not in state:
                    state["max_exp_avg_sq"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format)
                max_exp_avg_sqs.append(state["max_exp_avg_sq"])
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        return params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One Padam step for every parameter with a gradient; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            tensors = self._init_group(group)
            if not tensors[0]:
                continue
            beta1, beta2 = group["betas"]
            fn = _multi_tensor_padam if use_foreach(group["foreach"], tensors[0]) \
                else _single_tensor_padam
            fn(*tensors, lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
               weight_decay=group["weight_decay"], partial=group["partial"],
               amsgrad=group["amsgrad"], decoupled=group["decoupled_weight_decay"])
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
