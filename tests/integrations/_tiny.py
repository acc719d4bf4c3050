"""Tiny data, models and polyak's own loop for the integration tests (no downloads)."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

import polyak

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("WANDB_MODE", "disabled")

N_TRAIN, N_VAL, BATCH, FEATURES, CLASSES = 32, 16, 8, 4, 3


def data(seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N_TRAIN + N_VAL, FEATURES, generator=g)
    w = torch.randn(FEATURES, CLASSES, generator=g)
    y = (x @ w + 0.5 * torch.randn(N_TRAIN + N_VAL, CLASSES, generator=g)).argmax(1)
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


def batches(x: torch.Tensor, y: torch.Tensor, size: int = BATCH) -> list[tuple[torch.Tensor, ...]]:
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


def net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(FEATURES, 8), nn.BatchNorm1d(8), nn.ReLU(),
                         nn.Linear(8, CLASSES))


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    was = model.training
    model.eval()
    out = model(x)
    model.train(was)
    return float(F.cross_entropy(out, y)), float((out.argmax(1) == y).float().mean())


def build(spec, model: nn.Module, epochs: int, steps: int) -> polyak.Method:
    """``spec``: a recipe spec, or a function (model, epochs, steps_per_epoch) -> Method."""
    return polyak.recipe(spec, model, epochs, steps) if isinstance(spec, str) else \
        spec(model, epochs, steps)


def per_step_ema(model: nn.Module, epochs: int, steps: int) -> polyak.Method:
    """A hand-built Method: SGD, a per-step 1/(1+t) schedule, EMA collected every step."""
    from polyak.averaging import EMA

    return polyak.Method(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                         schedule=lambda t: 1.0 / (1.0 + t), per_step=True,
                         steps_per_epoch=steps, averaging=EMA(model, decay=0.8))


def own_loop(model: nn.Module, spec, epochs: int, train: list, val: tuple,
             accumulate: int = 1) -> tuple[dict, polyak.Method]:
    """polyak's own loop on ``train`` batches (``accumulate`` micro-batches per step, the mean of
    their losses); validation of the reported weights feeds end_epoch, as the integrations do.
    Returns the reported weights' state dict and the Method."""
    method = build(spec, model, epochs, -(-len(train) // accumulate))
    for epoch in range(epochs):
        for i in range(0, len(train), accumulate):
            group = train[i:i + accumulate]
            method.step(lambda g=group: sum(F.cross_entropy(model(xb), yb) for xb, yb in g)
                        / len(g))
        with method.eval_weights(bn_loader=train):
            val_loss, val_acc = evaluate(model, *val)
        method.end_epoch(epoch, val_loss=val_loss, val_acc=val_acc, bn_loader=train)
    with method.eval_weights(bn_loader=train):
        final = {k: v.clone() for k, v in model.state_dict().items()}
    return final, method


def assert_states_close(got: dict, want: dict, atol: float = 1e-6) -> None:
    assert sorted(got) == sorted(want)
    for key in want:
        assert torch.allclose(got[key].double(), want[key].double(), rtol=0, atol=atol), key

EPOCHS_DDP = 4


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sam_clipped(model: nn.Module, epochs: int, steps: int) -> polyak.Method:
    """The sam recipe with the Method's own gradient clipping (each pass's gradient)."""
    from polyak.loop import ClipGradNorm

    method = polyak.recipe("sam", model, epochs, steps)
    method.clip = ClipGradNorm(0.05)
    return method
