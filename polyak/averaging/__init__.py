"""Weight averages of a model: Uniform (Polyak/SWA/Gadam), EMA, PhaseWise (PWA) and FinalPhase
(PWA's aggregate at the end only); BatchNorm
recalibration; swapping averaged weights in and out. Imports torch only.

Every average keeps a flat copy of the model's parameters (never its buffers), is driven by
``end_epoch(epoch)`` (0-based epochs) and, for per-step schedules, ``step()`` after each optimizer
step, and is used through ``applied(model, bn_loader=...)`` (a context manager) or
``copy_to(model)``. See docs/methods.md sections 5 and 6.

Post-hoc averaging (docs/posthoc.md): :class:`Snapshots` stores the trajectory during training;
afterwards a family (``uniform_weights``, ``ema_weights``, ``pwa_weights``, ``latest_weights``,
``end_only_weights``, or ``power_ema_fit`` for EDM2's power EMA) gives a weight per snapshot and
:func:`reconstruct` applies them in one streaming pass over a :class:`SnapshotDir`.
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
from polyak.averaging.final_phase import FinalPhase
from polyak.averaging.phasewise import PhaseWise, phase_weights, reset_momentum
from polyak.averaging.posthoc import (
    FAMILIES,
    applied,
    copy_to,
    ema_weights,
    end_only_weights,
    latest_weights,
    pwa_weights,
    reconstruct,
    reconstruct_many,
    select,
    uniform_weights,
)
from polyak.averaging.power_ema import (
    PowerEMAFit,
    gamma_to_sigma_rel,
    power_ema_fit,
    power_ema_weights,
    sigma_rel_to_gamma,
)
from polyak.averaging.snapshot_dir import SnapshotDir, SnapshotError, SnapshotInfo
from polyak.averaging.snapshots import Snapshots
from polyak.averaging.uniform import Uniform

__all__ = [
    "NonFiniteWeights", "KEEP_BN_STATS", "StaleBatchNormWarning",
    "EMA", "FinalPhase", "PhaseWise", "Uniform", "WeightAverage", "bn_modules", "default_forward",
    "phase_weights", "recalibrate_bn", "reset_momentum", "saved_bn_buffers",
    # post-hoc averaging
    "FAMILIES", "Snapshots", "SnapshotDir", "SnapshotError", "SnapshotInfo", "PowerEMAFit",
    "applied", "copy_to", "ema_weights", "end_only_weights", "gamma_to_sigma_rel", "latest_weights",
    "power_ema_fit", "power_ema_weights", "pwa_weights", "reconstruct", "reconstruct_many",
    "select", "sigma_rel_to_gamma", "uniform_weights",
]
