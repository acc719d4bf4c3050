"""The five papers' comparisons as they ran them: one protocol per paper, as data.

Each module holds one paper (:mod:`.pwa`, :mod:`.sgdl`, :mod:`.tso_alra`, :mod:`.gadam`,
:mod:`.nitanda`; :mod:`.reference` adds schedule-free AdamW): its arms (each a recipe with the
schedule, weight decay, budget fraction and tuning plan that paper used, and the quote behind each
setting), its claims over those arms (with the paper's own figure), what the paper ran and every
place polyak runs something else. A claim's two arms come from the protocol of the paper that
makes it: the TSO-ALRA claims' Adam is ``adam@tso-alra`` (step decay at 81/122 of 164, no weight
decay, beta1 tuned), not the Gadam paper's ``adam``.

A method spec of the benchmark is an arm name or a recipe spec, with overrides after ``:``
(``"adam@tso-alra:lr=0.01"``); :func:`parse` turns it into a :class:`~polyak.recipes.Recipe`.
Scaling to a run's budget follows one rule (:mod:`polyak._budget`): epoch counts and phase
boundaries are fractions of the budget, per-epoch factors follow the paper's formula.
"""

from __future__ import annotations

from typing import Any

from polyak import recipes
from polyak.bench.claims import Claim
from polyak.bench.protocols import gadam, nitanda, pwa, reference, sgdl, tso_alra
from polyak.bench.protocols._model import (
    Arm,
    Context,
    LargeLr,
    PerLr,
    Plan,
    Protocol,
    Quote,
    Times,
    plan_of_tuning,
)
from polyak.recipes import Recipe

__all__ = ["PROTOCOLS", "ARMS", "CLAIMS", "Arm", "Plan", "Protocol", "Quote", "Context", "PerLr",
           "Times", "LargeLr", "parse", "plan", "arm", "protocol_of", "baseline_of", "baselines_of",
           "default_methods", "claims_of", "catalogue"]

PROTOCOLS: dict[str, Protocol] = {p.key: p for p in (
    pwa.PROTOCOL, sgdl.PROTOCOL, tso_alra.PROTOCOL, gadam.PROTOCOL, nitanda.PROTOCOL,
    reference.PROTOCOL)}


def _arms() -> dict[str, tuple[Arm, Protocol]]:
    found: dict[str, tuple[Arm, Protocol]] = {}
    for proto in PROTOCOLS.values():
        for a in proto.arms:
            if a.name in found:
                raise ValueError(f"Arm {a.name!r} is defined by two protocols "
                                 f"({found[a.name][1].key}, {proto.key})")
            found[a.name] = (a, proto)
    return found


_BY_NAME = _arms()
ARMS: dict[str, Arm] = {name: a for name, (a, _) in _BY_NAME.items()}
CLAIMS: tuple[Claim, ...] = tuple(c for p in PROTOCOLS.values() for c in p.claims)


def arm(name: str) -> Arm | None:
    """The arm called ``name`` (overrides after ``:`` ignored), or None."""
    found = _BY_NAME.get(name.split(":", 1)[0].strip())
    return None if found is None else found[0]


def protocol_of(name: str) -> Protocol | None:
    """The protocol that defines the arm ``name``, or None for a plain recipe spec."""
    found = _BY_NAME.get(name.split(":", 1)[0].strip())
    return None if found is None else found[1]


def parse(spec: str | Recipe) -> Recipe:
    """An arm name or recipe spec, with ``:key=value`` overrides, as a Recipe."""
    if isinstance(spec, Recipe):
        return spec
    head, overrides = recipes.split_spec(spec)
    if head in _BY_NAME:
        a, proto = _BY_NAME[head]
        return a.value(proto.paper).with_overrides(**overrides)
    return recipes.parse(spec)


def plan(name: str) -> Plan:
    """How ``name`` (an arm or a recipe name) is tuned."""
    a = arm(name)
    return a.plan if a is not None else plan_of_tuning(recipes.parse(name).tuning)


def baseline_of(spec: str) -> str | None:
    """The method the results table tests ``spec`` against (overrides dropped)."""
    a = arm(spec)
    if a is not None:
        return a.baseline
    return recipes.BASELINES.get(spec.split(":", 1)[0].strip())


def baselines_of(spec: str) -> list[str]:
    """The candidate baselines of ``spec`` in order: its arm's, then its recipe's."""
    head = spec.split(":", 1)[0].strip()
    a = arm(head)
    found = [a.baseline if a is not None else None, recipes.BASELINES.get(head)]
    return list(dict.fromkeys(b for b in found if b is not None))


def default_methods() -> list[str]:
    """Every arm of every protocol, paper by paper (what ``polyak bench`` runs by default)."""
    return list(_BY_NAME)


def catalogue() -> list[dict[str, Any]]:
    """Every arm as plain data (``polyak list``): its protocol, recipe, settings (rules as their
    formula), how it is tuned and its baseline."""
    from polyak._recipe_parts import shown

    rows = []
    for name, (a, proto) in _BY_NAME.items():
        rows.append({"name": name, "protocol": proto.key, "paper": proto.paper,
                     "recipe": a.recipe, "description": parse(name).description,
                     "settings": {k: shown(v) for k, v in a.settings.items()},
                     "tuning": a.plan.text or a.plan.describe(), "baseline": a.baseline})
    return rows


def claims_of(methods: set[str] | None = None) -> list[Claim]:
    """The claims whose two arms are both in ``methods`` (all claims for None)."""
    return [c for c in CLAIMS if methods is None or (c.a in methods and c.b in methods)]


def _check() -> None:
    """Every claim compares arms that exist; every arm's plan shares an arm that exists."""
    for proto in PROTOCOLS.values():
        for c in proto.claims:
            for side in (c.a, c.b):
                if side not in _BY_NAME:
                    raise ValueError(f"Claim {c.text!r} of {proto.key} names no arm {side!r}")
        for a in proto.arms:
            if a.plan.shares is not None and a.plan.shares not in _BY_NAME:
                raise ValueError(f"Arm {a.name!r} shares {a.plan.shares!r}, which is no arm")


_check()
