"""Time the default ``polyak bench`` against one reference run on the same machine, in one go.

Reference: one 40-epoch mnist1d-cnn sgdm run alone (seed 0, one thread, in this process, data
already generated), timed twice: as a run was when the target was set (the reported weights
evaluated every epoch, ``curve_points=None``) and as the benchmark runs it now (10 curve points,
:func:`polyak.bench.train.curve_epochs`). Then ``polyak bench`` itself (default: every paper
method, 3 seeds, one worker per core, report included) in a subprocess with a fresh store and
report directory in a temporary directory, wall clock from start to exit. Prints both ratios;
the target (issue 12) is bench / every-epoch reference <= 24.

    python benchmarks/bench_time.py [--methods a,b,...] [--seeds N] [--workers N]

``--methods``/``--seeds`` time a smaller grid (a quick check; the target is about the default
grid). The machine should be otherwise idle: the ratio assumes the workers get a core each.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import torch

from polyak.bench.tasks import DEFAULT_TASK, get_task
from polyak.bench.train import train_run

TARGET = 24.0


def reference(curve_points: int | None) -> float:
    """Seconds of one 40-epoch sgdm run on the default task, one thread."""
    task = get_task(DEFAULT_TASK)
    task.load()  # generated (or read from the cache) outside the timing
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        result = train_run(task, "sgdm", seed=0, curve_points=curve_points)
        elapsed = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    if result.status != "complete":
        raise SystemExit(f"reference run {result.status}: {result.error}")
    return elapsed


def bench(extra: list[str]) -> float:
    """Wall seconds of ``polyak bench`` (+ ``extra``) with a fresh store and report dir."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "polyak", "bench", "--no-progress",
               "--store", os.path.join(tmp, "runs.sqlite"), "--out", os.path.join(tmp, "report"),
               *extra]
        start = time.perf_counter()
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"polyak bench failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", help="comma-separated methods (default: the paper methods)")
    parser.add_argument("--seeds", type=int, help="seeds per method (default: the task's, 3)")
    parser.add_argument("--workers", type=int, help="worker processes (default: cores)")
    args = parser.parse_args()
    extra = []
    for flag, value in (("--methods", args.methods), ("--seeds", args.seeds),
                        ("--workers", args.workers)):
        if value is not None:
            extra += [flag, str(value)]
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, load average before "
          f"{os.getloadavg()[0]:.2f}; polyak bench {' '.join(extra) or '(default grid)'}")
    ref_every = reference(None)
    ref_now = reference(10)
    total = bench(extra)
    print(f"reference run, every epoch evaluated: {ref_every:8.1f} s")
    print(f"reference run, 10 curve points:       {ref_now:8.1f} s")
    print(f"polyak bench:                         {total:8.1f} s "
          f"(load average after {os.getloadavg()[0]:.2f})")
    ratio = total / ref_every
    print(f"ratio bench / every-epoch reference: {ratio:.1f}; bench / 10-point reference: "
          f"{total / ref_now:.1f}")
    if extra:
        print("(a smaller grid than the default: the target applies to the default grid)")
        return 0
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    print(f"target polyak bench <= {TARGET:.0f}x the every-epoch reference run: {verdict}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    raise SystemExit(main())
