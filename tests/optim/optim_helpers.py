"""Small networks and training loops shared by the optimizer tests."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def tanh_net(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A tiny tanh MLP: smooth, so no gradient coordinate is exactly zero."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 12), nn.Tanh(),
                         nn.Linear(12, 3)).to(dtype)


def batch(seed: int = 1, dtype: torch.dtype = torch.float32, n: int = 32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=gen, dtype=dtype)
    y = torch.randn(n, 3, generator=gen, dtype=dtype)
    return x, y


def make_closure(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], torch.Tensor]:
    """Zero the grads, forward, backward; returns the loss (the torch closure convention)."""
    def closure() -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss
    return closure


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, x: torch.Tensor,
          y: torch.Tensor) -> None:
    closure = make_closure(model, x, y)
    for _ in range(steps):
        opt.step(closure)


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])
