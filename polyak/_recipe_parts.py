"""The pieces recipes are assembled from: base optimizers with their schedules, and averagings.

A base is an optimizer with its published hyper-parameters and a default learning-rate schedule
(the ``schedule`` hyper-parameter: a name of :data:`polyak._budget.SCHEDULES` or a rule value,
so a paper's protocol can run any base on its own schedule); an averaging adds a weight average
and may set the schedule:

- ``uniform``: Polyak/SWA/Gadam averaging once per epoch from ``avg_start`` (default: the fraction
  161/300 of the budget) with the schedule of Gadam eq. 13 (``"swa"``: constant, linear down to
  ``avg_ratio`` of the base lr by 0.9 * avg_start, held there while averaging);
- ``ema``: exponential average every step (``ema_decay``), the base schedule is kept;
- ``phasewise``: PWA (Kobayashi Alg. 1) over the phases of the base's step schedule (``"step"``:
  50/25/25 %; ``"constant"``: one phase), ``gamma = gamma0^(80/T_p)`` (the paper's formula with
  its 80, so the window is the same ~1/8 of every phase at any budget); the momentum buffers at
  each restart follow ``momentum_policy`` ("keep" or "reset");
- ``final``: the same exponential aggregate of the last phase, reported at the end and never
  injected (PWA Table 1c's "at the end" arm: the step-decayed run itself, aggregated once);
- ``auto``: GadamAuto (Gadam App. A.2): constant lr; uniform averaging starts once the validation
  accuracy has not improved for ``patience`` epochs, and training stops once the averaged
  model's has not improved for ``patience`` more (10 of the paper's 300 epochs, scaled).

Every recipe has ``warmup`` (epochs of linear lr warm-up) and ``budget`` (the fraction of the
epochs it trains: PWA Table 3 runs 80 of 160 epochs; its schedule and phases span that part and
the run stops there). Defaults that count epochs or steps are rules, not numbers
(:mod:`polyak._budget`): they are resolved for a run's budget and print as the rule.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from polyak._budget import (  # noqa: F401  (re-exported: the rules recipes are written with)
    SCHEDULES,
    Constant,
    Linear,
    OfBudget,
    PerEpoch,
    Rule,
    Steps,
    SWALinear,
    WindowPerStep,
    phase_lengths,
    schedule_rule,
)
from polyak._step import check_loop_options
from polyak.method import Method, SwitchOptimizer

HALF_QUARTERS = (0.5, 0.25, 0.25)   # PWA 80/40/40 of 160, SWA/SAM, TSO-ALRA 81/122 of 164
THIRDS = (1 / 3, 1 / 3, 1 / 3)      # SGDL: /10 at 1/3 and 2/3 of training
AVG_START_FRACTION = 161 / 300      # Gadam / SWA: averaging from epoch 161 of 300
PAPER_STEPS_PER_EPOCH = 391         # CIFAR-10, batch 128: the TSO-ALRA paper's epoch
PWA_REF_EPOCHS = 80                 # PWA: gamma = gamma0^(80/T_p) for every phase length T_p


def resolve(defaults: Mapping[str, Any], epochs: int, steps_per_epoch: int) -> dict[str, Any]:
    """The defaults with every rule evaluated for the budget."""
    return {k: v(epochs, steps_per_epoch) if isinstance(v, Rule) else v
            for k, v in defaults.items()}


def shown(value: Any) -> str:
    """A default as ``polyak list`` shows it (rules as their formula)."""
    return str(value) if isinstance(value, (*Rule.__args__, Steps, Linear, SWALinear, Constant)) \
        else repr(value)


# ------------------------------------------------------------------ bases
@dataclass(frozen=True)
class Base:
    description: str
    defaults: Mapping[str, Any]   # the optimizer's hyper-parameters and its ``schedule``
    make: Callable[[nn.Module, dict[str, Any], int, int], torch.optim.Optimizer]
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


def _sgd_hp(lr: float, momentum: float, schedule: str = "step", **extra: Any
            ) -> dict[str, Any]:
    return {"lr": lr, "momentum": momentum, "weight_decay": 5e-4, "schedule": schedule, **extra}


def _adam_hp(lr: float, wd: float, partial: float, amsgrad: bool, decoupled: bool,
             **extra: Any) -> dict[str, Any]:
    return {"lr": lr, "beta1": 0.9, "beta2": 0.999, "weight_decay": wd, "partial": partial,
            "amsgrad": amsgrad, "decoupled": decoupled, "schedule": "linear", **extra}


def _bound_hp(amsbound: bool) -> dict[str, Any]:
    return {"lr": 1e-3, "final_lr": 0.1, "gamma": 1e-3, "weight_decay": 5e-4,
            "amsbound": amsbound, "schedule": "step"}


_TSO_ALRA_HP = {
    "lr": 1e-2,
    "switch_epoch": OfBudget(0.1, "the paper tuned 5..75 of 164 epochs, 10-25 for most"),
    "factor_decay": 0.05,
    "damping": 1e-3,   # the paper: "such as 10^-6" (its protocol's); 1e-6 blew an LSTM up
    "inv_every": PerEpoch(0.25, "4 inverse-root refreshes per epoch: ~100 of the paper's 391 "
                                "steps; the paper does not give T_int"),
    "factor_every": 1,
    "factor_init": "batches",
    "schedule": "tso-alra",
}

_OPT = ("polyak.optim:Padam",)
BASES: dict[str, Base] = {
    "sgd": Base("Plain SGD, lr 0.1, step decay 50/25/25 %", _sgd_hp(0.1, 0.0), _sgd),
    "sgdm": Base("Momentum SGD (0.9), lr 0.1, wd 5e-4, step decay 50/25/25 %",
                 _sgd_hp(0.1, 0.9), _sgd),
    "sgdl": Base("SGDL: vanilla SGD with a 10x larger lr (1.0), decay at 1/3 and 2/3",
                 _sgd_hp(1.0, 0.0, "thirds"), _sgd),
    "adam": Base("Adam (coupled L2 5e-4), lr 1e-3, Gadam eq. 12 schedule",
                 _adam_hp(1e-3, 5e-4, 0.5, False, False), _padam, _OPT),
    "amsgrad": Base("AMSGrad (coupled L2 5e-4), lr 1e-3, Gadam eq. 12 schedule",
                    _adam_hp(1e-3, 5e-4, 0.5, True, False), _padam, _OPT),
    "adamw": Base("AdamW (decoupled wd 0.25), lr 1e-3, Gadam eq. 12 schedule",
                  _adam_hp(1e-3, 0.25, 0.5, False, True), _padam, _OPT),
    "padam": Base("Padam(partial 1/8, AMSGrad, decoupled wd 3e-4), lr 0.1 (GadamX's base)",
                  _adam_hp(0.1, 3e-4, 0.125, True, True), _padam, _OPT),
    "adabound": Base("AdaBound, lr 1e-3 -> final 0.1, step decay 50/25/25 %",
                     _bound_hp(False), _adabound, ("polyak.optim:AdaBound",)),
    "amsbound": Base("AMSBound, lr 1e-3 -> final 0.1, step decay 50/25/25 %",
                     _bound_hp(True), _adabound, ("polyak.optim:AdaBound",)),
    "lookahead": Base("Lookahead(momentum SGD, k=5, alpha=0.5), step decay 50/25/25 %; "
                      "evaluated at its slow weights",
                      _sgd_hp(0.1, 0.9, k=5, alpha=0.5), _lookahead(_sgd),
                      ("polyak.optim:Lookahead",)),
    "lookahead-adamw": Base("Lookahead(AdamW, k=5, alpha=0.5), Gadam eq. 12 schedule; "
                            "evaluated at its slow weights",
                            _adam_hp(1e-3, 0.25, 0.5, False, True, k=5, alpha=0.5),
                            _lookahead(_padam), ("polyak.optim:Lookahead", *_OPT)),
    "sam": Base("SAM on momentum SGD (rho 0.05), lr 0.1, step decay 50/25/25 %",
                _sgd_hp(0.1, 0.9, rho=0.05, adaptive=False), _sam, ("polyak.optim:SAM",)),
    "asam": Base("Adaptive SAM on momentum SGD (rho 0.5, |w|-scaled on every parameter; "
                 "polyak's addition, not one of the five papers), lr 0.1, step decay 50/25/25 %",
                 _sgd_hp(0.1, 0.9, rho=0.5, adaptive=True), _sam, ("polyak.optim:SAM",)),
    "tso-alra": Base("TSO-ALRA: K-FAC F^(-1/2) preconditioning, then SGD after 10 % of epochs",
                     _TSO_ALRA_HP, _tso_alra, ("polyak.optim:TSOALRA",)),
    "schedule-free-adamw": Base("Schedule-free AdamW (the schedulefree package), reference",
                                {"lr": 2.5e-3, "weight_decay": 0.0, "warmup_fraction": 0.05,
                                 "schedule": "constant"},
                                _schedule_free, ("schedulefree:AdamWScheduleFree",)),
}


#: hyper-parameters of every recipe: ``warmup``, epochs of linear lr warm-up (0: none);
#: ``budget``, the fraction of the epochs trained (1: all; PWA Table 3's 80 of 160 is 0.5).
COMMON_DEFAULTS: dict[str, Any] = {"warmup": 0, "budget": 1.0}

# ------------------------------------------------------------------ averagings
AVERAGING_DEFAULTS: dict[str, dict[str, Any]] = {
    "uniform": {"avg_start": OfBudget(AVG_START_FRACTION, "Gadam/SWA: epoch 161 of 300",
                                      before_end=True),
                "avg_ratio": 0.5, "schedule": "swa"},
    "ema": {"ema_decay": 0.999, "ema_warmup": True},
    "phasewise": {"gamma0": 0.9, "momentum_policy": "keep", "schedule": "step"},
    "final": {"gamma0": 0.9, "schedule": "step"},
    "auto": {"patience": OfBudget(10 / 300, "GadamAuto: patience 10 on the paper's "
                                  "300-epoch budget", minimum=2),
             "schedule": "constant"},
}

_AVG_NEEDS = {
    "uniform": ("polyak.averaging:Uniform", "polyak.schedules:gadam_linear"),
    "auto": ("polyak.averaging:Uniform",),
    "ema": ("polyak.averaging:EMA",),
    "phasewise": ("polyak.averaging:PhaseWise", "polyak.schedules:step_phases"),
    "final": ("polyak.averaging:FinalPhase",),
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


def _budget_epochs(budget: Any, epochs: int) -> int:
    """The epochs a recipe with ``budget`` (a fraction of ``epochs``) trains."""
    ok = isinstance(budget, (int, float)) and not isinstance(budget, bool)
    if not ok or not math.isfinite(budget) or not 0 < budget <= 1:
        raise ValueError(f"Invalid budget: {budget!r} (the fraction of the epochs trained, "
                         "0 < budget <= 1)")
    return max(1, round(budget * epochs))


def _phases_of(rule: Any, epochs: int, who: str) -> list[int]:
    phases = rule.phases(epochs)
    if phases is None:
        raise ValueError(f"Invalid schedule for {who}: {rule} has no constant-lr phases "
                         "(allowed: a step schedule such as 'step' or 'thirds', or 'constant')")
    return phases


def build(model: nn.Module, base: str, averaging: str | None, hp: dict[str, Any], epochs: int,
          steps_per_epoch: int, name: str = "", param_groups: Any = None,
          loop: Mapping[str, Any] | None = None) -> Method:
    """Assemble the Method for ``base`` + ``averaging`` with (resolved) hyper-parameters ``hp``;
    ``param_groups`` (see :mod:`polyak.param_groups`) splits the optimizer's parameters;
    ``loop``: the Method's loop options (clip, scaler, accumulate, nonfinite). The Method's
    ``recipe`` is ``"<base>+<averaging>"`` (or the base alone): a state loads only into a
    Method of the same."""
    from polyak.triggers import AtEpoch, Plateau

    check_loop_options(**(loop or {}))   # before the optimizer is built (K-FAC hooks the model)
    method_kwargs = {**(loop or {}),
                     "recipe": f"{base}+{averaging}" if averaging is not None else base}
    run = _budget_epochs(hp.get("budget", 1.0), epochs)
    rule = schedule_rule(hp["schedule"])
    optimizer = BASES[base].make(model, hp, run, steps_per_epoch)
    if param_groups is not None:
        from polyak.param_groups import split_groups

        split_groups(optimizer, param_groups)
    kwargs: dict[str, Any] = {"schedule": rule.build(run, hp), "name": name,
                              "epochs": epochs, "steps_per_epoch": steps_per_epoch,
                              "warmup_steps": warmup_steps(hp.get("warmup", 0), steps_per_epoch)}
    if run < epochs:
        kwargs["stop_trigger"] = AtEpoch(run - 1)
    if averaging == "uniform":
        from polyak.averaging import Uniform

        start = int(hp["avg_start"])
        kwargs["averaging"] = Uniform(model, start_epoch=start)
        if base == "lookahead-adamw":  # Lookahead until averaging starts, from its slow weights
            kwargs["switches"] = [SwitchOptimizer(lambda la: la.optimizer, at_epoch=start,
                                                  on_switch=lambda la: la.to_slow())]
    elif averaging == "ema":
        from polyak.averaging import EMA

        kwargs["averaging"] = EMA(model, decay=hp["ema_decay"], warmup=hp["ema_warmup"])
    elif averaging in ("phasewise", "final"):
        from polyak.averaging import FinalPhase, PhaseWise

        lengths = _phases_of(rule, run, f"{averaging} averaging")
        if averaging == "phasewise":
            kwargs["averaging"] = PhaseWise(model, lengths, gamma0=hp["gamma0"],
                                            ref_epochs=PWA_REF_EPOCHS,
                                            momentum=hp["momentum_policy"], optimizer=optimizer)
        else:
            kwargs["averaging"] = FinalPhase(model, lengths, gamma0=hp["gamma0"],
                                             ref_epochs=PWA_REF_EPOCHS)
    elif averaging == "auto":
        from polyak.averaging import Uniform

        if run < epochs:
            raise ValueError("Invalid budget for GadamAuto: it ends by its own early "
                             "termination (allowed: budget=1)")
        kwargs["averaging"] = Uniform(model, start_epoch=0)
        kwargs["averaging_trigger"] = Plateau(int(hp["patience"]), mode="max")
        kwargs["stop_trigger"] = Plateau(int(hp["patience"]), mode="max")
    return Method(model, optimizer, **kwargs, **method_kwargs)
