"""Time one collection of polyak's weight averages against torch's AveragedModel on ResNet-18 sizes.

The model is an ``nn.Module`` holding ``nn.Parameter``s with the shapes of a CIFAR ResNet-18
(3x3 stem, 10-way fc: 62 tensors, 11,173,962 numbers); no torchvision. Candidates, each with its
own model and average: polyak's Uniform (``end_epoch``), EMA (``step``) and PhaseWise
(``end_epoch`` inside one long phase), each including its non-finite check, torch's
``AveragedModel.update_parameters`` with its default (SWA) averaging and with
``get_ema_multi_avg_fn``, and a bare ``torch._foreach_lerp_`` over the tensors of polyak's Uniform
(its average and its model's parameters: the floor, with the same memory placement).
Repeats are interleaved round-robin so machine noise hits all candidates alike (and each finds
its tensors out of cache, as a training step leaves them for a model larger than the cache);
``--warm`` times each candidate's collections back to back instead (its tensors in cache as far
as they fit); ``--cpu-time`` times the thread's CPU time (``time.thread_time``, steadier on a
machine shared with other processes) instead of wall time. The table shows median ms per
collection and ratios to AveragedModel's default and to the bare lerp, timed in the same run;
"collection / bare lerp" repeats the polyak ratios.
Memory: the bytes an average holds (its tensors' storages) over the parameters' bytes.
Averaging folded into the step: GadamX's optimizer (Padam(1/8, amsgrad, fused=True), compiled;
its first call compiles, in the warm-up) alone, followed by ``EMA.step()``, and carrying the EMA
(``opt.carry_average(ema)``: the lerp inside the step's kernel), with ratios to the step alone.

    python benchmarks/averaging.py [--repeats 30] [--warmup 3] [--threads 1] [--warm] [--cpu-time]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from polyak.averaging import EMA, PhaseWise, Uniform
from polyak.optim import Padam

AVG_MODEL = "AveragedModel default (SWA)"
BARE = "bare _foreach_lerp_"
STEP = "fused Padam step"
STEP_SEPARATE = "fused Padam step + EMA.step()"
STEP_CARRIED = "fused Padam step carrying EMA"


def resnet18_shapes(num_classes: int = 10) -> list[tuple[int, ...]]:
    """Parameter shapes of a CIFAR ResNet-18: stem conv + BN, 4 stages of 2 basic blocks, fc."""
    shapes: list[tuple[int, ...]] = [(64, 3, 3, 3), (64,), (64,)]
    width = 64
    for stage, c in enumerate((64, 128, 256, 512)):
        for block in range(2):
            c_in = width if block == 0 else c
            shapes += [(c, c_in, 3, 3), (c,), (c,), (c, c, 3, 3), (c,), (c,)]
            if block == 0 and stage > 0:           # 1x1 projection shortcut + its BN
                shapes += [(c, c_in, 1, 1), (c,), (c,)]
        width = c
    return shapes + [(num_classes, 512), (num_classes,)]


class ParamBag(nn.Module):
    """An nn.Module whose only state is ResNet-18-shaped parameters."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.params = nn.ParameterList(
            nn.Parameter(torch.randn(s, generator=gen) * 0.05) for s in resnet18_shapes()
        )


def _bare_lerp(avg: Uniform) -> Callable[[int], None]:
    """The running-mean update alone, on the very tensors ``avg`` holds and reads."""
    params = [p.detach() for p in avg.model.parameters()]
    return lambda i: torch._foreach_lerp_(avg.average, params, 1.0 / (i + 2))


def _fused_step(carry: bool | None) -> Callable[[int], None]:
    """GadamX's optimizer, Padam(1/8, amsgrad, fused=True: one compiled kernel per tensor) on its
    own model with fixed gradients; ``carry``: None no EMA, False ``EMA.step()`` after the step
    (a second pass over the parameters), True the EMA carried by the step (its lerp in the
    step's kernel)."""
    model = ParamBag()
    gen = torch.Generator().manual_seed(1)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen) * 1e-2
    opt = Padam(model.parameters(), lr=0.1, weight_decay=1e-2, partial=1 / 8, amsgrad=True,
                fused=True)
    if carry is None:
        return lambda i: opt.step()
    ema = EMA(model, decay=0.999)
    if carry:
        opt.carry_average(ema)

    def step(i: int) -> None:
        opt.step()
        ema.step()
    return step


def candidates() -> dict[str, Callable[[int], None]]:
    """name -> collect(i) for the i-th collection (each with its own model and average)."""
    uniform = Uniform(ParamBag())
    uniform_loop = Uniform(ParamBag(), foreach=False)
    ema = EMA(ParamBag(), decay=0.999)
    phasewise = PhaseWise(ParamBag(), [10**6])
    swa_model, ema_model = ParamBag(), ParamBag()
    swa_ref = AveragedModel(swa_model)
    ema_ref = AveragedModel(ema_model, multi_avg_fn=get_ema_multi_avg_fn(0.999))
    return {
        AVG_MODEL: lambda i: swa_ref.update_parameters(swa_model),
        "AveragedModel EMA multi_avg_fn": lambda i: ema_ref.update_parameters(ema_model),
        BARE: _bare_lerp(uniform),
        "polyak Uniform": uniform.end_epoch,
        "polyak Uniform foreach=False": uniform_loop.end_epoch,
        "polyak EMA": lambda i: ema.step(),
        "polyak PhaseWise": phasewise.end_epoch,
        STEP: _fused_step(None),
        STEP_SEPARATE: _fused_step(False),
        STEP_CARRIED: _fused_step(True),
    }


def run(repeats: int, warmup: int, warm: bool = False, cpu: bool = False) -> dict[str, float]:
    clock = time.thread_time if cpu else time.perf_counter
    funcs = candidates()
    times: dict[str, list[float]] = {name: [] for name in funcs}
    order = [(i, name) for name in funcs for i in range(warmup + repeats)] if warm else \
        [(i, name) for i in range(warmup + repeats) for name in funcs]
    for i, name in order:
        start = clock()
        funcs[name](i)
        elapsed = clock() - start
        if i >= warmup:
            times[name].append(elapsed)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def memory_ratios() -> dict[str, float]:
    model = ParamBag()
    param_bytes = sum(p.untyped_storage().nbytes() for p in model.parameters())
    averages = {"Uniform": Uniform(model), "EMA": EMA(model, decay=0.999),
                "PhaseWise": PhaseWise(model, [80, 40, 40])}
    for avg in averages.values():
        avg.end_epoch(0)
    ratios = {name: avg.nbytes / param_bytes for name, avg in averages.items()}
    swa = AveragedModel(model)
    swa_bytes = sum(t.untyped_storage().nbytes() for t in swa.state_dict().values())
    ratios["AveragedModel (deepcopy)"] = swa_bytes / param_bytes
    return ratios


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed collections per candidate")
    parser.add_argument("--warmup", type=int, default=3, help="untimed collections per candidate")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--warm", action="store_true",
                        help="each candidate's collections back to back (tensors in cache)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time CPU time of the thread (a shared machine's preemption unbilled)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = sum(torch.Size(s).numel() for s in resnet18_shapes())
    order = "back to back" if args.warm else "round-robin"
    clock = "thread CPU time" if args.cpu_time else "wall time"
    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU, {len(resnet18_shapes())} "
          f"tensors, {n:,} parameters, median {clock} of {args.repeats} collections ({order})")
    ms = run(args.repeats, args.warmup, args.warm, args.cpu_time)
    print(f"{'candidate':32s} {'ms':>8s} {'/AvgModel':>10s} {'/bare lerp':>11s} {'/step':>7s}")
    for name, t in ms.items():
        print(f"{name:32s} {t:8.2f} {t / ms[AVG_MODEL]:10.2f} {t / ms[BARE]:11.2f} "
              f"{t / ms[STEP]:7.2f}")
    polyak = ("polyak Uniform", "polyak EMA", "polyak PhaseWise")
    print("collection / bare lerp: " + ", ".join(f"{name.split()[1]} {ms[name] / ms[BARE]:.2f}"
                                                 for name in polyak))
    mem = memory_ratios()
    for name, ratio in mem.items():
        print(f"memory {name:25s} {ratio:.3f}x the parameters' bytes")
    checks = [
        ("Uniform >= 4x faster than " + AVG_MODEL, ms[AVG_MODEL] / ms["polyak Uniform"], 4.0,
         ">="),
        *((f"{name[7:]} (check included) <= 1.3x {BARE}", ms[name] / ms[BARE], 1.3, "<=")
          for name in polyak),
        ("Uniform memory <= 1.05x parameters", mem["Uniform"], 1.05, "<="),
        ("EMA memory <= 1.05x parameters", mem["EMA"], 1.05, "<="),
        ("PhaseWise memory <= 1.05x parameters", mem["PhaseWise"], 1.05, "<="),
        (f"{STEP_CARRIED} <= 1.1x {STEP}", ms[STEP_CARRIED] / ms[STEP], 1.1, "<="),
    ]
    failed = 0
    for label, value, limit, op in checks:
        ok = value >= limit if op == ">=" else value <= limit
        failed += not ok
        print(f"target {label}: {value:.2f} {'PASS' if ok else 'FAIL'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
