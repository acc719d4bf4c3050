"""Time one ``step()`` of polyak's optimizers against torch's AdamW on ResNet-18-sized tensors.

The parameters are plain tensors with the shapes of a CIFAR ResNet-18 (3x3 stem, no max-pool,
10-way fc: 62 tensors, 11,173,962 numbers) and fixed random gradients; no torchvision. Every
candidate gets its own copy. One sample is a block of ``--block`` consecutive steps (5: one
Lookahead cycle, so its sync is counted); samples are interleaved round-robin so machine noise
hits all candidates alike. The table shows the median over samples of ms/step and the ratios to
torch's foreach and fused AdamW timed in the same run, and the time of each candidate's first
step (for the compiled ``fused=True`` paths of Padam at partial != 0.5 and AdaBound: the compile
time, paid once per process and configuration).

    python benchmarks/optim_step.py [--repeats 30] [--block 5] [--threads 1] [--warmup 3]
                                    [--clock wall|cpu] [--keep-freed-memory]

``--clock cpu`` times with the thread's CPU clock (with one thread: robust to other processes
taking the CPU on a shared machine; memory-bandwidth contention still shows).
``--keep-freed-memory`` (glibc only) stops malloc from returning freed blocks to the OS. By
default every candidate's per-step temporaries (torch AdamW's and Padam's sqrt(v): 45 MB) may be
re-faulted page by page each step, which can cost more than the arithmetic; with the flag the
timings are of the arithmetic alone.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from polyak.optim import AdaBound, Lookahead, Padam

REFERENCE = "torch AdamW foreach"
FUSED_REFERENCE = "torch AdamW fused"
TARGETS = {  # name -> largest allowed ratio to the reference
    "Padam(partial=0.5)": 1.1,
    "Padam(partial=0.5, fused)": 0.3,  # torch's fused AdamW: ~0.17
    "Padam(partial=1/8, amsgrad)": 1.5,
}
FUSED_TARGETS = {  # name -> largest allowed ratio to torch's fused AdamW
    "Padam(partial=1/8, amsgrad, fused)": 1.3,
    "AdaBound(fused)": 1.3,
}


def resnet18_shapes(num_classes: int = 10) -> list[tuple[int, ...]]:
    """Parameter shapes of ResNet-18 for CIFAR (conv, BN weight, BN bias, ..., fc)."""
    shapes: list[tuple[int, ...]] = [(64, 3, 3, 3), (64,), (64,)]
    c_in = 64
    for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for block in range(2):
            c_block_in = c_in if block == 0 else c_out
            shapes += [(c_out, c_block_in, 3, 3), (c_out,), (c_out,),
                       (c_out, c_out, 3, 3), (c_out,), (c_out,)]
            if block == 0 and (stride != 1 or c_block_in != c_out):
                shapes += [(c_out, c_block_in, 1, 1), (c_out,), (c_out,)]
        c_in = c_out
    return shapes + [(num_classes, 512), (num_classes,)]


def make_params(seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    params = []
    for shape in resnet18_shapes():
        p = torch.randn(shape, generator=gen) * 0.05
        p.grad = torch.randn(shape, generator=gen) * 1e-2
        params.append(p)
    return params


def candidates() -> dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]]:
    wd = 1e-2
    return {
        REFERENCE: lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=wd, foreach=True),
        "torch AdamW fused": lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=wd,
                                                          fused=True),
        "Padam(partial=0.5)": lambda ps: Padam(ps, lr=1e-3, weight_decay=wd),
        "Padam(partial=0.5, fused)": lambda ps: Padam(ps, lr=1e-3, weight_decay=wd, fused=True),
        "Padam(partial=1/8, amsgrad)": lambda ps: Padam(ps, lr=1e-1, weight_decay=wd,
                                                         partial=1 / 8, amsgrad=True),
        "Padam(partial=1/8, amsgrad, fused)": lambda ps: Padam(
            ps, lr=1e-1, weight_decay=wd, partial=1 / 8, amsgrad=True, fused=True),
        "AdaBound": lambda ps: AdaBound(ps, lr=1e-3, weight_decay=5e-4),
        "AdaBound(fused)": lambda ps: AdaBound(ps, lr=1e-3, weight_decay=5e-4, fused=True),
        "Lookahead(Padam), k=5": lambda ps: Lookahead(Padam(ps, lr=1e-3, weight_decay=wd), k=5),
    }


def keep_freed_memory() -> None:
    """glibc: serve large blocks from the heap and never trim it, so freed memory is reused."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)
    libc.mallopt(m_trim_threshold, 2**30)


def run(repeats: int, warmup: int, block: int,
        clock: Callable[[], float]) -> tuple[dict[str, float], dict[str, float]]:
    """(median ms/step per candidate, seconds of its first step); samples of ``block`` steps,
    interleaved round-robin. The first step of a fused (compiled) candidate compiles."""
    optimizers = {name: make(make_params()) for name, make in candidates().items()}
    first: dict[str, float] = {}
    for name, opt in optimizers.items():
        start = time.perf_counter()
        opt.step()
        first[name] = time.perf_counter() - start
        for _ in range(warmup - 1):
            opt.step()
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for _ in range(repeats):
        for name, opt in optimizers.items():
            start = clock()
            for _ in range(block):
                opt.step()
            times[name].append((clock() - start) / block)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}, first


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed samples per candidate")
    parser.add_argument("--block", type=int, default=5, help="steps per timed sample")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per candidate")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: time.perf_counter; cpu: time.thread_time (one thread only)")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="glibc mallopt: reuse freed memory instead of re-faulting it")
    args = parser.parse_args()
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu measures one thread; use it with --threads 1")
    if args.keep_freed_memory:
        keep_freed_memory()
    torch.set_num_threads(args.threads)
    n = sum(torch.Size(s).numel() for s in resnet18_shapes())
    print(f"torch {torch.__version__}, {args.threads} thread(s), {len(resnet18_shapes())} "
          f"tensors, {n:,} parameters, median of {args.repeats} samples of {args.block} steps, "
          f"{args.clock} clock{', freed memory kept' if args.keep_freed_memory else ''}")
    clock = time.perf_counter if args.clock == "wall" else time.thread_time
    medians, first = run(args.repeats, args.warmup, args.block, clock)
    ref, fused_ref = medians[REFERENCE], medians[FUSED_REFERENCE]
    print(f"{'optimizer':36s} {'ms/step':>9s} {'ratio':>7s} {'/fused':>7s} {'1st step s':>11s}")
    for name, ms in medians.items():
        print(f"{name:36s} {ms:9.2f} {ms / ref:7.2f} {ms / fused_ref:7.2f} {first[name]:11.2f}")
    print("(1st step: the first step() of a fresh optimizer; for a fused (compiled) one it "
          "includes compiling, paid once per process and configuration)")
    failed = 0
    checks = [(name, limit, REFERENCE, ref) for name, limit in TARGETS.items()]
    checks += [(name, limit, FUSED_REFERENCE, fused_ref) for name, limit in FUSED_TARGETS.items()]
    for name, limit, ref_name, ref_ms in checks:
        ratio = medians[name] / ref_ms
        verdict = "PASS" if ratio <= limit else "FAIL"
        failed += verdict == "FAIL"
        print(f"target {name} <= {limit:.1f}x {ref_name}: {ratio:.2f}x {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
