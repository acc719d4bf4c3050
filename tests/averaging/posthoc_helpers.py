"""A small training loop with snapshots and online averages, for the post-hoc tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EPOCHS, STEPS, BATCH = 5, 4, 8


def net(dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(dtype)


def batch(step: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(BATCH, 4, generator=g, dtype=torch.float64).to(dtype)
    return x, torch.randint(3, (BATCH,), generator=g)


def loss_of(model: nn.Module, step: int) -> torch.Tensor:
    x, y = batch(step, next(model.parameters()).dtype)
    return F.cross_entropy(model(x), y)


def train(model: nn.Module, observers: list, epochs: int = EPOCHS, first_epoch: int = 0,
          opt: torch.optim.Optimizer | None = None, after_epoch=None) -> list[list[torch.Tensor]]:
    """A plain loop: SGD with momentum, then ``o.step()`` for every observer after each step and
    ``o.end_epoch(epoch)`` after each epoch. Returns the iterate after every step (copies)."""
    opt = opt or torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    iterates = []
    for epoch in range(first_epoch, epochs):
        for i in range(STEPS):
            opt.zero_grad()
            loss_of(model, epoch * STEPS + i).backward()
            opt.step()
            for o in observers:
                o.step()
            iterates.append([p.detach().clone() for p in model.parameters()])
        for o in observers:
            o.end_epoch(epoch)
        if after_epoch is not None:
            after_epoch(epoch)
    return iterates


def assert_lists_close(got, want, **tol) -> None:
    got, want = list(got), list(want)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.to(w.dtype), w, **tol)
