"""Models of the benchmark, by name: ``MODELS`` maps a name to a constructor.

Add a model family in its own module and register its constructors in ``MODELS`` here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from polyak.bench.models.catalog import MODELS as PAPER_MODELS
from polyak.bench.models.mnist1d import CNN, MLP

__all__ = ["MODELS", "get_model", "describe"]

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mnist1d-mlp": MLP,
    "mnist1d-cnn": CNN,
    **PAPER_MODELS,  # the papers' CIFAR / Fashion-MNIST networks and the char LSTM
}


def get_model(name: str, **kw: object) -> nn.Module:
    """A freshly initialised model ``name`` (uses torch's global RNG for the initial weights)."""
    try:
        constructor = MODELS[name]
    except KeyError:
        raise ValueError(
            f"Unknown model: {name!r} (allowed: {', '.join(sorted(MODELS))})") from None
    return constructor(**kw)


def describe() -> list[tuple[str, str]]:
    """(name, one-line description) for every registered model."""
    rows = []
    for name, constructor in MODELS.items():
        doc = inspect.getdoc(constructor) or ""
        rows.append((name, doc.splitlines()[0] if doc else ""))
    return rows
