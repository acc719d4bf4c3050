"""AdaBound / AMSBound (Luo et al., ICLR 2019): Adam whose per-coordinate step is clipped into
bounds that close in on an SGD learning rate. A baseline of the phase-wise aggregation paper
(Kobayashi, Table 3). docs/methods.md section 2, following the authors' code (coupled L2 decay, eps
added to sqrt(v) without bias correction, bounds that follow lr schedulers):

    g <- g + wd*p
    m <- b1*m + (1 - b1)*g;  v <- b2*v + (1 - b2)*g^2;  v_used = max(v_used, v) if amsbound
    final = final_lr * lr / base_lr       (base_lr = the group's lr at construction)
    lo = final * (1 - 1/(gamma*t + 1));  hi = final * (1 + 1/(gamma*t))
    p <- p - clamp(lr * sqrt(1 - b2^t)/(1 - b1^t) / (sqrt(v_used) + eps), lo, hi) * m

``base_lr`` is kept in each param group (key ``"base_lr"``) so it survives ``state_dict``; the
authors' code kept it on the optimizer object and lost it on checkpoint. A group whose ``lr`` is
0 does not move (``final`` is 0 then, also when ``base_lr`` is 0).
"""

from __future__ import annotations

import math
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
    check_positive,
    gather_adam_state,
    increment_steps,
    use_foreach,
)

__all__ = ["AdaBound"]


def _validate(group: dict[str, Any]) -> None:
    check_nonneg("lr", group["lr"])
    check_betas(group["betas"])
    check_positive("final_lr", group["final_lr"])
    check_positive("gamma", group["gamma"])
    check_nonneg("eps", group["eps"])
    check_nonneg("weight_decay", group["weight_decay"])
    check_foreach(group["foreach"])
    fused = group["fused"]
    check("fused", fused, fused is None or isinstance(fused, bool), "None, True, False")
    check("fused", fused, not (fused and group["foreach"]), "fused=True with foreach=None or False")


def _check_fused(p: Tensor) -> None:
    if p.device.type not in ("cpu", "cuda") or not p.is_floating_point():
        raise ValueError(f"AdaBound(fused=True) needs floating-point parameters on cpu or cuda; "
                         f"got {p.dtype} on {p.device}")


class AdaBound(KeepsPathChoice, CarriesAverage, Optimizer):
    """AdaBound (``amsbound=False``) or AMSBound (``amsbound=True``); see the module docstring.

    State per parameter: ``step`` (float tensor), ``exp_avg``, ``exp_avg_sq`` and, with
    ``amsbound``, ``max_exp_avg_sq``. A parameter whose ``.grad`` is None is skipped.

    Kernels: ``foreach=None`` (default) multi-tensor ``torch._foreach_*`` where possible, else
    single-tensor (identical bits); ``fused=True`` (opt-in) one ``torch.compile``d kernel per
    tensor (:mod:`polyak.optim._compiled`; compiled once per configuration and process, a
    one-time warning and the foreach path where no compiler works), equal up to rounding, same
    state, so checkpoints move between the paths (``load_state_dict`` keeps this instance's
    ``foreach``/``fused``). ``carry_average(avg)`` folds an EMA into the fused step
    (:mod:`polyak.optim._carry`).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        final_lr: float = 0.1,
        gamma: float = 1e-3,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsbound: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        defaults = dict(lr=lr, betas=betas, final_lr=final_lr, gamma=gamma, eps=eps,
                        weight_decay=weight_decay, amsbound=bool(amsbound), foreach=foreach,
                        fused=fused)
        _validate(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        _validate({**self.defaults, **param_group})
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group.setdefault("base_lr", group["lr"])
        check_params(group["params"], "AdaBound")
        if group["fused"]:
            for p in group["params"]:
                _check_fused(p)

    def _init_group(self, group: dict[str, Any]) -> tuple[list[Tensor], ...]:
        return gather_adam_state(self, group, "AdaBound", "amsbound")

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One AdaBound step for every parameter with a gradient; returns ``closure()`` if given."""
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
            kwargs = dict(lr=group["lr"], final=_final(group), beta1=beta1, beta2=beta2,
                          gamma=group["gamma"], eps=group["eps"],
                          weight_decay=group["weight_decay"], amsbound=group["amsbound"])
            if group["fused"] and _compiled_adabound(*tensors, carried, **kwargs):
                continue
            fn = _multi_tensor_adabound if use_foreach(group["foreach"], tensors[0]) \
                else _single_tensor_adabound
            fn(*tensors, **kwargs)
        if carried is not None:
            carried.done()
        return loss


def _final(group: dict[str, Any]) -> float:
    """``final_lr * lr / base_lr``: the SGD rate the bounds close in on, following schedulers."""
    lr, base_lr = group["lr"], group["base_lr"]
    if lr == 0:
        return 0.0
    return group["final_lr"] * lr / base_lr if base_lr > 0 else group["final_lr"]


def _scalars(lr: float, final: float, beta1: float, beta2: float, gamma: float,
             step: float) -> tuple[float, float, float]:
    """(step size, lower bound, upper bound) at step ``t``, in double precision on the host."""
    step_size = lr * math.sqrt(1.0 - beta2**step) / (1.0 - beta1**step)
    lower = final * (1.0 - 1.0 / (gamma * step + 1.0))
    upper = final * (1.0 + 1.0 / (gamma * step))
    return step_size, lower, upper


def _single_tensor_adabound(
    params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor], steps: list[Tensor], *, lr: float, final: float,
    beta1: float, beta2: float, gamma: float, eps: float, weight_decay: float, amsbound: bool,
) -> None:
    """Reference path: one tensor at a time, the same kernels as the foreach path."""
    for i, p in enumerate(params):
        g, m, v, step_t = grads[i], exp_avgs[i], exp_avg_sqs[i], steps[i]
        step_t.add_(1.0)
        if weight_decay != 0:
            g = g.add(p, alpha=weight_decay)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        if amsbound:
            torch.maximum(max_exp_avg_sqs[i], v, out=max_exp_avg_sqs[i])
            v = max_exp_avg_sqs[i]
        step_size, lower, upper = _scalars(lr, final, beta1, beta2, gamma, step_t.item())
        rate = v.sqrt().add_(eps).reciprocal_().mul_(step_size)
        rate.clamp_min_(lower).clamp_max_(upper)
        p.addcmul_(rate, m, value=-1.0)


def _multi_tensor_adabound(
    params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor], steps: list[Tensor], *, lr: float, final: float,
    beta1: float, beta2: float, gamma: float, eps: float, weight_decay: float, amsbound: bool,
) -> None:
    """Fast path: ``torch._foreach_*`` kernels per (device, dtype) group, scalars on the host."""
    lists = [params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps]
    for p_, g_, m_, v_, vmax_, steps_ in by_device_and_dtype(lists):
        increment_steps(steps_)
        if weight_decay != 0:
            g_ = torch._foreach_add(g_, p_, alpha=weight_decay)
        torch._foreach_lerp_(m_, g_, 1 - beta1)
        torch._foreach_mul_(v_, beta2)
        torch._foreach_addcmul_(v_, g_, g_, 1 - beta2)
        del g_
        if amsbound:
            torch._foreach_maximum_(vmax_, v_)
            v_ = vmax_
        scalars = [_scalars(lr, final, beta1, beta2, gamma, s.item()) for s in steps_]
        step_sizes, lowers, uppers = (list(c) for c in zip(*scalars))
        rate = torch._foreach_sqrt(v_)
        torch._foreach_add_(rate, eps)
        torch._foreach_reciprocal_(rate)
        torch._foreach_mul_(rate, step_sizes)
        torch._foreach_clamp_min_(rate, lowers)
        torch._foreach_clamp_max_(rate, uppers)
        torch._foreach_addcmul_(p_, rate, m_, -1.0)


def _compiled_adabound(
    params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor], steps: list[Tensor], carried: Carried | None, *, lr: float,
    final: float, beta1: float, beta2: float, gamma: float, eps: float, weight_decay: float,
    amsbound: bool,
) -> bool:
    """One compiled kernel per tensor (:mod:`polyak.optim._compiled`), the carried average's
    lerp included; False (nothing changed) when no compiler works."""
    if not _compiled.available():
        return False
    hyper = (beta1, beta2, eps, weight_decay, amsbound)
    avgs = carried.tensors(params) if carried is not None else []
    lists = [params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, avgs, steps]
    for p_, g_, m_, v_, vmax_, a_, steps_ in by_device_and_dtype(lists):
        increment_steps(steps_)
        device = p_[0].device
        columns = zip(*(_scalars(lr, final, beta1, beta2, gamma, s.item()) for s in steps_))
        scalars = [_compiled.scalar_tensor(list(c), device) for c in columns]
        weight = None if carried is None else \
            _compiled.scalar_tensor(carried.weight, device, p_[0].dtype)
        if not _compiled.run("adabound", hyper, [p_, g_, m_, v_, vmax_, a_], scalars, weight):
            torch._foreach_sub_(steps_, 1.0)  # no compiler: the foreach path, which counts it
            _multi_tensor_adabound(p_, g_, m_, v_, vmax_, steps_, lr=lr, final=final,
                                   beta1=beta1, beta2=beta2, gamma=gamma, eps=eps,
                                   weight_decay=weight_decay, amsbound=amsbound)
            if carried is not None:
                carried.lerp_(p_)
    return True
