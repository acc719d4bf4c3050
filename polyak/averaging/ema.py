"""Exponential moving average of the iterates (METHODS.md sec. 5).

``ema <- d*ema + (1-d)*w``, computed as ``lerp(ema, w, 1-d)``.

- ``bias_correction=False``: the first collection copies ``w`` (as ``AveragedModel`` with
  ``get_ema_multi_avg_fn`` does), so the weights of the iterates ``w_1..w_n`` are
  ``d^(n-1), (1-d)d^(n-2), ..., (1-d)``: they sum to 1 and the first iterate keeps the excess.
- ``bias_correction=True``: ``ema`` starts at 0 and the reported weights are ``ema/(1-d^n)``
  (Adam-style), so iterate ``k`` weighs ``(1-d)d^(n-k)/(1-d^n)``: also summing to 1, with no
  excess on the first iterate.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from polyak.averaging.base import WeightAverage

__all__ = ["EMA"]


class EMA(WeightAverage):
    """Exponential moving average with decay ``d`` (``0 <= d < 1``).

    ``every="step"`` (default) collects in every :meth:`step` (call it after ``optimizer.step()``),
    ``every=n`` every n steps, ``every="epoch"`` in :meth:`end_epoch`; nothing is collected in
    epochs before ``start_epoch`` (0-based).

    Example::

        ema = EMA(model, decay=0.999)
        for x, y in loader:
            loss_fn(model(x), y).backward(); opt.step(); opt.zero_grad()
            ema.step()
        with ema.applied(model):
            evaluate(model)
    """

    def __init__(
        self, model: nn.Module, decay: float, every: str | int = "step",
        bias_correction: bool = False, device: torch.device | str | None = None, *,
        start_epoch: int = 0, foreach: bool | None = None,
    ) -> None:
        ok = isinstance(decay, (int, float)) and not isinstance(decay, bool)
        if not ok or not math.isfinite(decay) or not 0.0 <= decay < 1.0:
            raise ValueError(f"Invalid decay: {decay!r} (allowed: 0 <= decay < 1)")
        self.decay = float(decay)
        self.bias_correction = bool(bias_correction)
        super().__init__(model, every=every, start_epoch=start_epoch, device=device,
                         foreach=foreach)

    def _update(self, src: list[Tensor]) -> None:
        if self.n_averaged == 0 and not self.bias_correction:
            self._copy_(self.average, src)
        else:
            self._lerp_(self.average, src, 1.0 - self.decay)

    def _divisor(self) -> float:
        if not self.bias_correction:
            return 1.0
        return 1.0 - self.decay ** self.n_averaged

    def _hyper(self) -> dict:
        return {**super()._hyper(), "decay": self.decay, "bias_correction": self.bias_correction}
