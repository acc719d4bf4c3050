"""Protocol cards: beside each paper's verdicts, what the paper ran, what polyak ran, and every
remaining deviation in one line each (Markdown, for the report).

A card lists the paper's setup (:attr:`~polyak.bench.protocols.Protocol.ran`), each arm of the
protocol that the report holds with its description, the values it ran with (the task's tuned
values of the arms that are tuned, and where tuning picked the end of a grid) and the quote its
settings rest on, then the protocol's deviations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from polyak.bench import protocols
from polyak.bench.protocols import Protocol

__all__ = ["protocol_card", "cards_markdown"]


def _values(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in values.items())


def protocol_card(proto: Protocol, methods: set[str], tuned: Mapping[str, Mapping[str, Any]],
                  edges: Mapping[str, Sequence[str]]) -> list[str]:
    """The Markdown lines of one protocol's card (its arms restricted to ``methods``)."""
    lines = [f"#### {proto.paper}: {proto.title}", "", "What the paper ran:", ""]
    lines += [f"- {line}" for line in proto.ran]
    lines += ["", "What polyak ran (each arm's settings, then how its free values were "
              "chosen and the values this task ran with):", ""]
    for arm in proto.arms:
        if arm.name not in methods:
            continue
        rec = protocols.parse(arm.name)
        fixed = {k: rec.defaults[k] for k in arm.settings}
        how = arm.plan.text or arm.plan.describe()
        got = tuned.get(arm.name)
        ran = f"; ran with {_values(got)}" if got else ""
        edge = "".join(f"; **{e}**" for e in edges.get(arm.name, ()))
        lines.append(f"- `{arm.name}`: {rec.description}"
                     + (f" ({_values(fixed)})" if fixed else "") + f". Tuning: {how}{ran}{edge}.")
    if proto.deviations:
        lines += ["", "Deviations from the paper:", ""]
        lines += [f"- {line}" for line in proto.deviations]
    return lines + [""]


def cards_markdown(methods: set[str], tuned: Mapping[str, Mapping[str, Any]],
                   edges: Mapping[str, Sequence[str]]) -> list[str]:
    """The cards of every protocol with an arm among ``methods`` (a claim of it can be read)."""
    lines: list[str] = []
    for proto in protocols.PROTOCOLS.values():
        if proto.claims and any(a.name in methods for a in proto.arms):
            lines += protocol_card(proto, methods, tuned, edges)
    return lines
