"""The named methods of the five papers as data: one :class:`Recipe` value per method.

``polyak.recipe(spec, model, epochs, steps_per_epoch, **overrides) -> Method``. A spec is

- a name: ``"gadamx"``, ``"pwa"``, ``"tso-alra"``, ... (``polyak list`` shows them all);
- a composition ``"<base>+<averaging>"``: any base (``sgd``, ``sgdm``, ``adamw``, ``sam``, ...) with
  ``uniform`` (Polyak/SWA/Gadam averaging with the SWA-style schedule of Gadam eq. 13),
  ``ema`` (per-step exponential average, base schedule kept) or ``phasewise`` (PWA);
- either of them followed by overrides: ``"gadamx:lr=0.05,avg_start=20"``;
- or a :class:`Recipe` value (``parse(spec)``, ``recipe.with_overrides(lr=0.05)``).

A spec is parsed once into a :class:`Recipe`: base, averaging, hyper-parameters with their
budget-scaled defaults, the user's overrides, the paper it comes from and how that paper tuned it
(:class:`Tuning`: the grid searched, or the recipe whose tuned values it reuses). Keyword
overrides are merged into the value as they are (any Python object: they never pass through text).

Schedules scale with the epoch budget (the ``schedule`` hyper-parameter, :mod:`polyak._budget`):
step-decay phases at 50/25/25 % (PWA, SAM; ``"step"``), TSO-ALRA's 81/122 of 164
(``"tso-alra"``), SGDL's decay at 1/3 and 2/3 (``"thirds"``), Gadam's linear schedule (eq. 12,
``"linear"``) for the adaptive baselines and its eq. 13 (``"swa"``) with averaging from the same
fraction as 161/300 (Gadam, SWA), and TSO-ALRA's switch after 10 % of the epochs (the paper tuned
it in 5..75 of 164 epochs; 10-25 for most settings). Step-counted TSO-ALRA settings scale with the
steps per epoch (the paper's epoch has 391 steps). The recipes here are the methods with their
published defaults; how each paper ran them in its comparisons (its schedule, weight decay,
tuning) is the benchmark's per-paper protocols (:mod:`polyak.bench.protocols`).
The builders live in :mod:`polyak._recipe_parts`, the tuning protocols in :mod:`polyak.bench.tune`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from polyak import _recipe_parts as parts
from polyak._hyperparameters import check_hyperparameters
from polyak._recipe_parts import OfBudget
from polyak.method import Method

__all__ = ["Recipe", "Tuning", "recipe", "names", "available", "describe", "parse",
           "hyperparameters", "UnknownRecipe", "PAPER_METHODS", "BASELINES", "AVERAGINGS",
           "LOOP_OPTIONS"]

#: options of the training loop every recipe takes as keywords (not hyper-parameters: they are
#: not part of a spec, not tuned, and a run's identity does not include them); see
#: :class:`polyak.method.Method`.
LOOP_OPTIONS = ("clip", "scaler", "accumulate", "nonfinite")


class UnknownRecipe(ValueError):
    """An unknown recipe name, averaging or hyper-parameter; the message lists the valid ones."""


@dataclass(frozen=True)
class Tuning:
    """How a recipe's hyper-parameters are chosen on validation data (the paper's protocol).

    ``grid``: hyper-parameter -> values tried (a value may be a budget rule such as
    ``OfBudget``, resolved at the tuning budget). ``shares``: the recipe whose tuned values this one
    reuses, multiplied by ``scale`` (e.g. averaged SGD at twice momentum SGD's lr); with both
    ``shares`` and ``grid`` the grid values multiply the shared recipe's tuned values (SGDL: 10x to
    13x momentum SGD's lr). Neither: the published defaults are used untuned.
    """

    grid: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    shares: str | None = None
    scale: Mapping[str, float] = field(default_factory=dict)
    protocol: str = ""

    @property
    def relative(self) -> bool:
        return self.shares is not None and bool(self.grid)

    @property
    def tuned(self) -> bool:
        """Whether trials are run for this recipe (it has a grid)."""
        return bool(self.grid)

    def size(self) -> int:
        n = 1
        for values in self.grid.values():
            n *= len(values)
        return n if self.grid else 0


@dataclass(frozen=True)
class Recipe:
    """One method: a base optimizer, an optional averaging, hyper-parameters and provenance.

    ``defaults`` may hold budget rules (:class:`~polyak._recipe_parts.OfBudget`, ``PerEpoch``,
    ``WindowPerStep``); :meth:`hyperparameters` resolves them for a budget and applies the
    ``overrides``. Build the method with :meth:`build`.
    """

    name: str
    base: str
    averaging: str | None
    description: str
    defaults: Mapping[str, Any]
    overrides: Mapping[str, Any] = field(default_factory=dict)
    paper: str = ""
    tuning: Tuning = field(default_factory=Tuning)

    def with_overrides(self, **overrides: Any) -> Recipe:
        """A copy with ``overrides`` merged in. Validated: unknown keys raise ``UnknownRecipe``,
        a value out of its range (NaN and infinities included) ``ValueError`` naming it and what
        is allowed (budget rules are checked once resolved, in :meth:`build`)."""
        unknown = sorted(set(overrides) - set(self.defaults))
        if unknown:
            loop = sorted(set(unknown) & set(LOOP_OPTIONS))
            hint = (f" ({', '.join(loop)}: a loop option, not a hyper-parameter; pass it to "
                    "polyak.recipe(...) or Recipe.build(...))") if loop else ""
            raise UnknownRecipe(f"Unknown hyper-parameter(s) {', '.join(unknown)} for "
                                f"{self.name!r}{hint}; valid: {', '.join(sorted(self.defaults))}")
        check_hyperparameters({k: v for k, v in overrides.items()
                               if not isinstance(v, parts.Rule)})
        return replace(self, overrides={**self.overrides, **overrides})

    def hyperparameters(self, epochs: int, steps_per_epoch: int) -> dict[str, Any]:
        """Every hyper-parameter the recipe runs with for this budget (rules resolved at the
        epochs it trains: ``budget`` x ``epochs``)."""
        values = {**self.defaults, **self.overrides}
        run = parts._budget_epochs(values.get("budget", 1.0), epochs)
        return parts.resolve(values, run, steps_per_epoch)

    @property
    def spec(self) -> str:
        """The recipe as a spec string (overrides shown with ``repr``; for display)."""
        tail = ",".join(f"{k}={v!r}" for k, v in self.overrides.items())
        return f"{self.name}:{tail}" if tail else self.name

    def available(self) -> tuple[bool, str]:
        """``(True, "")`` when every piece it needs is installed, else ``(False, reason)``."""
        return parts.check_available(self.base, self.averaging)

    def build(self, model: nn.Module, epochs: int, steps_per_epoch: int, *,
              param_groups: Any = None, **loop: Any) -> Method:
        """The :class:`~polyak.method.Method` of this recipe for a training budget;
        ``param_groups`` as :func:`polyak.param_groups.param_groups` makes them; ``loop``: the
        loop options of :data:`LOOP_OPTIONS` (``clip``, ``scaler``, ``accumulate``,
        ``nonfinite``), passed to the Method as they are (``steps_per_epoch`` counts optimizer
        steps, i.e. micro-batches / ``accumulate``). Every hyper-parameter is checked for
        its range once resolved for the budget."""
        bad = sorted(set(loop) - set(LOOP_OPTIONS))
        if bad:
            raise UnknownRecipe(f"Unknown loop option(s) {', '.join(bad)}; valid: "
                                f"{', '.join(LOOP_OPTIONS)} (hyper-parameters go to "
                                "with_overrides)")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"Invalid epochs: {epochs!r} (an integer >= 1)")
        if (isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int)
                or steps_per_epoch < 1):
            raise ValueError(f"Invalid steps_per_epoch: {steps_per_epoch!r} (an integer >= 1)")
        ok, why = self.available()
        if not ok:
            raise UnknownRecipe(f"Recipe {self.name!r} is unavailable: {why}")
        hp = self.hyperparameters(epochs, steps_per_epoch)
        check_hyperparameters(hp)
        return parts.build(model, self.base, self.averaging, hp, epochs, steps_per_epoch,
                           name=self.spec, param_groups=param_groups, loop=loop)

    def __iter__(self) -> Iterator[Any]:
        """``base, averaging, overrides = parse(spec)`` (the tuple the former API returned)."""
        inherited = _base_defaults(self.base, self.averaging)
        own = {k: v for k, v in self.defaults.items() if inherited.get(k, not v) != v}
        return iter((self.base, self.averaging, {**own, **self.overrides}))


def _base_defaults(base: str, averaging: str | None) -> dict[str, Any]:
    return {**parts.BASES[base].defaults, **parts.AVERAGING_DEFAULTS.get(averaging or "", {}),
            **parts.COMMON_DEFAULTS}


AVERAGINGS = ("uniform", "ema", "phasewise", "final", "auto")

_PWA = "Kobayashi, phase-wise parameter aggregation"
_SGDL = "Wu et al., vanilla SGD with larger learning rates"
_TSO = "Ida & Fujiwara, TSO-ALRA"
_GADAM = "Granziol, Wan et al., Gadam"
_ASGD = "Nitanda et al., averaged SGD and SAM"
_SMALL_SGD = (1e-3, 1e-2, 5e-2, 1e-1)   # SGDL App. A.3.1 (SGD and SGDM)
_ADAM_LRS = (1e-1, 1e-2, 1e-3, 1e-4)    # TSO-ALRA Sec. V (Adam, AMSGrad)
_SWITCH = tuple(OfBudget(k / 164, f"epoch {k} of the paper's 164") for k in range(5, 80, 5))


def _shares(name: str, **scale: float) -> Tuning:
    text = f"reuses {name}'s tuned values" + "".join(f", {k} x {v:g}" for k, v in scale.items())
    return Tuning(shares=name, scale=scale, protocol=text)


_ADAM_TUNING = Tuning({"lr": _ADAM_LRS, "beta1": (0.9, 0.99)},
                      protocol=f"{_TSO} Sec. V: lr in 1e-1..1e-4, beta1 in {{0.9, 0.99}}")

# name -> (base, averaging, own defaults, description, paper, tuning)
_TABLE: dict[str, tuple[str, str | None, dict[str, Any], str, str, Tuning]] = {
    "sgd": ("sgd", None, {}, "", _SGDL,
            Tuning({"lr": _SMALL_SGD}, protocol=f"{_SGDL} App. A.3.1: the small grid "
                   "0.001..0.1 (TSO-ALRA's plain SGD: 1e-4..1e-1)")),
    "sgdm": ("sgdm", None, {}, "", _PWA,
             Tuning({"lr": _SMALL_SGD}, protocol=f"{_SGDL} App. A.3.1 (Gadam: 0.001..0.1)")),
    "sgdl": ("sgdl", None, {}, "", _SGDL,
             Tuning({"lr": (10.0, 11.0, 12.0, 13.0)}, shares="sgdm",
                    protocol=f"{_SGDL}: lr 10x..13x momentum SGD's tuned lr (1.0..1.3 vs 0.1)")),
    "adam": ("adam", None, {}, "", _TSO, _ADAM_TUNING),
    "amsgrad": ("amsgrad", None, {}, "", _TSO, _ADAM_TUNING),
    "adamw": ("adamw", None, {}, "", _GADAM,
              Tuning({"lr": (1e-4, 1e-3, 1e-2), "weight_decay": (0.1, 0.25, 1.0)},
                     protocol=f"{_GADAM} App.: the base's lr, and its decoupled weight decay "
                     "in 0.1..1 (the paper's 1e-4..1e-3 per unit of the initial lr 1e-3); "
                     "one joint grid instead of the paper's lr-then-decay order")),
    "padam": ("padam", None, {}, "", _GADAM,
              Tuning({"lr": (1e-3, 1e-2, 1e-1)},
                     protocol=f"{_GADAM} App.: Padam on SGD's grid 0.001..0.1")),
    "adabound": ("adabound", None, {}, "", _PWA,
                 Tuning(protocol=f"{_PWA} Table 3: published defaults, not tuned")),
    "amsbound": ("amsbound", None, {}, "", _PWA,
                 Tuning(protocol=f"{_PWA}: published defaults, not tuned")),
    "lookahead": ("lookahead", None, {}, "", _PWA, _shares("sgdm")),
    "sam": ("sam", None, {}, "", _ASGD, _shares("sgdm")),
    "asam": ("asam", None, {}, "", _ASGD, _shares("sgdm")),
    "tso-alra": ("tso-alra", None, {}, "", _TSO,
                 Tuning({"lr": (1e-1, 1e-2, 1e-3), "switch_epoch": _SWITCH},
                        protocol=f"{_TSO} Sec. V: lr in 1e-1..1e-3, switch epoch in 5, 10, "
                        "..., 75 of 164, scaled to the budget")),
    "schedule-free-adamw": ("schedule-free-adamw", None, {}, "", "Defazio et al. (reference)",
                            Tuning({"lr": (2.5e-4, 2.5e-3, 2.5e-2)},
                                   protocol="reference method: lr 0.1x..10x its default")),
    "swa": ("sgdm", "uniform", {},
            "SWA: momentum SGD + uniform averaging from 161/300 (Izmailov)", _GADAM,
            _shares("sgdm")),
    "pwa": ("sgdm", "phasewise", {},
            "Phase-wise parameter aggregation on momentum SGD, phases 50/25/25 % (Kobayashi)",
            _PWA, _shares("sgdm")),
    "pwa-adam": ("adam", "phasewise", {"schedule": "constant"},
                 "PWA on Adam: one constant-lr phase (PWA paper Table 3)", _PWA, _shares("adam")),
    "pwa-amsgrad": ("amsgrad", "phasewise", {"schedule": "constant"},
                    "PWA on AMSGrad: one constant-lr phase (PWA paper Table 3)", _PWA,
                    _shares("amsgrad")),
    "pwa-adabound": ("adabound", "phasewise", {"schedule": "constant"},
                     "PWA on AdaBound: one constant-lr phase (PWA paper Table 3)", _PWA,
                     _shares("adabound")),
    "pwa-end-only": ("sgdm", "final", {},
                     "Momentum SGD, step decay 50/25/25 %, aggregated (PWA eq. 3) over its last "
                     "phase once at the end, never injected (PWA Table 1c's 'at the end')", _PWA,
                     _shares("sgdm")),
    "gadam": ("adamw", "uniform", {}, "Gadam: AdamW + iterate averaging (Granziol et al.)",
              _GADAM, _shares("adamw")),
    "gadamx": ("padam", "uniform", {},
               "GadamX: Padam(1/8, AMSGrad, decoupled wd) + iterate averaging", _GADAM,
               _shares("padam")),
    "gadam-auto": ("adamw", "auto", {},
                   "GadamAuto: constant lr; averaging starts when val accuracy plateaus", _GADAM,
                   _shares("adamw")),
    "gadam-lookahead": ("lookahead-adamw", "uniform", {},
                        "Gadam + Lookahead: Lookahead(AdamW) until averaging starts, then AdamW",
                        _GADAM, _shares("adamw")),
    "asgd": ("sgdm", "uniform", {"lr": 0.2},
             "Averaged SGD with a larger learning rate (Nitanda et al.)", _ASGD,
             _shares("sgdm", lr=2.0)),
    "sam-avg": ("sam", "uniform", {"lr": 0.2},
                "Averaged SAM with a larger learning rate (Nitanda et al.)", _ASGD,
                _shares("sgdm", lr=2.0)),
}

PAPER_METHODS = (
    "sgd", "sgdm", "sgdl", "adam", "amsgrad", "adamw", "padam", "adabound", "amsbound",
    "lookahead", "pwa", "pwa-end-only", "pwa-adam", "pwa-amsgrad", "pwa-adabound", "swa",
    "gadam", "gadamx", "gadam-auto", "gadam-lookahead", "tso-alra", "asgd", "sam", "asam",
    "sam-avg", "schedule-free-adamw",
)

BASELINES = {
    "sgdm": "sgd", "sgdl": "sgdm", "adam": "sgdm", "adamw": "adam", "amsgrad": "adam",
    "padam": "adamw",
    "adabound": "adam", "amsbound": "amsgrad", "lookahead": "sgdm", "pwa": "sgdm",
    "pwa-end-only": "sgdm",
    "pwa-adam": "adam", "pwa-amsgrad": "amsgrad", "pwa-adabound": "adabound", "swa": "sgdm",
    "gadam": "adamw", "gadamx": "swa", "gadam-auto": "adamw", "gadam-lookahead": "gadam",
    "tso-alra": "sgd", "asgd": "sgdm", "sam": "sgdm", "asam": "sam", "sam-avg": "sam",
    "schedule-free-adamw": "adamw",
}


def _make(name: str, base: str, averaging: str | None, own: dict[str, Any], text: str,
          paper: str, tuning: Tuning) -> Recipe:
    defaults = {**_base_defaults(base, averaging), **own}
    return Recipe(name, base, averaging, text or parts.BASES[base].description, defaults,
                  paper=paper, tuning=tuning)


RECIPES: dict[str, Recipe] = {name: _make(name, *row) for name, row in _TABLE.items()}
RECIPES.update({name: _make(name, name, None, {}, "", "", Tuning())
                for name in parts.BASES if name not in RECIPES})


def names() -> list[str]:
    """Every recipe name, paper methods first, then the other bases."""
    return [*PAPER_METHODS, *(n for n in RECIPES if n not in PAPER_METHODS)]


def parse(spec: str | Recipe) -> Recipe:
    """``"name[+averaging][:key=value,...]"`` -> its :class:`Recipe` (a Recipe is returned as
    it is). Text values become bool, None, int, float or str."""
    if isinstance(spec, Recipe):
        return spec
    head, overrides = split_spec(spec)
    name, plus, averaging = head.partition("+")
    name = name.strip()
    if plus:
        averaging = averaging.strip()
        if averaging not in AVERAGINGS:
            raise UnknownRecipe(f"Unknown averaging {averaging!r} in {spec!r}; "
                                f"valid: {', '.join(AVERAGINGS)}")
        if name not in parts.BASES:
            raise UnknownRecipe(f"Unknown base {name!r} in {spec!r}; "
                                f"valid bases: {', '.join(parts.BASES)}")
        composed = _make(f"{name}+{averaging}", name, averaging, {}, "", "", _shares(name))
        return composed.with_overrides(**overrides)
    if name not in RECIPES:
        raise UnknownRecipe(f"Unknown recipe {name!r}; valid: {', '.join(names())}")
    return RECIPES[name].with_overrides(**overrides)


def split_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"head:key=value,..."`` -> (head, {key: value}) with the values parsed as
    :func:`parse` does (bool, None, int, float or str)."""
    if not isinstance(spec, str) or not spec.strip():
        raise UnknownRecipe(f"Invalid recipe spec: {spec!r}")
    head, _, tail = spec.strip().partition(":")
    overrides: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in tail.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UnknownRecipe(f"Invalid override {item!r} in {spec!r}: expected key=value")
        overrides[key.strip()] = _parse_value(value.strip())
    return head.strip(), overrides


def _parse_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def hyperparameters(spec: str | Recipe, epochs: int,
                    steps_per_epoch: int = parts.PAPER_STEPS_PER_EPOCH) -> dict[str, Any]:
    """The hyper-parameters ``spec`` runs with (defaults scaled to the budget, then overrides);
    ``steps_per_epoch`` defaults to the papers' CIFAR epoch (391 batches of 128)."""
    return parse(spec).hyperparameters(epochs, steps_per_epoch)


def recipe(spec: str | Recipe, model: nn.Module, epochs: int, steps_per_epoch: int, *,
           param_groups: Any = None, clip: Any = None, scaler: Any = None,
           accumulate: int = 1, nonfinite: str = "raise", **overrides: Any) -> Method:
    """Build the :class:`~polyak.method.Method` a recipe spec names, for a training budget.

    ``overrides`` are merged into the parsed recipe as they are (never turned into text), e.g.
    ``warmup=2`` (epochs of linear lr warm-up, every recipe has it). ``param_groups``: groups of
    the model's parameters with their own settings (``weight_decay``, ``lr_scale``; frozen
    parameters left out), e.g. from :func:`polyak.param_groups.param_groups`.

    The loop options, the same for every recipe and validated as :class:`~polyak.method.Method`
    validates them (also when assigned later, ``method.clip = ...``): ``clip``
    (:class:`~polyak.loop.ClipGradNorm` / :class:`~polyak.loop.ClipGradValue`; a bare number is
    refused, say which), ``scaler`` (a ``torch.amp.GradScaler``), ``accumulate`` (micro-batches
    per optimizer step: ``steps_per_epoch`` counts optimizer steps) and ``nonfinite``
    (``"raise"`` or ``"skip"``)."""
    loop = {"clip": clip, "scaler": scaler, "accumulate": accumulate, "nonfinite": nonfinite}
    return parse(spec).with_overrides(**overrides).build(model, epochs, steps_per_epoch,
                                                         param_groups=param_groups, **loop)


def available(spec: str | Recipe) -> tuple[bool, str]:
    """``(True, "")`` when every piece the recipe needs is installed, else ``(False, reason)``."""
    return parse(spec).available()


def describe() -> list[tuple[str, str]]:
    """(name, one-line description) of every recipe, marking unavailable ones."""
    rows = []
    for name in names():
        rec = RECIPES[name]
        ok, why = rec.available()
        rows.append((name, rec.description if ok else f"{rec.description} [unavailable: {why}]"))
    return rows


def catalogue() -> list[dict[str, Any]]:
    """Every recipe as plain data: name, description, base, averaging, paper, hyper-parameters
    with their defaults (budget rules as text), tuning protocol (``polyak list --json``)."""
    out = []
    for name in names():
        rec = RECIPES[name]
        ok, why = rec.available()
        tuning = rec.tuning
        out.append({
            "name": name, "description": rec.description, "base": rec.base,
            "averaging": rec.averaging, "paper": rec.paper, "available": ok,
            **({"unavailable": why} if not ok else {}),
            "hyperparameters": {k: parts.shown(v) for k, v in rec.defaults.items()},
            "tuning": {"grid": {k: [parts.shown(v) for v in vs] for k, vs in tuning.grid.items()},
                       "shares": tuning.shares, "scale": dict(tuning.scale),
                       "protocol": tuning.protocol},
        })
    return out
