"""Base optimizers (``torch.optim.Optimizer`` subclasses) and optimizer wrappers.

Sections (s.) of the method reference, docs/methods.md:

- :class:`Padam` - partially adaptive Adam(W)/AMSGrad (Gadam, GadamX base), s.1
- :class:`AdaBound` - AdaBound/AMSBound, s.2
- :class:`Lookahead` - k steps forward, 1 step back, around any optimizer, s.3
- :class:`SAM` - sharpness-aware minimization (and ASAM) around any optimizer, s.4;
  :func:`frozen_bn_stats` keeps BatchNorm statistics out of a second forward pass.
- :class:`KFACSqrt` - Kronecker-factored F^(-1/2) preconditioning (TSO-ALRA stage 1), s.8
- :class:`TSOALRA` - KFACSqrt that switches once to plain SGD at an epoch or a trigger, s.8

Imports torch only.
"""

from __future__ import annotations

from polyak.optim.adabound import AdaBound
from polyak.optim.kfac import KFACSqrt
from polyak.optim.lookahead import Lookahead
from polyak.optim.padam import Padam
from polyak.optim.sam import SAM, frozen_bn_stats
from polyak.optim.tso_alra import TSOALRA

__all__ = ["AdaBound", "KFACSqrt", "Lookahead", "Padam", "SAM", "TSOALRA", "frozen_bn_stats"]
