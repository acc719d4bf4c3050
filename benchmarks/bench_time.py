"""Time the default ``polyak bench`` against one reference run on the same machine, in one go.

The yardstick (issue 12's target: the default bench in at most 24 times it) is one 40-epoch
mnist1d-cnn momentum-SGD run alone, written as a plain torch loop the way such a run was when
the target was set: the CNN with torch's own ``Conv1d``/``BatchNorm1d`` (polyak's model computes
them in (N, L, C) order, :mod:`polyak.bench.models._nlc`), ``torch.optim.SGD`` with its default
kernel, the validation and test sets (12,000 examples) evaluated every epoch in batches of 5000,
one thread, data already generated. It does not use polyak's code, so polyak's own speed-ups do
not move it. Beside it, for comparison,
polyak's ``train_run`` of the same run as the benchmark runs it (10 curve points) and with every
epoch evaluated. Then ``polyak bench`` itself (default: every arm of the papers' protocols, 3
seeds, one worker per core, report included) in a subprocess with a fresh store and report
directory in a temporary directory, wall clock from start to exit.

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
import torch.nn.functional as F

import polyak
from polyak.bench.models._nlc import with_torch_layers
from polyak.bench.tasks import DEFAULT_TASK, get_task
from polyak.bench.train import make_model, steps_per_epoch, train_run

TARGET = 24.0
EPOCHS = 40


def _one_thread(fn):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)


def yardstick() -> float:
    """Seconds of the plain-torch 40-epoch momentum-SGD run described in the module doc."""
    task = get_task(DEFAULT_TASK)
    splits = task.load()
    torch.manual_seed(0)
    model = with_torch_layers(make_model(task, splits))
    hp = polyak.recipes.parse("sgdm").hyperparameters(EPOCHS, steps_per_epoch(task, splits))
    opt = torch.optim.SGD(model.parameters(), lr=hp["lr"], momentum=hp["momentum"],
                          weight_decay=hp["weight_decay"])
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [EPOCHS // 2, 3 * EPOCHS // 4], 0.1)
    order = torch.Generator().manual_seed(0)

    @torch.no_grad()
    def evaluate(x, y):
        model.eval()
        loss, correct = 0.0, 0
        for i in range(0, len(x), 5000):
            out = model(x[i:i + 5000])
            loss += F.cross_entropy(out, y[i:i + 5000], reduction="sum").item()
            correct += int((out.argmax(1) == y[i:i + 5000]).sum())
        model.train()
        return loss / len(x), correct / len(x)

    def run():
        for _ in range(EPOCHS):
            perm = torch.randperm(len(splits.x_train), generator=order)
            for i in range(0, len(perm), task.batch_size):
                idx = perm[i:i + task.batch_size]
                loss = F.cross_entropy(model(splits.x_train[idx]), splits.y_train[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            sched.step()
            evaluate(splits.x_val, splits.y_val)
            evaluate(splits.x_test, splits.y_test)

    return _one_thread(run)


def polyak_run(curve_points: int | None) -> float:
    """Seconds of polyak's ``train_run`` of sgdm (seed 0) on the default task, one thread."""
    task = get_task(DEFAULT_TASK)
    task.load()
    result = []
    seconds = _one_thread(lambda: result.append(train_run(task, "sgdm", seed=0,
                                                          curve_points=curve_points)))
    if result[0].status != "complete":
        raise SystemExit(f"reference run {result[0].status}: {result[0].error}")
    return seconds


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
    parser.add_argument("--methods",
                        help="comma-separated methods (default: every arm of the protocols)")
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
    # the yardstick's median of 3 before and after the bench: a shared machine's speed drifts
    before = sorted(yardstick() for _ in range(3))[1]
    ref_every = polyak_run(None)
    ref_now = polyak_run(10)
    total = bench(extra)
    after = sorted(yardstick() for _ in range(3))[1]
    ref = (before + after) / 2
    print(f"yardstick: plain torch sgdm run, every epoch evaluated: {ref:8.1f} s (median of 3 "
          f"before the bench {before:.1f} s, after {after:.1f} s)")
    print(f"polyak train_run sgdm, every epoch evaluated:          {ref_every:8.1f} s")
    print(f"polyak train_run sgdm, 10 curve points (as benched):   {ref_now:8.1f} s")
    print(f"polyak bench:                                          {total:8.1f} s "
          f"(load average after {os.getloadavg()[0]:.2f})")
    ratio = total / ref
    print(f"ratio bench / yardstick: {ratio:.1f}; bench / polyak every-epoch run: "
          f"{total / ref_every:.1f}; bench / polyak 10-point run: {total / ref_now:.1f}")
    if extra:
        print("(a smaller grid than the default: the target applies to the default grid)")
        return 0
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    print(f"target polyak bench <= {TARGET:.0f}x the yardstick run: {verdict}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    raise SystemExit(main())
