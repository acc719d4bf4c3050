"""The modern reference the benchmark runs beside the papers' methods: schedule-free AdamW
(Defazio et al., the ``schedulefree`` package). Not one of the five papers: no claims; its lr is
tuned over 0.1x..10x its default like the bases are."""

from __future__ import annotations

from polyak.bench.protocols._model import Arm, Plan, Protocol

KEY = "reference"

ARMS = (
    Arm("schedule-free-adamw", "schedule-free-adamw", {},
        Plan(({"lr": (2.5e-4, 2.5e-3, 2.5e-2)},), text="lr 0.1x..10x its default"),
        baseline="adamw@gadam"),
)

PROTOCOL = Protocol(
    key=KEY, paper="Defazio et al. (reference)", title="Schedule-free AdamW (reference method)",
    ran=("not a paper of polyak's: the reference a practitioner would try first",),
    deviations=(), arms=ARMS, claims=(),
)
