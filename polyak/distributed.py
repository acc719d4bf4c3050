"""The few collectives polyak needs under ``torch.distributed`` (DDP, FSDP2); no-ops otherwise.

Under data parallelism every rank holds the same parameters, so the weight averages need no
communication at all. Three things are computed from data each rank sees only a part of, and
are combined here so that every rank ends up with the same value:

- BatchNorm recalibration: per-rank sums of ``x``, ``x^2`` and the counts, all-reduced
  (:func:`all_reduce_sum_`); averaging per-rank variances would drop the spread between ranks;
- K-FAC factors: per-rank factors all-reduced before the inverse roots;
- the metrics that triggers decide on (plateau switches, early stopping): rank 0's value is
  broadcast (:func:`broadcast_value`), so every rank takes the same decision at the same step.

Every function is a no-op (returns its input) unless a process group with more than one rank is
initialised, so one-process users pay one ``is_initialized()`` call.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["is_distributed", "world_size", "rank", "rank_slice", "all_reduce_sum_",
           "broadcast_value", "barrier"]


def is_distributed() -> bool:
    """``True`` when ``torch.distributed`` is initialised with more than one rank."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return torch.distributed.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return torch.distributed.get_rank() if is_distributed() else 0


def rank_slice(n: int) -> slice:
    """This rank's part of ``n`` items split in rank order into contiguous pieces whose sizes
    differ by at most one (``torch.tensor_split``'s split): rank 0 the first, and so on."""
    k, r = world_size(), rank()
    size, extra = divmod(n, k)
    start = r * size + min(r, extra)
    return slice(start, start + size + (r < extra))


def _comm_device() -> torch.device:
    """Where collective buffers live: the current CUDA device under NCCL, else the CPU."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum_(tensors: Sequence[Tensor]) -> Sequence[Tensor]:
    """Replace each tensor by its sum over ranks, in place, with ONE collective (the tensors are
    packed into a flat buffer of the widest dtype among them and unpacked). Returns ``tensors``."""
    if not is_distributed() or not tensors:
        return tensors
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    device = _comm_device()
    flat = torch.cat([t.detach().reshape(-1).to(device, dtype) for t in tensors])
    torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
    offset = 0
    with torch.no_grad():
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset:offset + n].view(t.shape))
            offset += n
    return tensors


def broadcast_value(value: float, src: int = 0) -> float:
    """Rank ``src``'s ``value`` on every rank (a float; NaN and infinities pass unchanged)."""
    if not is_distributed():
        return value
    buf = torch.tensor([float(value)], dtype=torch.float64, device=_comm_device())
    torch.distributed.broadcast(buf, src=src)
    return float(buf.item())


def barrier() -> None:
    """Wait for every rank (a no-op without a process group)."""
    if is_distributed():
        torch.distributed.barrier()
