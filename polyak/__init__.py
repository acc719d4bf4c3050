"""polyak: parameter averaging, adaptive-to-SGD switching and learning-rate choice for PyTorch.

Submodules are imported lazily, so ``import polyak.optim`` pulls in the optimizers and nothing else.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = (
    "optim", "averaging", "schedules", "triggers", "method", "recipes", "analysis", "bench",
    "loop", "param_groups",
)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"polyak.{name}")
    if name in ("recipe", "Method"):
        module = importlib.import_module("polyak.recipes" if name == "recipe" else "polyak.method")
        return getattr(module, name)
    raise AttributeError(f"module 'polyak' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_SUBMODULES, "recipe", "Method"])
