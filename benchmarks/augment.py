"""Time polyak's batch-wise CIFAR augmentation against a per-image loop, in the same run.

Candidates, on one batch of 32x32 RGB images (float32 in [0, 1]):
- ``Augment`` (polyak.bench.data.augment): one pad, one gather for all crops, one ``where`` for
  the flips, one standardization;
- per-image loop: what a torchvision-style ``Dataset`` transform does, image by image: pad,
  slice a random window, maybe flip, standardize (the same operations, N Python iterations).
Repeats are interleaved round-robin; the table shows the median ms per batch and the ratio of
the loop to ``Augment``. Runs on CUDA too when available (``--device cuda``).

    python benchmarks/augment.py [--batch 128] [--repeats 30] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from polyak.bench.data.augment import Augment


def per_image(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, g: torch.Generator):
    out = torch.empty_like(x)
    H, W = x.shape[2:]
    m, s = mean.view(-1, 1, 1), std.view(-1, 1, 1)
    for n in range(len(x)):
        padded = F.pad(x[n], (4, 4, 4, 4))
        a, b = torch.randint(0, 9, (2,), generator=g, device=x.device).tolist()
        image = padded[:, a:a + H, b:b + W]
        if torch.rand((), generator=g, device=x.device) < 0.5:
            image = image.flip(2)
        out[n] = (image - m) / s
    return out


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.rand(args.batch, 3, 32, 32, device=args.device)
    mean = torch.tensor([0.49, 0.48, 0.45], device=args.device)
    std = torch.tensor([0.25, 0.24, 0.26], device=args.device)
    aug = Augment(mean, std)
    g = torch.Generator(device=args.device).manual_seed(0)
    candidates = {"Augment (batch-wise)": lambda: aug(x, g),
                  "per-image loop": lambda: per_image(x, mean, std, g)}
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for fn in candidates.values():  # warm-up
        fn()
    for _ in range(args.repeats):
        for name, fn in candidates.items():
            sync(args.device)
            start = time.perf_counter()
            fn()
            sync(args.device)
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["Augment (batch-wise)"])
    print(f"batch {args.batch}x3x32x32 on {args.device}, {args.threads} thread(s), "
          f"median of {args.repeats}")
    for name, t in times.items():
        med = statistics.median(t)
        print(f"{name:24s} {1e3 * med:9.3f} ms   x{med / base:6.1f} of Augment")


if __name__ == "__main__":
    main()
