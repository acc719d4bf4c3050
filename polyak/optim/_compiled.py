"""Compiled multi-tensor steps: one ``torch.compile`` (inductor) kernel per tensor that reads
every input once and writes every output once, for Padam at any ``partial`` and AdaBound.

The rules are those of :mod:`polyak.optim.padam` and :mod:`polyak.optim.adabound`, written with
the same operations as their foreach paths (so the values agree up to the rounding of a fused
kernel); the power ``denom^(2*partial)`` is a chain of square roots when ``2*partial`` is 1/2,
1/4 or 1/8 (:func:`_power`). With a carried
weight average (:meth:`polyak.averaging.WeightAverage` through the optimizer's
``carry_average``) the kernel also moves the average toward the new parameter,
``avg <- lerp(avg, p, weight)``, while ``p`` is in registers: the average costs one more read and
write of its own tensors, not a second pass over the parameters.

Compilation: one compiled function per configuration (the rule's constants - betas, eps, weight
decay, partial, amsgrad, coupled/decoupled - and the tensors' shapes, dtypes and device), each
with its own code object, so Dynamo's per-code-object recompile limit never mixes models or
configurations. Everything that changes during training - the learning rate, the step sizes and
bounds of every step, the averaging weight - is passed as a tensor, so it never recompiles. The
first call of a configuration compiles (seconds to a minute; inductor's on-disk cache in
``/tmp/torchinductor_<user>`` makes later processes faster); :data:`COMPILE_SECONDS` records
the time. The weight average's lerp is bit-equal to ATen's ``lerp_`` (see :func:`_lerp_`), so a
carried average equals the separate update exactly. If compiling fails (no C++ compiler, an
unsupported platform) a warning is issued once per process and every later fused step runs the
foreach path instead.

Private: nothing here is part of the public API.
"""

from __future__ import annotations

import time
import types
import warnings
from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch import Tensor

#: seconds the first (compiling) call of each configuration took, by configuration key
COMPILE_SECONDS: dict[Hashable, float] = {}
_CACHE: dict[Hashable, Callable[..., Any]] = {}
_UNAVAILABLE: list[str] = []  # the reason, once compiling has failed in this process


def available() -> bool:
    """False once compiling has failed in this process (then the foreach paths run)."""
    return not _UNAVAILABLE


def _power(x: Tensor, exponent: float) -> Tensor:
    """``x ** exponent``: 1, 2 or 3 square roots for 1/2, 1/4, 1/8 (in a fused kernel a sqrt is
    one instruction, while the foreach path's rsqrt is a sqrt and a division), else ``pow``."""
    roots = {1.0: 0, 0.5: 1, 0.25: 2, 0.125: 3}.get(exponent)
    if roots is None:
        return x.pow(exponent)
    for _ in range(roots):
        x = x.sqrt()
    return x


def _lerp_(avg: Tensor, p: Tensor, weight: Tensor) -> None:
    """``avg.lerp_(p, weight)`` as ATen computes it (``start + w*(end - start)`` for
    ``|w| < 0.5``, else ``end + (w - 1)*(end - start)``, each a fused multiply-add where ATen's
    kernels use one): with :func:`_options`' contraction flag, bit-equal to ATen's lerp."""
    diff = p - avg
    avg.copy_(torch.where(weight.abs() < 0.5, avg + weight * diff, p + (weight - 1) * diff))


def _options() -> dict[str, Any]:
    """Inductor options: let the C++ compiler contract ``a*b + c`` into one FMA exactly where
    ATen's vectorized CPU kernels use FMA (every capability but DEFAULT)."""
    fma = torch.backends.cpu.get_cpu_capability() != "DEFAULT"
    return {"cpp.enable_floating_point_contract_flag": "fast" if fma else "off"}


def _padam_kernel(beta1: float, beta2: float, eps: float, weight_decay: float,
                  exponent: float, amsgrad: bool, decoupled: bool) -> Callable[..., None]:
    def padam(params, grads, exp_avgs, exp_avg_sqs, max_sqs, avgs, decay, step_sizes,
              avg_weight):
        for i in range(len(params)):
            p, g, m, v = params[i], grads[i], exp_avgs[i], exp_avg_sqs[i]
            if weight_decay != 0:
                if decoupled:
                    p.mul_(decay)
                else:
                    g = g.add(p, alpha=weight_decay)
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            if amsgrad:
                max_sqs[i].copy_(torch.maximum(max_sqs[i], v))
                v = max_sqs[i]
            denom = _power(v.sqrt() + eps, exponent)
            p.add_(step_sizes[i] * (m / denom))
            if avgs:
                _lerp_(avgs[i], p, avg_weight)
    return padam


def _adabound_kernel(beta1: float, beta2: float, eps: float, weight_decay: float,
                     amsbound: bool) -> Callable[..., None]:
    def adabound(params, grads, exp_avgs, exp_avg_sqs, max_sqs, avgs, step_sizes, lowers,
                 uppers, avg_weight):
        for i in range(len(params)):
            p, g, m, v = params[i], grads[i], exp_avgs[i], exp_avg_sqs[i]
            if weight_decay != 0:
                g = g.add(p, alpha=weight_decay)
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            if amsbound:
                max_sqs[i].copy_(torch.maximum(max_sqs[i], v))
                v = max_sqs[i]
            rate = (v.sqrt() + eps).reciprocal() * step_sizes[i]
            rate = rate.clamp_min(lowers[i]).clamp_max(uppers[i])
            p.sub_(rate * m)
            if avgs:
                _lerp_(avgs[i], p, avg_weight)
    return adabound


_KERNELS = {"padam": _padam_kernel, "adabound": _adabound_kernel}


def _own_code(fn: Callable[..., Any], tag: str) -> Callable[..., Any]:
    """``fn`` with a fresh code object: Dynamo keeps compiled graphs (and counts recompiles)
    per code object, so each configuration gets its own."""
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{tag}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__,
                              fn.__closure__)


def _signature(tensors: list[Tensor], avgs: list[Tensor]) -> tuple[Any, ...]:
    first = tensors[0]
    return (first.device, first.dtype, tuple(tuple(t.shape) for t in tensors), bool(avgs))


def run(kind: str, hyper: tuple[Any, ...], lists: list[list[Tensor]],
        scalars: list[Tensor], avg_weight: Tensor | None) -> bool:
    """Run the ``kind`` kernel with constants ``hyper`` on ``lists`` = (params, grads, exp_avgs,
    exp_avg_sqs, max_sqs, avgs) of one device and dtype and the per-step ``scalars``; False
    (nothing changed) when no compiler works, after a one-time warning."""
    if _UNAVAILABLE:
        return False
    key = (kind, hyper, _signature(lists[0], lists[5]))
    fn = _CACHE.get(key)
    # without averages the kernel ignores its weight argument: any scalar tensor will do
    weight = avg_weight if avg_weight is not None else scalars[0]
    if fn is not None:
        fn(*lists, *scalars, weight)
        return True
    kernel = _own_code(_KERNELS[kind](*hyper), str(len(_CACHE)))
    compiled = torch.compile(kernel, fullgraph=True, dynamic=False, options=_options())
    start = time.perf_counter()
    try:
        compiled(*lists, *scalars, weight)
    except Exception as exc:  # no C++ compiler, unsupported platform, ...
        _UNAVAILABLE.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        warnings.warn(f"polyak: torch.compile failed ({_UNAVAILABLE[0]}); Padam/AdaBound "
                      "fused=True run the foreach path in this process", RuntimeWarning,
                      stacklevel=4)
        return False
    COMPILE_SECONDS[key] = time.perf_counter() - start
    _CACHE[key] = compiled
    return True


def scalar_tensor(values: list[float] | float, device: torch.device,
                  dtype: torch.dtype = torch.float64) -> Tensor:
    """Host-computed scalars as a tensor on ``device`` (an input, never a constant: changing
    them does not recompile); float64 unless ``dtype`` (the lerp weight: the parameters')."""
    return torch.tensor(values, dtype=dtype, device=device)
