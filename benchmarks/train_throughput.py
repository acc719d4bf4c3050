"""Training throughput of the benchmark tasks: images (characters for the LM) per second, per
task and device, on synthetic data shaped like the task (no dataset files needed).

For each task and device, two candidates train the task's model with plain SGD, interleaved
round-robin in blocks of ``--steps`` steps:
- ``bench``: what ``polyak bench`` runs: ``polyak.recipe("sgd")`` driven through
  ``Method.step(closure)`` by the bench's own epoch functions (:func:`polyak.bench.train.
  train_epoch`, :func:`polyak.bench.lm.train_epoch_lm`), with the task's augmentation on the
  device, and on CUDA the model prepared by :func:`polyak.bench.device.prepare_model` (bf16
  autocast, channels-last);
- ``reference``: a plain torch loop on the same model and data: ``torch.optim.SGD``, float32,
  contiguous NCHW, no augmentation.
The table shows the median throughput of each and ``bench / reference``. On the CPU the
GPU-sized tasks are skipped unless named in ``--tasks`` (WRN-28-10 takes about a minute a step
on one thread). Timings on a shared machine are noisy: run it twice.

    python benchmarks/train_throughput.py [--tasks fmnist-cnn,kjv-lstm] [--devices cpu,cuda]
        [--steps 10] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import polyak
from polyak.bench.data.augment import channel_stats
from polyak.bench.device import prepare_model
from polyak.bench.lm import train_epoch_lm
from polyak.bench.models import get_model
from polyak.bench.tasks import TASKS, Task
from polyak.bench.train import train_epoch, transforms

IMAGE_SHAPES = {"load_fashion_mnist": (1, 28, 28), "load_cifar10": (3, 32, 32),
                "load_cifar100": (3, 32, 32), "load_svhn": (3, 32, 32), "load_mnist1d": (1, 40)}
CLASSES = {"load_cifar100": 100}
VOCAB = 64


def synthetic(task: Task, steps: int, device: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``steps`` batches of random inputs and labels shaped like the task's, and the classes."""
    g = torch.Generator().manual_seed(0)
    n = steps * task.batch_size
    if task.kind == "lm":
        L = task.data_kwargs.get("seq_len", 64)
        x = torch.randint(0, VOCAB, (n, L), generator=g)
        return x.to(device), torch.randint(0, VOCAB, (n, L), generator=g).to(device), VOCAB
    name = task.data.__name__
    classes = CLASSES.get(name, 10)
    x = torch.rand((n, *IMAGE_SHAPES[name]), generator=g)
    return x.to(device), torch.randint(0, classes, (n,), generator=g).to(device), classes


def build(task: Task, classes: int, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = dict(task.model_kwargs)
    kwargs["vocab_size" if task.kind == "lm" else "num_classes"] = classes
    return get_model(task.model, **kwargs)


def bench_runner(task: Task, x: torch.Tensor, y: torch.Tensor, classes: int, device: str):
    model = prepare_model(build(task, classes, device).to(device), device,
                          autocast=task.autocast)
    steps = len(x) // task.batch_size
    method = polyak.recipe("sgd", model, epochs=1, steps_per_epoch=steps)
    if task.kind == "lm":
        return lambda: train_epoch_lm(method, model, x, y, task.batch_size)
    mean, std = channel_stats(x) if x.dim() == 4 else (None, None)
    train_tf, _ = transforms(task, mean if task.standardize else None, std, 0, x.device)
    order = torch.Generator().manual_seed(0)
    return lambda: train_epoch(method, model, x, y, task.batch_size, order, train_tf)


def reference_runner(task: Task, x: torch.Tensor, y: torch.Tensor, classes: int, device: str):
    model = build(task, classes, device).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    B = task.batch_size

    def epoch() -> None:
        state = None
        for i in range(0, len(x), B):
            opt.zero_grad(set_to_none=True)
            if task.kind == "lm":
                out, state = model(x[i:i + B], state)
                state = (state[0].detach(), state[1].detach())
                loss = F.cross_entropy(out.reshape(-1, classes), y[i:i + B].reshape(-1))
            else:
                loss = F.cross_entropy(model(x[i:i + B]), y[i:i + B])
            loss.backward()
            opt.step()
        loss.item()
    return epoch


def timed(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(task: Task, device: str, steps: int, repeats: int) -> tuple[float, float, str]:
    x, y, classes = synthetic(task, steps, device)
    runners = {"bench": bench_runner(task, x, y, classes, device),
               "reference": reference_runner(task, x, y, classes, device)}
    for fn in runners.values():  # warm-up: allocations, cuDNN's algorithm search
        fn()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, fn in runners.items():
            times[name].append(timed(fn, device))
    unit = "chars" if task.kind == "lm" else "images"
    per_epoch = x.numel() if task.kind == "lm" else len(x)
    bench, ref = (per_epoch / statistics.median(times[n]) for n in ("bench", "reference"))
    return bench, ref, unit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=None, help="Comma-separated (default: all).")
    parser.add_argument("--devices", default=None, help="Default: cpu, and cuda if available.")
    parser.add_argument("--steps", type=int, default=10, help="Training steps per timed block.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1, as the "
                        "bench's worker processes).")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.tasks.split(",") if args.tasks else list(TASKS)
    devices = args.devices.split(",") if args.devices else \
        ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {args.threads} CPU thread(s), {args.steps} steps x "
          f"{args.repeats} repeats, SGD; bench = polyak's loop, reference = plain torch fp32")
    print(f"{'task':<20} {'device':<7} {'unit':<6} {'bench/s':>10} {'reference/s':>12} "
          f"{'ratio':>6}")
    for device in devices:
        for name in names:
            task = TASKS[name]
            if device == "cpu" and task.device_hint == "gpu" and not args.tasks:
                print(f"{name:<20} {device:<7} skipped (GPU-sized; name it in --tasks to time "
                      "it on the CPU)")
                continue
            bench, ref, unit = measure(task, device, args.steps, args.repeats)
            print(f"{name:<20} {device:<7} {unit:<6} {bench:>10.0f} {ref:>12.0f} "
                  f"{bench / ref:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
