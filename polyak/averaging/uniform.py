"""Uniform (Polyak) averaging of iterates: SWA, Gadam/GadamX, averaged SGD/SAM.

docs/methods.md section 5; Izmailov et al. (SWA, Alg. 1), Granziol et al. (Gadam, Alg. 1),
Nitanda et al. (averaged SGD/SAM). The running mean ``mean <- mean + (w - mean)/(n+1)``, where
``n`` is the number of iterates already averaged and the first collection copies ``w``; the
update is the single kernel ``lerp(mean, w, 1/(n+1))`` (one multi-tensor launch for all
parameters).

When collection starts. Epochs are 0-based and an epoch ``e`` is collected, after it ends, when
``e >= start_epoch``. With ``T_avg`` as in the Gadam paper, ``start_epoch=T_avg`` reproduces the
Gadam code (``(epoch+1) > T_avg``, i.e. the first collected iterate is the one after T_avg + 1
epochs of training), and ``start_epoch=swa_start - 1`` reproduces the SWA code
(``(epoch+1) >= swa_start``), which starts one epoch earlier.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from polyak.averaging.base import WeightAverage

__all__ = ["Uniform"]


class Uniform(WeightAverage):
    """Arithmetic mean of the iterates collected from epoch ``start_epoch`` (0-based) on.

    ``every="epoch"`` collects in :meth:`end_epoch`; ``every=n`` (an int) collects in
    :meth:`step` at optimizer steps n, 2n, 3n, ... (counted from creation) that fall in epochs
    ``>= start_epoch``. ``device`` keeps the average elsewhere (e.g. ``"cpu"``) than the model;
    ``dtype`` (default: float32 for bf16/fp16 parameters, else theirs) in another precision.

    Example::

        avg = Uniform(model, start_epoch=161)
        for epoch in range(300):
            train_one_epoch(model)
            avg.end_epoch(epoch)
        with avg.applied(model, bn_loader=train_loader):
            evaluate(model)
    """

    def __init__(
        self, model: nn.Module, start_epoch: int = 0, every: str | int = "epoch",
        device: torch.device | str | None = None, *, foreach: bool | None = None,
        nonfinite: str = "raise", dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(model, every=every, start_epoch=start_epoch, device=device,
                         foreach=foreach, nonfinite=nonfinite, dtype=dtype)

    def _update(self, src: list[Tensor]) -> None:
        if self.n_averaged == 0:
            self._copy_(self.average, src)
        else:
            self._lerp_(self.average, src, 1.0 / (self.n_averaged + 1))

    def _lerp_weight(self) -> float | None:
        return 1.0 / (self.n_averaged + 1)
