"""Time a whole training step (forward, backward, ``step()``) of KFACSqrt against torch SGD.

Two models on CPU: (a) an MNIST-1D style 1-D CNN (three Conv1d with 32 channels and a Linear
head, input (128, 1, 40)) and (b) a CIFAR ResNet-20 (BatchNorm, parameter-free shortcuts,
3x32x32 input, 10 classes), each on a fixed synthetic batch of 128. Candidates: torch SGD and
KFACSqrt(inv_every=100) with factor_every 1 and 10. Each candidate trains its own copy of the
model; the steps are interleaved (one step of each candidate per round) so machine noise hits all
alike. After ``--warmup`` steps, ``--steps`` steps are timed (default 100 = inv_every: the window
holds exactly one eigendecomposition refresh and ``100/factor_every`` factor steps, so the mean
is the amortised cost; its ratio is to SGD's mean). Because a shared machine adds spikes to
means, the amortised cost is also built from medians: of factor steps, of plain steps and the
refresh step (ratio to SGD's median; the target is checked on this one). Last, the memory held
by factors and inverse roots (bytes and ratio to the parameter bytes).

    python benchmarks/kfac_step.py [--threads 1] [--steps 100] [--warmup 3] [--models both]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from polyak.optim.kfac import KFACSqrt

INV_EVERY = 100
TARGET = 1.5  # KFACSqrt(factor_every=10) / SGD, whole training step


def mnist1d_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv1d(1, 32, 5, padding=2), nn.ReLU(),
        nn.Conv1d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv1d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 10, 10),
    )


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.pad = (c_out - c_in) // 2 if stride != 1 or c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x if self.pad is None else F.pad(x[:, :, ::2, ::2],
                                                 (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + short)


class ResNet20(nn.Module):
    """He et al. (2016) CIFAR ResNet-20: 3 stages of 3 basic blocks, 16/32/64 channels."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        blocks, c_in = [], 16
        for c_out, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(3):
                blocks.append(BasicBlock(c_in, c_out, stride if i == 0 else 1))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(out.mean((2, 3)))


MODELS = {
    "mnist1d-cnn": (mnist1d_cnn, (128, 1, 40)),
    "resnet20": (ResNet20, (128, 3, 32, 32)),
}


def candidates(make) -> dict[str, tuple[nn.Module, torch.optim.Optimizer]]:
    out = {}
    for name in ("SGD", "KFACSqrt fe=1", "KFACSqrt fe=10"):
        torch.manual_seed(0)
        model = make()
        if name == "SGD":
            opt = torch.optim.SGD(model.parameters(), lr=1e-2)
        else:
            fe = int(name.split("=")[1])
            opt = KFACSqrt(model, lr=1e-2, inv_every=INV_EVERY, factor_every=fe)
        out[name] = (model, opt)
    return out


def one_step(model: nn.Module, opt: torch.optim.Optimizer, x, y) -> float:
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    return time.perf_counter() - t0


def bench_model(name: str, steps: int, warmup: int) -> None:
    make, shape = MODELS[name]
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(shape, generator=gen), torch.randint(0, 10, (shape[0],), generator=gen)
    cands = candidates(make)
    times: dict[str, list[float]] = {k: [] for k in cands}
    for s in range(warmup + steps):
        for k, (model, opt) in cands.items():
            dt = one_step(model, opt, x, y)
            if s >= warmup:
                times[k].append(dt)
    ref_mean, ref_median = statistics.fmean(times["SGD"]), statistics.median(times["SGD"])
    param_bytes = sum(p.nbytes for p in cands["SGD"][0].parameters())
    print(f"\n{name}: input {tuple(shape)}, {param_bytes:,} parameter bytes, "
          f"{steps} timed steps (steps {warmup + 1}..{warmup + steps})")
    print(f"{'candidate':<16}{'mean ms':>9}{'ratio':>7}{'median ms':>10}{'factor':>8}{'plain':>8}"
          f"{'refresh':>9}{'amortised':>10}{'ratio':>7}{'factor bytes':>14}{'/params':>8}")
    for k, ts in times.items():
        mean, median = statistics.fmean(ts), statistics.median(ts)
        line = f"{k:<16}{1e3 * mean:>9.1f}{mean / ref_mean:>7.2f}{1e3 * median:>10.1f}"
        if k != "SGD":
            line += kfac_columns(cands[k][1], ts, warmup, ref_median, param_bytes)
        print(line)


def kfac_columns(opt: KFACSqrt, ts: list[float], warmup: int, ref_median: float,
                 param_bytes: int) -> str:
    """Medians of factor / plain steps, the refresh step, and the amortised cost built from them:
    ``((fe - 1) plain + factor) / fe + (refresh - factor) / inv_every`` (robust to noise)."""
    fe = opt.param_groups[0]["factor_every"]
    kinds: dict[str, list[float]] = {"factor": [], "plain": [], "refresh": []}
    for t, dt in enumerate(ts, start=warmup + 1):
        kind = "refresh" if (t - 1) % INV_EVERY == 0 else "plain" if (t - 1) % fe else "factor"
        kinds[kind].append(dt)
    med = {k: statistics.median(v) if v else float("nan") for k, v in kinds.items()}
    plain = med["plain"] if fe > 1 else 0.0
    refresh_extra = (med["refresh"] - med["factor"]) / INV_EVERY
    amortised = ((fe - 1) * plain + med["factor"]) / fe + refresh_extra
    verdict = ""
    if fe == 10:
        verdict = f"  target <= {TARGET}x: {'ok' if amortised / ref_median <= TARGET else 'MISSED'}"
    nbytes = opt.factor_nbytes()
    return (f"{1e3 * med['factor']:>8.1f}{1e3 * med['plain']:>8.1f}{1e3 * med['refresh']:>9.1f}"
            f"{1e3 * amortised:>10.1f}{amortised / ref_median:>7.2f}{nbytes:>14,}"
            f"{nbytes / param_bytes:>8.2f}{verdict}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=INV_EVERY,
                    help="timed steps; a multiple of 100 (inv_every) amortises the inversion")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--models", choices=["both", *MODELS], default="both")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU; "
          f"KFACSqrt inv_every={INV_EVERY}")
    for name in MODELS if args.models == "both" else [args.models]:
        bench_model(name, args.steps, args.warmup)


if __name__ == "__main__":
    main()
