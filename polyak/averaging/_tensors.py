"""Tensor helpers of the weight averages: the non-finite check, the averages' dtype, shards.

The non-finite check of a collection reads the live parameters once and writes nothing (their
version counters stay as they are). Its fast path is one 2-norm (or squared norm) per tensor:
a NaN or an Inf entry makes it NaN or Inf (the squares are >= 0, so no Inf cancels), hence a
finite one proves every entry finite. A non-finite one is either a non-finite entry or an
overflow of the sum of squares (entries above ~1e19 in float32); only those tensors are then
checked entry by entry (``torch.isfinite``), so the answer is exact and huge finite weights are
never refused. ``foreach=False`` takes one ``linalg.vector_norm`` per tensor (the reference
path; same verdict). An update cannot carry the check (a NaN met half-way through would leave
the average half-updated, and a lerp cannot be undone exactly), so the collection costs the
update plus one read of the parameters: 1.3-1.7x a bare lerp (``benchmarks/averaging.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["average_dtype", "check_dtype", "first_nonfinite", "is_sharded", "local", "locals_",
           "narrower", "zeros_for"]


def is_sharded(t: Tensor) -> bool:
    """A ``DTensor`` (FSDP2's ``fully_shard`` parameters): this rank holds one shard of it."""
    return callable(getattr(t, "to_local", None)) and hasattr(t, "placements")


def local(t: Tensor) -> Tensor:
    return t.to_local() if is_sharded(t) else t


def locals_(ts: list[Tensor]) -> list[Tensor]:
    """This rank's shards (views of the same storage) of a list of possibly sharded tensors."""
    return [local(t) for t in ts]


# ---------------------------------------------------------------------- dtype of an average
def check_dtype(dtype: object) -> torch.dtype | None:
    if dtype is None or (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        return dtype
    raise ValueError(f"Invalid dtype: {dtype!r} (allowed: None, meaning float32 for parameters "
                     "of lower precision and else theirs, or a floating-point torch.dtype)")


def average_dtype(param: torch.dtype, dtype: torch.dtype | None) -> torch.dtype:
    """The dtype of the average of a ``param``-typed parameter: non-floating parameters keep
    theirs; else ``dtype``, or by default float32 for bf16/fp16 (an update ``(1-d)(w - avg)``
    below half a bf16 ulp of the average would round to zero) and the parameter's otherwise."""
    if not param.is_floating_point:
        return param
    if dtype is not None:
        return dtype
    return torch.float32 if torch.finfo(param).bits < 32 else param


def narrower(dtype: torch.dtype, than: torch.dtype) -> bool:
    """Whether floating ``dtype`` holds a smaller range than floating ``than`` (fp16 < fp32)."""
    return dtype.is_floating_point and than.is_floating_point \
        and torch.finfo(dtype).max < torch.finfo(than).max


def zeros_for(p: Tensor, device: torch.device | None, dtype: torch.dtype) -> Tensor:
    """The zero average of parameter ``p``: for a sharded parameter (FSDP2) a ``DTensor`` with the
    same placements, so each rank keeps only its own shard and every update is local (pointwise
    ``_foreach`` ops on ``DTensor``s of equal placements communicate nothing)."""
    if device is None and is_sharded(p):
        return torch.zeros_like(p, dtype=dtype)
    return torch.zeros(p.shape, dtype=dtype, device=device or p.device)


# ---------------------------------------------------------------------- the non-finite check
_BLAS_DTYPES = (torch.float32, torch.float64)


def _norms(ts: list[Tensor], foreach: bool) -> list[Tensor]:
    """A 2-norm (or its square) of each of ``ts`` (one device and dtype): on the CPU a BLAS dot
    product of each float32/float64 tensor with itself (the fastest read there, ~10 % under
    ``_foreach_norm``), elsewhere one ``_foreach_norm``; ``foreach=False`` one
    ``linalg.vector_norm`` per tensor."""
    if foreach:
        if ts[0].device.type == "cpu" and ts[0].dtype in _BLAS_DTYPES \
                and all(t.is_contiguous() for t in ts):
            return [torch.dot(v, v) for v in (t.view(-1) for t in ts)]
        try:
            return list(torch._foreach_norm(ts, 2))
        except (RuntimeError, NotImplementedError):
            pass
    return [torch.linalg.vector_norm(t) for t in ts]


@torch.no_grad()
def first_nonfinite(ts: list[Tensor], foreach: bool = True) -> int | None:
    """The index of the first tensor of ``ts`` holding a NaN/Inf (this rank's shard of it), None
    when every entry is finite. See the module docstring."""
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    shards = locals_(ts)
    for i, t in enumerate(shards):
        if (t.is_floating_point() or t.is_complex()) and t.numel():
            groups.setdefault((t.device, t.dtype), []).append(i)
    suspects: list[int] = []
    for index in groups.values():
        norms = torch.stack(_norms([shards[i] for i in index], foreach))
        finite = torch.isfinite(norms)
        if not bool(finite.all()):
            suspects += [i for i, ok in zip(index, finite.tolist()) if not ok]
    for i in sorted(suspects):
        if not bool(torch.isfinite(shards[i]).all()):
            return i
    return None
