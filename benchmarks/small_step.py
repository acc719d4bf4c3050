"""Per-step costs outside forward/backward on the default task's small model.

The mnist1d-cnn of ``polyak bench`` (14 tensors, 5,360 numbers) spends most of a step in
forward and backward; what is left is per-call overhead, which is where kernel choice matters.
This times, on that model's parameters with fixed random gradients, one thread:

- the optimizer steps the recipes build: torch's SGD (momentum 0.9, wd 5e-4) and Padam at
  ``partial=0.5`` (Adam) with the default kernels and with the fused ones the recipes now pick
  (:func:`polyak._recipe_parts.fused_kernels`);
- the finiteness check of every step (:func:`polyak.loop.grads_finite`, one AMP overflow
  kernel) against the per-tensor norms it replaced;
- a whole training step (forward, backward, fused SGD step; batch 128 of random inputs) of the
  model with its (N, L, C) layers (:mod:`polyak.bench.models._nlc`) against the same model with
  torch's ``Conv1d``/``BatchNorm1d``.

Samples are interleaved round-robin (machine noise hits all alike); medians in microseconds and
the ratio of each fused/new candidate to its default/old one.

    python benchmarks/small_step.py [--repeats 30] [--block 50]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from polyak.bench.models._nlc import with_torch_layers
from polyak.bench.models.mnist1d import CNN
from polyak.loop import grads_finite
from polyak.optim import Padam


def norms_check(params: list[torch.Tensor]) -> bool:
    """The check before (polyak 0.1.0 up to issue 12): per-tensor norms, each moved to one
    device and dtype, stacked, summed, concatenated with the other parts, one sync."""
    norms = torch._foreach_norm([p.grad for p in params])
    device = norms[0].device
    parts = [torch.stack([n.to(device, torch.float32) for n in norms]).sum().reshape(1)]
    return bool(torch.isfinite(torch.cat(parts)).all())


def train_step(model: torch.nn.Module, gen: torch.Generator) -> Callable[[], object]:
    """One momentum-SGD training step of ``model`` on a fixed random batch of 128."""
    x = torch.randn(128, 1, 40, generator=gen)
    y = torch.randint(0, 10, (128,), generator=gen)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, fused=True)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def candidates(params: list[torch.Tensor], gen: torch.Generator
               ) -> dict[str, tuple[str, Callable[[], object]]]:
    """name -> (the name it is compared with, one call)."""
    def sgd(fused: bool | None) -> Callable[[], object]:
        return torch.optim.SGD(params, lr=1e-4, momentum=0.9, weight_decay=5e-4,
                               fused=fused).step

    def adam(fused: bool | None) -> Callable[[], object]:
        return Padam(params, lr=1e-6, weight_decay=5e-4, fused=fused).step

    return {
        "torch SGD (default kernel)": ("", sgd(None)),
        "torch SGD fused (recipes)": ("torch SGD (default kernel)", sgd(True)),
        "Padam(0.5) foreach": ("", adam(None)),
        "Padam(0.5) fused (recipes)": ("Padam(0.5) foreach", adam(True)),
        "finite check: per-tensor norms": ("", lambda: norms_check(params)),
        "finite check: grads_finite": ("finite check: per-tensor norms",
                                       lambda: grads_finite(params)),
        "train step: torch Conv1d/BN": ("", train_step(with_torch_layers(CNN()), gen)),
        "train step: (N, L, C) layers": ("train step: torch Conv1d/BN", train_step(CNN(), gen)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed samples per candidate")
    parser.add_argument("--block", type=int, default=50, help="calls per timed sample")
    args = parser.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    params = [p.detach().clone() for p in CNN().parameters()]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-2
    calls = candidates(params, gen)
    for _, call in calls.values():
        for _ in range(20):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(args.repeats):
        for name, (_, call) in calls.items():
            start = time.perf_counter()
            for _ in range(args.block):
                call()
            times[name].append((time.perf_counter() - start) / args.block)
    medians = {name: statistics.median(t) * 1e6 for name, t in times.items()}
    print(f"torch {torch.__version__}, 1 thread, mnist1d-cnn parameters ({len(params)} tensors, "
          f"{sum(p.numel() for p in params):,} numbers), median of {args.repeats} samples of "
          f"{args.block} calls")
    print(f"{'candidate':34s} {'us/call':>8s}  ratio to")
    for name, us in medians.items():
        versus = calls[name][0]
        ratio = f"{us / medians[versus]:.2f}x {versus}" if versus else ""
        print(f"{name:34s} {us:8.1f}  {ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
