"""The "aggregated at the end only" arm of Kobayashi's PWA paper, Table 1c ("At the end [24]").

Table 1c varies when the phase-wise aggregate is injected into training: at every phase end
(PWA), every k steps (Lookahead), or only "at the end of whole training as in Polyak averaging".
The last one leaves the step-decayed SGD run untouched and aggregates it once: here, PWA's
exponential weighting (eq. 3) over the epochs of the final lr phase,

    w_final = sum_t (1-gamma) gamma^(T-t) / (1-gamma^T) * w_t,   gamma = gamma0^(80/T),

with T the final phase's length (the paper does not say which epochs its Polyak-style average
takes; the final phase is where PWA's own last aggregate comes from, so only the injection timing
differs). Earlier phases are aggregated the same way and discarded; nothing is written into the
model, and the average is what the method reports (``reports_average``): mid-phase, the partial
aggregate of the running phase, as :class:`~polyak.averaging.PhaseWise` shows it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from polyak.averaging.bn import Forward
from polyak.averaging.phasewise import PhaseWise

__all__ = ["FinalPhase"]


class FinalPhase(PhaseWise):
    """PWA's aggregate of the last phase of ``phases``, reported and never injected.

    Same arguments as :class:`~polyak.averaging.PhaseWise` except ``momentum``/``optimizer``
    (the run is not restarted, so there is no momentum to keep or reset)."""

    reports_average = True

    def __init__(self, model: Any, phases: Iterable[int], gamma0: float = 0.9,
                 ref_epochs: float = 80, device: Any = None, *, foreach: bool | None = None,
                 nonfinite: str = "raise", dtype: Any = None) -> None:
        super().__init__(model, phases, gamma0=gamma0, ref_epochs=ref_epochs, device=device,
                         foreach=foreach, nonfinite=nonfinite, dtype=dtype)

    def _end_phase(self, bn_loader: Iterable[Any] | None, forward: Forward | None) -> None:
        if self.phase_index < len(self.phases) - 1:
            self.n_averaged = 0   # an earlier phase's aggregate: discarded, not injected
        # the last phase's aggregate stays: applied()/copy_to() report avg / (1 - gamma^T)

    def _hyper(self) -> dict[str, Any]:
        return {"phases": list(self.phases), "gamma0": self.gamma0,
                "ref_epochs": self.ref_epochs}

    def __repr__(self) -> str:
        return (f"FinalPhase(phases={self.phases}, gamma0={self.gamma0}, "
                f"ref_epochs={self.ref_epochs}, phase_index={self.phase_index}, "
                f"n_averaged={self.n_averaged})")
