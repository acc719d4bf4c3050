"""One run on several processes (``torchrun --nproc_per_node=N -m polyak train ...``): the pieces
the training loop of :mod:`polyak.bench.train` calls so that it runs under
``DistributedDataParallel`` unchanged. Without a process group every function here is the
identity, and the loop is the one-process loop.

- The global batch of each step (the one the one-process run draws) is split across ranks in rank
  order (:func:`local_part`: contiguous pieces, sizes differing by at most one). Rank ``r``'s loss
  is ``k N_r / N`` times its local mean loss (``k`` ranks, ``N_r`` of the ``N`` examples), so
  DDP's gradient average is exactly the gradient of the global-batch mean; for an even split the
  factor is 1 and the loss is the usual local mean.
- Metrics (train loss and accuracy, validation and test) are sums over each rank's share,
  all-reduced (:func:`global_sums`): every rank has the same numbers, the ones the triggers read.
- BatchNorm recalibration: rank ``r`` passes batches ``r, r + k, r + 2k, ...`` of the training set
  (:class:`RankBatches`) and :func:`polyak.averaging.recalibrate_bn` combines the sums.
- Checkpoints: rank 0 writes after a barrier, when rank 0 decides (a time-based due is broadcast);
  every rank reads the same file, so a resumed run continues as the one-process resume does.

What is exact: the examples of every step, the gradients (up to the order of the all-reduce sum)
and hence, without BatchNorm and dropout, the whole run (allclose to the one-process run).
BatchNorm in training mode normalises with the statistics of the rank's share of the batch
(``--sync-bn``: of the global batch, via ``SyncBatchNorm``, GPUs only); dropout masks are drawn
from each rank's generator.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from polyak.distributed import (
    all_reduce_sum_,
    barrier,
    broadcast_value,
    is_distributed,
    rank,
    rank_slice,
    world_size,
)

__all__ = ["init_from_env", "local_part", "global_sums", "RankBatches", "wrap", "on_rank0",
           "same_decision", "convert_sync_bn"]


def init_from_env(device: str) -> bool:
    """Initialise the process group torchrun describes (``WORLD_SIZE`` > 1 in the environment):
    NCCL on CUDA, gloo on the CPU. Returns whether this process is one of several ranks."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return is_distributed()
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group("nccl" if cuda else "gloo")
    return True


def local_part(idx: torch.Tensor) -> tuple[torch.Tensor, float]:
    """This rank's part of the global batch ``idx`` and the factor of its local mean loss."""
    if not is_distributed():
        return idx, 1.0
    part = idx[rank_slice(len(idx))]
    return part, world_size() * len(part) / len(idx)


def global_sums(*values: torch.Tensor | float) -> list[float]:
    """The sums over ranks of per-rank sums (float64, one all-reduce)."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    return all_reduce_sum_([t])[0].tolist()


class RankBatches:
    """Every ``world_size``-th batch of ``batches`` (a :class:`~polyak.bench.train.Batches`),
    starting at this rank's index: the ranks' shares of the recalibration data."""

    def __init__(self, batches: Any) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(range(rank(), len(self.batches), world_size()))

    def __iter__(self) -> Iterator[Any]:
        k, r = world_size(), rank()
        for i, batch in enumerate(self.batches):
            if i % k == r:
                yield batch


def convert_sync_bn(model: nn.Module, device: str) -> nn.Module:
    """``SyncBatchNorm`` in place of every BatchNorm (``--sync-bn``): training-mode statistics of
    the global batch. torch runs it on GPUs only."""
    if not device.startswith("cuda"):
        raise ValueError(f"Invalid sync-bn with device {device!r}: torch's SyncBatchNorm runs on "
                         "CUDA only (allowed: --sync-bn with --device cuda)")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap(model: nn.Module) -> nn.Module:
    """The module the training forward passes go through: ``DistributedDataParallel(model)``
    under a process group (it all-reduces the gradients in ``backward``), else ``model``."""
    if not is_distributed():
        return model
    device = next(model.parameters()).device
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def same_decision(flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank (e.g. "save a checkpoint now" when it depends on each
    rank's clock)."""
    return bool(broadcast_value(float(flag))) if is_distributed() else flag


def on_rank0(write: Any, *args: Any, **kwargs: Any) -> Any:
    """A barrier (every rank got here), ``write(*args, **kwargs)`` on rank 0 only, a barrier
    (every rank can read what was written once this returns)."""
    barrier()
    result = write(*args, **kwargs) if rank() == 0 else None
    barrier()
    return result
