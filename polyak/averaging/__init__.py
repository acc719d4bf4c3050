"""Weight averages of a model: Uniform (Polyak/SWA/Gadam), EMA, PhaseWise (PWA); BatchNorm
recalibration; swapping averaged weights in and out. Imports torch only.

Every average keeps a flat copy of the model's parameters (never its buffers), is driven by
``end_epoch(epoch)`` (0-based epochs) and, for per-step schedules, ``step()`` after each optimizer
step, and is used through ``applied(model, bn_loader=...)`` (a context manager) or
``copy_to(model)``. See docs/methods.md sections 5 and 6.
"""

from __future__ import annotations

from polyak.averaging.base import NonFiniteWeights, WeightAverage
from polyak.averaging.bn import (
    KEEP_BN_STATS,
    StaleBatchNormWarning,
    bn_modules,
    default_forward,
    recalibrate_bn,
    saved_bn_buffers,
)
from polyak.averaging.ema import EMA
from polyak.averaging.phasewise import PhaseWise, phase_weights, reset_momentum
from polyak.averaging.uniform import Uniform

__all__ = [
    "NonFiniteWeights", "KEEP_BN_STATS", "StaleBatchNormWarning",
    "EMA", "PhaseWise", "Uniform", "WeightAverage", "bn_modules", "default_forward",
    "phase_weights", "recalibrate_bn", "reset_momentum", "saved_bn_buffers",
]
