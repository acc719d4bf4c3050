"""Exponential moving average of the iterates (docs/methods.md, "Weight averages").

``ema <- d*ema + (1-d)*w``, computed as ``lerp(ema, w, 1-d)``.

- ``warmup=True``: the decay of the collection after ``n`` earlier ones is
  ``d_n = min(d, 1 - (1 + n/warmup_gamma)^(-warmup_power))`` (the warm-up of timm's
  ``ModelEmaV3(use_warmup=True)``, defaults ``warmup_gamma=1``, ``warmup_power=2/3``): ``d_0 = 0``
  copies the first iterate and the window grows with ``n`` until it reaches ``1/(1-d)``. Without
  it, on a run of fewer than ~``1/(1-d)`` collections the average still leans on the first
  iterates (with ``d = 0.999`` after 250 steps the first one weighs ``0.999^249 = 0.78``).

- ``bias_correction=False``: the first collection copies ``w`` (as ``AveragedModel`` with
  ``get_ema_multi_avg_fn`` does), so the weights of the iterates ``w_1..w_n`` are
  ``d^(n-1), (1-d)d^(n-2), ..., (1-d)``: they sum to 1 and the first iterate keeps the excess.
- ``bias_correction=True``: ``ema`` starts at 0 and the reported weights are ``ema/(1-d^n)``
  (Adam-style), so iterate ``k`` weighs ``(1-d)d^(n-k)/(1-d^n)``: also summing to 1, with no
  excess on the first iterate. (With ``warmup`` the first decay is 0: there is no bias to
  correct, and ``bias_correction`` changes nothing.)
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
    epochs before ``start_epoch`` (0-based). With bf16/fp16 parameters the average is float32
    (``dtype=None``): in bf16 the update ``(1-d)(w - ema)`` rounds to zero for ``d`` near 1.

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
        start_epoch: int = 0, foreach: bool | None = None, warmup: bool = False,
        warmup_gamma: float = 1.0, warmup_power: float = 2 / 3, nonfinite: str = "raise",
        dtype: torch.dtype | None = None,
    ) -> None:
        ok = isinstance(decay, (int, float)) and not isinstance(decay, bool)
        if not ok or not math.isfinite(decay) or not 0.0 <= decay < 1.0:
            raise ValueError(f"Invalid decay: {decay!r} (allowed: 0 <= decay < 1)")
        for name, value in (("warmup_gamma", warmup_gamma), ("warmup_power", warmup_power)):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not ok or not math.isfinite(value) or value <= 0:
                raise ValueError(f"Invalid {name}: {value!r} (a finite number > 0)")
        if warmup not in (True, False):
            raise ValueError(f"Invalid warmup: {warmup!r} (allowed: True, False)")
        self.decay = float(decay)
        self.bias_correction = bool(bias_correction)
        self.warmup = bool(warmup)
        self.warmup_gamma, self.warmup_power = float(warmup_gamma), float(warmup_power)
        super().__init__(model, every=every, start_epoch=start_epoch, device=device,
                         foreach=foreach, nonfinite=nonfinite, dtype=dtype)

    @property
    def current_decay(self) -> float:
        """The decay the next collection uses (``decay``, or its warm-up value)."""
        if not self.warmup:
            return self.decay
        n = self.n_averaged
        return min(self.decay, 1.0 - (1.0 + n / self.warmup_gamma) ** -self.warmup_power)

    def _update(self, src: list[Tensor]) -> None:
        if self.n_averaged == 0 and not self.bias_correction:
            self._copy_(self.average, src)
        else:
            self._lerp_(self.average, src, 1.0 - self.current_decay)

    def _lerp_weight(self) -> float | None:
        return 1.0 if self.n_averaged == 0 and not self.bias_correction \
            else 1.0 - self.current_decay

    def _divisor(self) -> float:
        if not self.bias_correction or self.warmup:
            return 1.0
        return 1.0 - self.decay ** self.n_averaged

    def _hyper(self) -> dict:
        hyper = {**super()._hyper(), "decay": self.decay, "bias_correction": self.bias_correction}
        if self.warmup:
            hyper.update(warmup=True, warmup_gamma=self.warmup_gamma,
                         warmup_power=self.warmup_power)
        return hyper
