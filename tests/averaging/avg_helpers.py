"""Small networks, data and loaders shared by the averaging tests (not a test module)."""

from __future__ import annotations

import torch
from torch import nn


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def bn_net(seed: int = 0) -> nn.Module:
    """Conv2d + BatchNorm2d, then Linear + BatchNorm1d: both BatchNorm kinds."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * 5 * 5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3),
    )


def image_batches(n: int = 4, batch: int = 8, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 2, 5, 5, generator=g) * (1 + i) + i for i in range(n)]


def set_params(model: nn.Module, values: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for p, v in zip(model.parameters(), values):
            p.copy_(v)


def random_iterate(model: nn.Module, seed: int) -> list[torch.Tensor]:
    """Fill the model's parameters with random values; returns copies of them."""
    g = torch.Generator().manual_seed(seed)
    values = [torch.randn(p.shape, generator=g) for p in model.parameters()]
    set_params(model, values)
    return [v.clone() for v in values]


def params_of(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def bn_buffers(model: nn.Module) -> list[torch.Tensor]:
    return [b.detach().clone() for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) for b in m.buffers(recurse=False)]


def regression_data(seed: int = 3, batches: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 4, generator=g), torch.randn(16, 3, generator=g))
            for _ in range(batches)]


def train_epoch(model: nn.Module, opt: torch.optim.Optimizer, data, avg=None) -> None:
    """One deterministic epoch of full passes over ``data``; ``avg.step()`` after each step."""
    for x, y in data:
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        if avg is not None:
            avg.step()


class RaisingLoader:
    """A loader that fails the test if anyone iterates it."""

    def __iter__(self):
        raise AssertionError("the loader was iterated")


def assert_lists_equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def assert_lists_close(a, b, rtol: float = 1e-6, atol: float = 1e-7) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol)
