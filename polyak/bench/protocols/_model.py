"""The values a paper's protocol is written with: quotes, arms, tuning plans, the protocol.

An :class:`Arm` is one method as one paper ran it: a recipe, the settings that paper used for it
(schedule, weight decay and its kind, budget fraction, fixed hyper-parameters), a :class:`Plan`
saying how the paper chose the rest, and the :class:`Quote` behind each setting. Its name is the
store's method name: the recipe's own name when the arm is the recipe as published (``pwa``,
``gadamx``), ``<recipe>@<paper>`` when the paper ran the recipe its own way (``adam@tso-alra``:
the TSO-ALRA paper's Adam, step decay at 81/122 of 164, no weight decay, beta1 tuned).

A :class:`Plan` is the paper's tuning as data: start from another arm's tuned values
(``shares``, some ``keys`` of them, times ``scale``), then tune ``stages`` in order, each a grid
selected on the validation split with the earlier stages' winners fixed (Gadam App. B.2: the lr
first, then the weight decay). Grid values may be rules resolved when the stage runs:
:class:`~polyak._budget.OfBudget` (epochs scale with the budget), :class:`PerLr` (a decoupled
weight decay given per unit of the lr) and :class:`Times` (a multiple of the shared arm's
value); a whole stage may be a :class:`LargeLr` (SGDL's rule).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from polyak import _recipe_parts as parts
from polyak.bench.claims import Claim
from polyak.recipes import Recipe, Tuning, parse

__all__ = ["Quote", "Plan", "Arm", "Protocol", "Context", "PerLr", "Times", "LargeLr"]


@dataclass(frozen=True)
class Quote:
    """A paper's own words (verbatim but for math markup) and where they stand."""

    where: str
    text: str

    def __str__(self) -> str:
        return f'{self.where}: "{self.text}"'


@dataclass(frozen=True)
class Context:
    """What a stage's rules are resolved with: the budget the arm trains, the values tuned so
    far (``values``) and the shared arm's tuned values (``shared``)."""

    epochs: int
    steps_per_epoch: int
    values: Mapping[str, Any]
    shared: Mapping[str, Any]


@dataclass(frozen=True)
class PerLr:
    """A decoupled weight decay given per unit of the initial lr: ``value / lr`` (Gadam App. B.2
    searches "the same range for the weight decay scaled by initial learning rate")."""

    value: float

    def resolve(self, ctx: Context) -> float:
        return float(f"{self.value / ctx.values['lr']:.6g}")

    def __str__(self) -> str:
        return f"{self.value:g}/lr"


@dataclass(frozen=True)
class Times:
    """``factor`` times the shared arm's tuned ``of`` (averaged SGD's m and l step sizes)."""

    factor: float
    of: str = "lr"

    def resolve(self, ctx: Context) -> float:
        return float(f"{self.factor * ctx.shared[self.of]:.6g}")

    def __str__(self) -> str:
        return f"{self.factor:g} x the shared {self.of}"


@dataclass(frozen=True)
class LargeLr:
    """SGDL's learning rate (Wu et al. App. A.3.1): at least ``at_least`` times the shared arm's
    tuned lr, from the paper's CIFAR values ``absolute`` and the multiples ``multiples`` of it
    (its speech setting was 15x); values below the floor are dropped."""

    absolute: tuple[float, ...]
    multiples: tuple[float, ...]
    at_least: float = 10.0

    def values(self, ctx: Context) -> list[float]:
        base = float(ctx.shared["lr"])
        pool = {float(v) for v in self.absolute} | {float(f"{m * base:.6g}")
                                                     for m in self.multiples}
        return sorted(v for v in pool if v >= self.at_least * base * (1 - 1e-9))

    def __str__(self) -> str:
        return (f"{{{', '.join(f'{v:g}' for v in self.absolute)}}} and "
                f"{{{', '.join(f'{m:g}' for m in self.multiples)}}} x the shared lr, "
                f"those >= {self.at_least:g} x it")


Stage = Mapping[str, Any]   # hyper-parameter -> tuple of values (or rules), or a LargeLr


@dataclass(frozen=True)
class Plan:
    """How an arm's free hyper-parameters are chosen (see the module docstring); ``text`` says
    what the paper did, in a line."""

    stages: tuple[Stage, ...] = ()
    shares: str | None = None
    keys: tuple[str, ...] | None = None
    scale: Mapping[str, float] = field(default_factory=dict)
    text: str = ""

    @property
    def tuned(self) -> bool:
        return bool(self.stages)

    def start(self, shared: Mapping[str, Any]) -> dict[str, Any]:
        """The values taken from the shared arm (its ``keys``, times ``scale``)."""
        keys = shared.keys() if self.keys is None else self.keys
        return {k: float(f"{shared[k] * self.scale[k]:.6g}") if k in self.scale else shared[k]
                for k in keys if k in shared}

    def grid(self, i: int, ctx: Context) -> dict[str, list[Any]]:
        """Stage ``i`` with its rules resolved (duplicates dropped, order kept)."""
        out: dict[str, list[Any]] = {}
        for hp, values in self.stages[i].items():
            if isinstance(values, LargeLr):
                resolved = values.values(ctx)
            else:
                resolved = [_resolve(v, ctx) for v in values]
            out[hp] = list(dict.fromkeys(resolved))
        return out

    def size(self) -> int:
        """Trials of the largest stage (rules count as one value each)."""
        sizes = []
        for stage in self.stages:
            n = 1
            for values in stage.values():
                n *= len(values.absolute) + len(values.multiples) \
                    if isinstance(values, LargeLr) else len(values)
            sizes.append(n)
        return max(sizes, default=0)

    def describe(self) -> str:
        """The plan in words (``polyak list``, the tuned file, the protocol card)."""
        bits = []
        if self.shares and self.keys == ():
            bits.append(f"relative to {self.shares}'s tuned values:")
        elif self.shares:
            what = " values" if self.keys is None else f" {', '.join(self.keys)}"
            scaled = "".join(f", {k} x {v:g}" for k, v in self.scale.items())
            bits.append(f"{self.shares}'s tuned{what}{scaled}")
        for i, stage in enumerate(self.stages):
            grid = "; ".join(f"{hp} in {_show(v)}" for hp, v in stage.items())
            bits.append(f"{'then ' if i else ''}{grid}")
        return ", ".join(bits) or "not tuned"


def _resolve(value: Any, ctx: Context) -> Any:
    if isinstance(value, parts.Rule):
        return value(ctx.epochs, ctx.steps_per_epoch)
    if isinstance(value, (PerLr, Times)):
        return value.resolve(ctx)
    return value


def _show(values: Any) -> str:
    if isinstance(values, LargeLr):
        return str(values)
    if len(values) > 3 and all(isinstance(v, parts.OfBudget) for v in values):
        return (f"{{{values[0].fraction:.3g}, {values[1].fraction:.3g}, ..., "
                f"{values[-1].fraction:.3g}}} x epochs")
    return "{" + ", ".join(str(v) if not isinstance(v, float) else f"{v:g}"
                           for v in values) + "}"


def plan_of_tuning(tuning: Tuning) -> Plan:
    """A plain recipe's :class:`~polyak.recipes.Tuning` as a plan (its relative grid becomes
    :class:`Times` values of the shared recipe's tuned value)."""
    stage: dict[str, Any] = {}
    for hp, values in tuning.grid.items():
        stage[hp] = tuple(Times(v, hp) for v in values) if tuning.relative else tuple(values)
    keys = () if tuning.relative else None
    return Plan((stage,) if stage else (), tuning.shares, keys, dict(tuning.scale),
                tuning.protocol)


@dataclass(frozen=True)
class Arm:
    """One method as one paper ran it (see the module docstring).

    ``settings`` override the recipe's defaults (they become the arm's defaults: a run's
    identity holds them); ``sources`` map a setting (or ``"plan"``) to the quote it comes from;
    ``baseline`` is the arm the results table tests it against."""

    name: str
    recipe: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    plan: Plan = field(default_factory=Plan)
    description: str = ""
    sources: Mapping[str, Quote] = field(default_factory=dict)
    baseline: str | None = None

    def value(self, paper: str = "") -> Recipe:
        """The arm as a :class:`~polyak.recipes.Recipe` named after it (settings as defaults)."""
        base = parse(self.recipe)
        unknown = sorted(set(self.settings) - set(base.defaults))
        if unknown:
            raise ValueError(f"Arm {self.name}: unknown setting(s) {', '.join(unknown)} for "
                             f"{self.recipe!r}")
        return replace(base, name=self.name, defaults={**base.defaults, **self.settings},
                       overrides={}, description=self.description or base.description,
                       paper=paper or base.paper,
                       tuning=Tuning(shares=self.plan.shares, protocol=self.plan.describe()))


@dataclass(frozen=True)
class Protocol:
    """One paper's comparisons as it ran them: its arms, its claims over them, what it ran and
    what polyak runs instead (``deviations``, one line each), and its quotes."""

    key: str
    paper: str
    title: str
    ran: tuple[str, ...]
    deviations: tuple[str, ...]
    arms: tuple[Arm, ...]
    claims: tuple[Claim, ...]
    uses: tuple[str, ...] = ()      # arms of other protocols its claims compare (by name)
    notes: tuple[str, ...] = ()

    def quotes(self) -> list[Quote]:
        """Every quote the protocol cites (settings, plans, claims)."""
        found = [q for arm in self.arms for q in arm.sources.values()]
        found += [c.source for c in self.claims if c.source is not None]
        return list(dict.fromkeys(found))
