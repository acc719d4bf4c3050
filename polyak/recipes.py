"""The named methods of the five papers with their published defaults, and their composition.

``polyak.recipe(spec, model, epochs, steps_per_epoch, **overrides) -> Method``. A spec is

- a name: ``"gadamx"``, ``"pwa"``, ``"tso-alra"``, ... (``polyak list`` shows them all);
- a composition ``"<base>+<averaging>"``: any base (``sgd``, ``sgdm``, ``adamw``, ``sam``, ...) with
  ``uniform`` (Polyak/SWA/Gadam averaging with the SWA-style schedule of Gadam eq. 13),
  ``ema`` (per-step exponential average, base schedule kept) or ``phasewise`` (PWA);
- either of them followed by overrides: ``"gadamx:lr=0.05,avg_start=20"``.

Schedules scale with the epoch budget: step-decay phases at 50/25/25 % (PWA, SWA, SAM, TSO-ALRA's
81/122 of 164), SGDL's decay at 1/3 and 2/3, the averaging start at the same fraction as 161/300
(Gadam, SWA), Gadam's linear schedule (eq. 12) for the adaptive baselines, and TSO-ALRA's switch
after 10 % of the epochs (the paper tuned it in 5..70 of 164 epochs; 10-25 for most settings).
The recipe builders live in :mod:`polyak._recipe_parts`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from polyak import _recipe_parts as parts
from polyak.method import Method

__all__ = ["recipe", "names", "available", "describe", "parse", "UnknownRecipe",
           "PAPER_METHODS", "BASELINES"]


class UnknownRecipe(ValueError):
    """An unknown recipe name, averaging or hyper-parameter; the message lists the valid ones."""


# name -> (base, averaging or None, fixed overrides, one-line description)
NAMED: dict[str, tuple[str, str | None, dict[str, Any], str]] = {
    "swa": ("sgdm", "uniform", {}, "SWA: momentum SGD + uniform averaging from 161/300 (Izmailov)"),
    "pwa": ("sgdm", "phasewise", {},
            "Phase-wise parameter aggregation on momentum SGD, phases 50/25/25 % (Kobayashi)"),
    "pwa-adam": ("adam", "phasewise", {"phases": 1},
                 "PWA on Adam: one constant-lr phase (PWA paper Table 3)"),
    "pwa-amsgrad": ("amsgrad", "phasewise", {"phases": 1},
                    "PWA on AMSGrad: one constant-lr phase (PWA paper Table 3)"),
    "pwa-adabound": ("adabound", "phasewise", {"phases": 1},
                     "PWA on AdaBound: one constant-lr phase (PWA paper Table 3)"),
    "gadam": ("adamw", "uniform", {}, "Gadam: AdamW + iterate averaging (Granziol et al.)"),
    "gadamx": ("padam", "uniform", {},
               "GadamX: Padam(1/8, AMSGrad, decoupled wd) + iterate averaging"),
    "gadam-auto": ("adamw", "auto", {},
                   "GadamAuto: constant lr; averaging starts when val accuracy plateaus"),
    "gadam-lookahead": ("lookahead-adamw", "uniform", {},
                        "Gadam + Lookahead: Lookahead(AdamW) until averaging starts, then AdamW"),
    "asgd": ("sgdm", "uniform", {"lr": 0.2},
             "Averaged SGD with a larger learning rate (Nitanda et al.)"),
    "sam-avg": ("sam", "uniform", {"lr": 0.2},
                "Averaged SAM with a larger learning rate (Nitanda et al.)"),
}

AVERAGINGS = ("uniform", "ema", "phasewise", "auto")

PAPER_METHODS = (
    "sgd", "sgdm", "sgdl", "adam", "amsgrad", "adamw", "padam", "adabound", "amsbound",
    "lookahead", "pwa", "pwa-adam", "pwa-amsgrad", "pwa-adabound", "swa", "gadam", "gadamx",
    "gadam-auto", "gadam-lookahead", "tso-alra", "asgd", "sam", "asam", "sam-avg",
    "schedule-free-adamw",
)

BASELINES = {
    "sgdm": "sgd", "sgdl": "sgdm", "adam": "sgdm", "adamw": "adam", "amsgrad": "adam",
    "padam": "adamw",
    "adabound": "adam", "amsbound": "amsgrad", "lookahead": "sgdm", "pwa": "sgdm",
    "pwa-adam": "adam", "pwa-amsgrad": "amsgrad", "pwa-adabound": "adabound", "swa": "sgdm",
    "gadam": "adamw", "gadamx": "swa", "gadam-auto": "adamw", "gadam-lookahead": "gadam",
    "tso-alra": "adam", "asgd": "sgdm", "sam": "sgdm", "asam": "sam", "sam-avg": "sam",
    "schedule-free-adamw": "adamw",
}


def names() -> list[str]:
    """Every recipe name, paper methods first, then the other bases."""
    extra = [n for n in (*parts.BASES, *NAMED) if n not in PAPER_METHODS]
    return [*PAPER_METHODS, *extra]


def parse(spec: str) -> tuple[str, str | None, dict[str, Any]]:
    """``"name[+averaging][:key=value,...]"`` -> (base, averaging, overrides)."""
    if not isinstance(spec, str) or not spec.strip():
        raise UnknownRecipe(f"Invalid recipe spec: {spec!r}")
    head, _, tail = spec.strip().partition(":")
    overrides: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in tail.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UnknownRecipe(f"Invalid override {item!r} in {spec!r}: expected key=value")
        overrides[key.strip()] = _parse_value(value.strip())
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
        return name, averaging, overrides
    if name in NAMED:
        base, avg, fixed, _ = NAMED[name]
        return base, avg, {**fixed, **overrides}
    if name in parts.BASES:
        return name, None, overrides
    raise UnknownRecipe(f"Unknown recipe {name!r}; valid: {', '.join(names())}")


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


def hyperparameters(spec: str, epochs: int) -> dict[str, Any]:
    """The hyper-parameters ``spec`` runs with (defaults scaled to ``epochs``, then overrides)."""
    base, averaging, overrides = parse(spec)
    defaults = {**parts.BASES[base].defaults(epochs), **parts.averaging_defaults(averaging, epochs)}
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise UnknownRecipe(f"Unknown hyper-parameter(s) {', '.join(unknown)} for {spec!r}; "
                            f"valid: {', '.join(sorted(defaults))}")
    return {**defaults, **overrides}


def recipe(spec: str, model: nn.Module, epochs: int, steps_per_epoch: int,
           **overrides: Any) -> Method:
    """Build the :class:`~polyak.method.Method` a recipe spec names, for a training budget."""
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"Invalid epochs: {epochs!r} (an integer >= 1)")
    if not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
        raise ValueError(f"Invalid steps_per_epoch: {steps_per_epoch!r} (an integer >= 1)")
    ok, why = available(spec)
    if not ok:
        raise UnknownRecipe(f"Recipe {spec!r} is unavailable: {why}")
    if overrides:
        sep = "," if ":" in spec else ":"
        spec = spec + sep + ",".join(f"{k}={v}" for k, v in overrides.items())
    base, averaging, _ = parse(spec)
    hp = hyperparameters(spec, epochs)
    return parts.build(model, base, averaging, hp, epochs, steps_per_epoch, name=spec)


def available(spec: str) -> tuple[bool, str]:
    """``(True, "")`` when every piece the recipe needs is installed, else ``(False, reason)``."""
    base, averaging, _ = parse(spec)
    return parts.check_available(base, averaging)


def describe() -> list[tuple[str, str]]:
    """(name, one-line description) of every recipe, marking unavailable ones."""
    rows = []
    for name in names():
        text = NAMED[name][3] if name in NAMED else parts.BASES[name].description
        ok, why = available(name)
        rows.append((name, text if ok else f"{text} [unavailable: {why}]"))
    return rows
