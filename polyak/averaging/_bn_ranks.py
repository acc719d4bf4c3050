"""BatchNorm recalibration across ranks: exact statistics of the whole recalibration data.

Under data parallelism each rank recalibrates on its own share of the batches. The statistics of
the union are not the mean of the per-rank statistics (that drops the spread of the per-rank
means); they follow from the per-rank sums. For each BatchNorm channel, with ``n`` inputs ``x``
over every rank and batch (everything but the channel dimension counts as an input):

    S1 = sum x,  S2 = sum x^2  (float64, all-reduced with n)
    running_mean = S1 / n,   running_var = (S2 - n mean^2) / (n - 1)   (unbiased, as torch keeps)

Within a forward pass each BatchNorm still normalises with its own batch's statistics (train
mode), as any recalibration does; with ``SyncBatchNorm`` those are the global batch's.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from polyak.distributed import all_reduce_sum_

__all__ = ["RankMoments"]


class RankMoments:
    """Forward pre-hooks on ``bns`` that add up count, sum and sum of squares of each input
    per channel; :meth:`finish` removes them, all-reduces and writes the running statistics."""

    def __init__(self, bns: list[_BatchNorm]) -> None:
        self.bns = [m for m in bns if m.running_mean is not None]
        self.s1 = [torch.zeros(m.num_features, dtype=torch.float64, device=m.running_mean.device)
                   for m in self.bns]
        self.s2 = [torch.zeros_like(s) for s in self.s1]
        self.counts = torch.zeros(len(self.bns) + 1, dtype=torch.float64)  # last: batches
        self.handles = [m.register_forward_pre_hook(self._hook(i)) for i, m in enumerate(self.bns)]

    def _hook(self, i: int):
        def hook(module: _BatchNorm, args: tuple) -> None:
            x = args[0].detach().double()
            dims = [0, *range(2, x.dim())] if x.dim() > 1 else [0]
            self.s1[i] += x.sum(dims)
            self.s2[i] += (x * x).sum(dims)
            self.counts[i] += x.numel() / x.shape[1 if x.dim() > 1 else 0]
            if i == 0:
                self.counts[-1] += 1
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def finish(self) -> None:
        """All-reduce the sums and set every BatchNorm's running statistics from them."""
        self.remove()
        all_reduce_sum_([*self.s1, *self.s2, self.counts])
        batches = int(self.counts[-1].item())
        for m, s1, s2, n in zip(self.bns, self.s1, self.s2, self.counts.tolist()):
            if n == 0:
                continue
            mean = s1 / n
            var = (s2 - n * mean * mean) / max(n - 1.0, 1.0)
            _set(m.running_mean, mean)
            _set(m.running_var, var.clamp_(min=0.0))
            if m.num_batches_tracked is not None:
                m.num_batches_tracked.fill_(batches)


def _set(buffer: Tensor, value: Tensor) -> None:
    buffer.copy_(value.to(buffer.dtype))
