"""The pieces recipes are assembled from: base optimizers with their schedules, and averagings.

A base is an optimizer with its published hyper-parameters and the learning-rate schedule of the
paper it comes from; an averaging adds a weight average and may replace the schedule:

- ``uniform``: Polyak/SWA/Gadam averaging once per epoch from ``avg_start`` (default: the fraction
  161/300 of the budget); the schedule becomes Gadam eq. 13 (constant, linear down to
  ``avg_ratio`` of the base lr by 0.9 * avg_start, held there while averaging);
- ``ema``: exponential average every step (``ema_decay``), the base schedule is kept;
- ``phasewise``: PWA (Kobayashi Alg. 1): ``phases`` constant-lr phases (3: 50/25/25 % with lr
  factors 1, 0.1, 0.01; 1: one phase over the whole budget), gamma = gamma0^(T_1/T_p); the
  momentum buffers at each restart follow ``momentum_policy`` ("keep" or "reset");
- ``auto``: GadamAuto: constant lr; uniform averaging starts once the validation accuracy has not
  improved for ``patience`` epochs (5, the authors' code; the paper says 10 of 300 epochs).

Defaults that count epochs or steps are rules, not numbers (:class:`OfBudget`, :class:`PerEpoch`,
:class:`WindowPerStep`): they are resolved for a run's budget (``epochs``, ``steps_per_epoch``)
and print as the rule (``polyak list``).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from polyak._step import check_loop_options
from polyak.method import Method, SwitchOptimizer

HALF_QUARTERS = (0.5, 0.25, 0.25)   # PWA 80/40/40 of 160, SWA/SAM, TSO-ALRA 81/122 of 164
THIRDS = (1 / 3, 1 / 3, 1 / 3)      # SGDL: /10 at 1/3 and 2/3 of training
AVG_START_FRACTION = 161 / 300      # Gadam / SWA: averaging from epoch 161 of 300
PAPER_STEPS_PER_EPOCH = 391         # CIFAR-10, batch 128: the TSO-ALRA paper's epoch


# ------------------------------------------------------------------ budget-scaled defaults
@dataclass(frozen=True)
class OfBudget:
    """An epoch count that is a fixed fraction of the budget: ``round(fraction * epochs)``,
    at least ``minimum`` and, with ``before_end``, at most ``epochs - 1``."""

    fraction: float
    source: str
    minimum: int = 1
    before_end: bool = False

    def __call__(self, epochs: int, steps_per_epoch: int) -> int:
        value = max(self.minimum, round(self.fraction * epochs))
        return min(value, max(epochs - 1, self.minimum)) if self.before_end else value

    def __str__(self) -> str:
        return f"{self.fraction:.3g} x epochs ({self.source})"


@dataclass(frozen=True)
class PerEpoch:
    """A step count that is a fixed fraction of an epoch:
    ``max(1, round(fraction * steps_per_epoch))``."""

    fraction: float
    source: str

    def __call__(self, epochs: int, steps_per_epoch: int) -> int:
        return max(1, round(self.fraction * steps_per_epoch))

    def __str__(self) -> str:
        return f"{self.fraction:.3g} x steps per epoch ({self.source})"


@dataclass(frozen=True)
class WindowPerStep:
    """A per-step EMA weight whose window is a fixed fraction of an epoch: the weight ``gamma``
    at ``reference`` steps per epoch becomes ``1 - (1 - gamma)^(reference / steps_per_epoch)``
    (the same decay per epoch, so the same number of epochs averaged)."""

    gamma: float
    reference: int
    source: str

    def __call__(self, epochs: int, steps_per_epoch: int) -> float:
        return min(1.0, 1.0 - (1.0 - self.gamma) ** (self.reference / steps_per_epoch))

    def __str__(self) -> str:
        return (f"{self.gamma:g} per step at {self.reference} steps per epoch, the same decay "
                f"per epoch at other epoch lengths ({self.source})")


Rule = OfBudget | PerEpoch | WindowPerStep


def resolve(defaults: Mapping[str, Any], epochs: int, steps_per_epoch: int) -> dict[str, Any]:
    """The defaults with every rule evaluated for the budget."""
    return {k: v(epochs, steps_per_epoch) if isinstance(v, Rule) else v
            for k, v in defaults.items()}


def shown(value: Any) -> str:
    """A default as ``polyak list`` shows it (rules as their formula)."""
    return str(value) if isinstance(value, Rule) else repr(value)


# ------------------------------------------------------------------ schedules
def phase_lengths(epochs: int, fractions: tuple[float, ...]) -> list[int]:
    """Split ``epochs`` into phases at the cumulative ``fractions`` (each at least one epoch)."""
    if epochs < len(fractions):
        return [1] * epochs
    bounds, acc = [], 0.0
    for frac in fractions[:-1]:
        acc += frac
        bounds.append(min(max(round(acc * epochs), len(bounds) + 1),
                          epochs - (len(fractions) - 1 - len(bounds))))
    edges = [0, *bounds, epochs]
    return [b - a for a, b in zip(edges, edges[1:])]


def step_schedule(epochs: int, fractions: tuple[float, ...]) -> Callable[[float], float]:
    from polyak.schedules import step_phases

    lengths = phase_lengths(epochs, fractions)
    return step_phases(lengths, [0.1 ** i for i in range(len(lengths))])


def linear_schedule(epochs: int) -> Callable[[float], float]:
    from polyak.schedules import gadam_linear

    return gadam_linear(epochs)


def constant_schedule(epochs: int) -> Callable[[float], float] | None:
    return None


# ------------------------------------------------------------------ bases
@dataclass(frozen=True)
class Base:
    description: str
    defaults: Mapping[str, Any]
    make: Callable[[nn.Module, dict[str, Any], int, int], torch.optim.Optimizer]
    schedule: Callable[[int], Callable[[float], float] | None]
    needs: tuple[str, ...] = field(default=())


def fused_kernels(model: nn.Module) -> bool:
    """Whether the recipes run torch's fused optimizer kernels (SGD; Adam/AMSGrad, i.e. Padam
    at ``partial=0.5``) for ``model``: every parameter floating-point, dense in memory and on a
    device torch has fused kernels for. The fused kernels compute the same update as torch's
    default (single-tensor/foreach) ones up to rounding, with the same state (checkpoints move
    between them), and on the CPU take a fraction of the time per step on small models
    (``benchmarks/small_step.py``)."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    from polyak.optim.padam import _is_dense

    devices = set(_get_fused_kernels_supported_devices())
    params = list(model.parameters())
    return bool(params) and all(p.device.type in devices and p.is_floating_point()
                                and _is_dense(p) for p in params)


def _sgd(model: nn.Module, hp: dict[str, Any], *_: int) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=hp["lr"], momentum=hp["momentum"],
                           weight_decay=hp["weight_decay"], fused=fused_kernels(model) or None)


def _padam(model: nn.Module, hp: dict[str, Any], *_: int) -> torch.optim.Optimizer:
    from polyak.optim import Padam

    # torch's fused Adam kernel at partial 0.5; other partials stay on the foreach path (their
    # fused path compiles a kernel: minutes that short runs never win back)
    fused = hp["partial"] == 0.5 and fused_kernels(model)
    return Padam(model.parameters(), lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]),
                 weight_decay=hp["weight_decay"], partial=hp["partial"], amsgrad=hp["amsgrad"],
                 decoupled_weight_decay=hp["decoupled"], fused=fused or None)


def _adabound(model: nn.Module, hp: dict[str, Any], *_: int) -> torch.optim.Optimizer:
    from polyak.optim import AdaBound

    return AdaBound(model.parameters(), lr=hp["lr"], final_lr=hp["final_lr"], gamma=hp["gamma"],
                    weight_decay=hp["weight_decay"], amsbound=hp["amsbound"])


def _lookahead(inner: Callable[..., torch.optim.Optimizer]) -> Callable[..., torch.optim.Optimizer]:
    def make(model: nn.Module, hp: dict[str, Any], *ctx: int) -> torch.optim.Optimizer:
        from polyak.optim import Lookahead

        return Lookahead(inner(model, hp, *ctx), k=hp["k"], alpha=hp["alpha"])
    return make


def _sam(model: nn.Module, hp: dict[str, Any], *_: int) -> torch.optim.Optimizer:
    from polyak.optim import SAM

    return SAM(model.parameters(), torch.optim.SGD, rho=hp["rho"], adaptive=hp["adaptive"],
               model=model, lr=hp["lr"], momentum=hp["momentum"],
               weight_decay=hp["weight_decay"], fused=fused_kernels(model) or None)


def _tso_alra(model: nn.Module, hp: dict[str, Any], *_: int) -> torch.optim.Optimizer:
    from polyak.optim import TSOALRA

    return TSOALRA(model, lr=hp["lr"], switch_epoch=hp["switch_epoch"],
                   factor_decay=hp["factor_decay"], damping=hp["damping"],
                   inv_every=hp["inv_every"], factor_every=hp["factor_every"],
                   factor_init=hp["factor_init"])


def _schedule_free(model: nn.Module, hp: dict[str, Any], epochs: int,
                   steps_per_epoch: int) -> torch.optim.Optimizer:
    import schedulefree

    warmup = round(hp["warmup_fraction"] * epochs * steps_per_epoch)
    return schedulefree.AdamWScheduleFree(model.parameters(), lr=hp["lr"], warmup_steps=warmup,
                                          weight_decay=hp["weight_decay"])


def _sgd_hp(lr: float, momentum: float, **extra: Any) -> dict[str, Any]:
    return {"lr": lr, "momentum": momentum, "weight_decay": 5e-4, **extra}


def _adam_hp(lr: float, wd: float, partial: float, amsgrad: bool, decoupled: bool,
             **extra: Any) -> dict[str, Any]:
    return {"lr": lr, "beta1": 0.9, "beta2": 0.999, "weight_decay": wd, "partial": partial,
            "amsgrad": amsgrad, "decoupled": decoupled, **extra}


def _bound_hp(amsbound: bool) -> dict[str, Any]:
    return {"lr": 1e-3, "final_lr": 0.1, "gamma": 1e-3, "weight_decay": 5e-4,
            "amsbound": amsbound}


_TSO_ALRA_HP = {
    "lr": 1e-2,
    "switch_epoch": OfBudget(0.1, "the paper tuned 5..75 of 164 epochs, 10-25 for most"),
    "factor_decay": WindowPerStep(0.05, PAPER_STEPS_PER_EPOCH,
                                  "a window of ~20 of the paper's 391 steps"),
    "damping": 1e-3,
    "inv_every": PerEpoch(0.25, "4 inverse-root refreshes per epoch: ~100 of the paper's 391 "
                                "steps; the paper does not give T_int"),
    "factor_every": 1,
    "factor_init": "batches",
}

_STEP = lambda e: step_schedule(e, HALF_QUARTERS)  # noqa: E731
_OPT = ("polyak.optim:Padam",)
BASES: dict[str, Base] = {
    "sgd": Base("Plain SGD, lr 0.1, step decay 50/25/25 %", _sgd_hp(0.1, 0.0), _sgd, _STEP),
    "sgdm": Base("Momentum SGD (0.9), lr 0.1, wd 5e-4, step decay 50/25/25 %",
                 _sgd_hp(0.1, 0.9), _sgd, _STEP),
    "sgdl": Base("SGDL: vanilla SGD with a 10x larger lr (1.0), decay at 1/3 and 2/3",
                 _sgd_hp(1.0, 0.0), _sgd, lambda e: step_schedule(e, THIRDS)),
    "adam": Base("Adam (coupled L2 5e-4), lr 1e-3, Gadam eq. 12 schedule",
                 _adam_hp(1e-3, 5e-4, 0.5, False, False), _padam, linear_schedule, _OPT),
    "amsgrad": Base("AMSGrad (coupled L2 5e-4), lr 1e-3, Gadam eq. 12 schedule",
                    _adam_hp(1e-3, 5e-4, 0.5, True, False), _padam, linear_schedule, _OPT),
    "adamw": Base("AdamW (decoupled wd 0.25), lr 1e-3, Gadam eq. 12 schedule",
                  _adam_hp(1e-3, 0.25, 0.5, False, True), _padam, linear_schedule, _OPT),
    "padam": Base("Padam(partial 1/8, AMSGrad, decoupled wd 3e-4), lr 0.1 (GadamX's base)",
                  _adam_hp(0.1, 3e-4, 0.125, True, True), _padam, linear_schedule, _OPT),
    "adabound": Base("AdaBound, lr 1e-3 -> final 0.1, step decay 50/25/25 %",
                     _bound_hp(False), _adabound, _STEP, ("polyak.optim:AdaBound",)),
    "amsbound": Base("AMSBound, lr 1e-3 -> final 0.1, step decay 50/25/25 %",
                     _bound_hp(True), _adabound, _STEP, ("polyak.optim:AdaBound",)),
    "lookahead": Base("Lookahead(momentum SGD, k=5, alpha=0.5), step decay 50/25/25 %",
                      _sgd_hp(0.1, 0.9, k=5, alpha=0.5), _lookahead(_sgd), _STEP,
                      ("polyak.optim:Lookahead",)),
    "lookahead-adamw": Base("Lookahead(AdamW, k=5, alpha=0.5), Gadam eq. 12 schedule",
                            _adam_hp(1e-3, 0.25, 0.5, False, True, k=5, alpha=0.5),
                            _lookahead(_padam), linear_schedule,
                            ("polyak.optim:Lookahead", *_OPT)),
    "sam": Base("SAM on momentum SGD (rho 0.05), lr 0.1, step decay 50/25/25 %",
                _sgd_hp(0.1, 0.9, rho=0.05, adaptive=False), _sam, _STEP, ("polyak.optim:SAM",)),
    "asam": Base("Adaptive SAM on momentum SGD (rho 0.5), lr 0.1, step decay 50/25/25 %",
                 _sgd_hp(0.1, 0.9, rho=0.5, adaptive=True), _sam, _STEP, ("polyak.optim:SAM",)),
    "tso-alra": Base("TSO-ALRA: K-FAC F^(-1/2) preconditioning, then SGD after 10 % of epochs",
                     _TSO_ALRA_HP, _tso_alra, _STEP, ("polyak.optim:TSOALRA",)),
    "schedule-free-adamw": Base("Schedule-free AdamW (the schedulefree package), reference",
                                {"lr": 2.5e-3, "weight_decay": 0.0, "warmup_fraction": 0.05},
                                _schedule_free, constant_schedule,
                                ("schedulefree:AdamWScheduleFree",)),
}


#: hyper-parameters of every recipe: ``warmup``, epochs of linear lr warm-up (0: none).
COMMON_DEFAULTS: dict[str, Any] = {"warmup": 0}

# ------------------------------------------------------------------ averagings
AVERAGING_DEFAULTS: dict[str, dict[str, Any]] = {
    "uniform": {"avg_start": OfBudget(AVG_START_FRACTION, "Gadam/SWA: epoch 161 of 300",
                                      before_end=True),
                "avg_ratio": 0.5},
    "ema": {"ema_decay": 0.999, "ema_warmup": True},
    "phasewise": {"phases": 3, "gamma0": 0.9, "momentum_policy": "keep"},
    "auto": {"patience": 5},
}

_AVG_NEEDS = {
    "uniform": ("polyak.averaging:Uniform", "polyak.schedules:gadam_linear"),
    "auto": ("polyak.averaging:Uniform",),
    "ema": ("polyak.averaging:EMA",),
    "phasewise": ("polyak.averaging:PhaseWise", "polyak.schedules:step_phases"),
}


def check_available(base: str, averaging: str | None) -> tuple[bool, str]:
    needs = [*BASES[base].needs, *_AVG_NEEDS.get(averaging or "", ())]
    needs.append("polyak.schedules:step_phases")
    for need in needs:
        module_name, _, attr = need.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            return False, f"{module_name} cannot be imported ({exc})"
        if not hasattr(module, attr):
            return False, f"{module_name}.{attr} is not implemented"
    return True, ""


def warmup_steps(warmup: Any, steps_per_epoch: int) -> int:
    """``warmup`` epochs (a number >= 0, fractions allowed) as optimizer steps."""
    ok = isinstance(warmup, (int, float)) and not isinstance(warmup, bool)
    if not ok or not math.isfinite(warmup) or warmup < 0:
        raise ValueError(f"Invalid warmup: {warmup!r} (epochs of linear lr warm-up, a number "
                         ">= 0)")
    return round(warmup * steps_per_epoch)


def build(model: nn.Module, base: str, averaging: str | None, hp: dict[str, Any], epochs: int,
          steps_per_epoch: int, name: str = "", param_groups: Any = None,
          loop: Mapping[str, Any] | None = None) -> Method:
    """Assemble the Method for ``base`` + ``averaging`` with (resolved) hyper-parameters ``hp``;
    ``param_groups`` (see :mod:`polyak.param_groups`) splits the optimizer's parameters;
    ``loop``: the Method's loop options (clip, scaler, accumulate, nonfinite). The Method's
    ``recipe`` is ``"<base>+<averaging>"`` (or the base alone): a state loads only into a
    Method of the same."""
    spec = BASES[base]
    check_loop_options(**(loop or {}))   # before the optimizer is built (K-FAC hooks the model)
    method_kwargs = {**(loop or {}),
                     "recipe": f"{base}+{averaging}" if averaging is not None else base}
    optimizer = spec.make(model, hp, epochs, steps_per_epoch)
    if param_groups is not None:
        from polyak.param_groups import split_groups

        split_groups(optimizer, param_groups)
    kwargs: dict[str, Any] = {"schedule": spec.schedule(epochs), "name": name,
                              "steps_per_epoch": steps_per_epoch,
                              "warmup_steps": warmup_steps(hp.get("warmup", 0), steps_per_epoch)}
    if averaging == "uniform":
        from polyak.averaging import Uniform
        from polyak.schedules import gadam_linear

        start = int(hp["avg_start"])
        kwargs["schedule"] = gadam_linear(epochs, avg_start=max(start, 1),
                                          avg_ratio=hp["avg_ratio"])
        kwargs["averaging"] = Uniform(model, start_epoch=start)
        if base == "lookahead-adamw":
            kwargs["switches"] = [SwitchOptimizer(lambda la: la.optimizer, at_epoch=start)]
    elif averaging == "ema":
        from polyak.averaging import EMA

        kwargs["averaging"] = EMA(model, decay=hp["ema_decay"], warmup=hp["ema_warmup"])
    elif averaging == "phasewise":
        from polyak.averaging import PhaseWise
        from polyak.schedules import step_phases

        fractions = {1: (1.0,), 2: (0.5, 0.5), 3: HALF_QUARTERS}.get(hp["phases"])
        if fractions is None or isinstance(hp["phases"], bool):
            raise ValueError(f"Invalid phases: {hp['phases']!r} (allowed: 1, 2, 3)")
        lengths = phase_lengths(epochs, fractions)
        kwargs["schedule"] = step_phases(lengths, [0.1 ** i for i in range(len(lengths))])
        kwargs["averaging"] = PhaseWise(model, lengths, gamma0=hp["gamma0"],
                                        ref_epochs=lengths[0], momentum=hp["momentum_policy"],
                                        optimizer=optimizer)
    elif averaging == "auto":
        from polyak.averaging import Uniform
        from polyak.triggers import Plateau

        kwargs["schedule"] = None
        kwargs["averaging"] = Uniform(model, start_epoch=0)
        kwargs["averaging_trigger"] = Plateau(int(hp["patience"]), mode="max")
    return Method(model, optimizer, **kwargs, **method_kwargs)
