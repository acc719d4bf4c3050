"""Benchmark tasks: a dataset, a model, a batch size, an epoch budget and the tuned learning rates.

A :class:`Task` is a frozen, picklable description; worker processes receive it whole, so a
variant made with :meth:`Task.replace` (fewer examples, fewer epochs: what the tests use) runs
exactly like a registered task. Its :meth:`Task.config` is part of every run's identity in the
store, so a variant never collides with the task it came from.

Tuned learning rates ship as ``polyak/bench/tuned/<task>.json``, written by ``polyak tune``:
``{"command": ..., "lr": {"<method>": <lr>, ...}, ...}``. ``polyak bench`` passes a method's
tuned value as the override ``lr=`` unless the spec sets ``lr`` itself.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polyak.bench.data import Splits
from polyak.bench.data.mnist1d import load_mnist1d

__all__ = ["Task", "TASKS", "get_task", "describe", "TUNED_DIR"]

TUNED_DIR = Path(__file__).parent / "tuned"
_SPLITS_CACHE: dict[str, Splits] = {}


@dataclass(frozen=True)
class Task:
    """One benchmark task. ``epochs`` and ``seeds`` are the defaults of ``polyak bench``."""

    name: str
    description: str
    data: Callable[..., Splits]
    model: str
    batch_size: int
    epochs: int
    seeds: int = 3
    data_kwargs: dict[str, Any] = field(default_factory=dict)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    eval_batch_size: int = 5000
    tuned_path: Path | None = None

    def __post_init__(self) -> None:
        for name in ("batch_size", "epochs", "seeds", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Invalid {name}: {value!r} (allowed: an integer >= 1)")

    def replace(self, **changes: Any) -> Task:
        """A copy with some fields changed (e.g. ``data_kwargs={"n_train": 200}, epochs=2``)."""
        return dataclasses.replace(self, **changes)

    def config(self) -> dict[str, Any]:
        """Everything but the name that determines a run's result (JSON-serialisable)."""
        return {
            "data": f"{self.data.__module__}.{self.data.__qualname__}",
            "data_kwargs": {k: self.data_kwargs[k] for k in sorted(self.data_kwargs)},
            "model": self.model,
            "model_kwargs": {k: self.model_kwargs[k] for k in sorted(self.model_kwargs)},
            "batch_size": self.batch_size,
            "eval_batch_size": self.eval_batch_size,
        }

    def load(self) -> Splits:
        """The task's splits, generated or read from the cache once per process."""
        key = json.dumps([self.config()["data"], self.config()["data_kwargs"]])
        if key not in _SPLITS_CACHE:
            _SPLITS_CACHE[key] = self.data(**self.data_kwargs)
        return _SPLITS_CACHE[key]

    def tuned_file(self) -> Path:
        return self.tuned_path if self.tuned_path is not None else TUNED_DIR / f"{self.name}.json"

    def tuned_lrs(self) -> dict[str, float]:
        """Method name -> tuned learning rate (empty when the task has no tuned file yet)."""
        path = self.tuned_file()
        if not path.exists():
            return {}
        try:
            lrs = json.loads(path.read_text())["lr"]
            return {str(k): float(v) for k, v in lrs.items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"Invalid tuned learning-rate file {path}: {exc}") from None


# Budgets measured on one CPU thread (runs are single-threaded): the CNN takes about 6 s a run
# (SAM variants 9 s), of which ~35 % is the per-epoch evaluation (live val for the feedback
# recipes, then val + test under the reported weights, with BatchNorm recalibrated on the whole
# training set: no shortcut); `polyak bench` (25 methods x 3 seeds) took 4 min 19 s on 2 cores.
_CNN_BUDGET = (
    "MNIST-1D (4000 train / 2000 val / 10000 test), 1-D CNN of the MNIST-1D paper with "
    "BatchNorm (5.4k params), 40 epochs of batch 128 (32 steps), val and test evaluated every "
    "epoch under the reported weights (BN recalibrated on all training data); ~6 s/run on 1 CPU"
)
_MLP_BUDGET = (
    "MNIST-1D (4000 train / 2000 val / 10000 test), MLP 40-100-100-10 of the MNIST-1D paper "
    "(15k params, no BatchNorm), 60 epochs of batch 128 (32 steps); ~2 s/run on 1 CPU"
)

TASKS: dict[str, Task] = {
    "mnist1d-cnn": Task(
        name="mnist1d-cnn", description=_CNN_BUDGET, data=load_mnist1d, model="mnist1d-cnn",
        batch_size=128, epochs=40, model_kwargs={"channels": 25, "batchnorm": True},
    ),
    "mnist1d-mlp": Task(
        name="mnist1d-mlp", description=_MLP_BUDGET, data=load_mnist1d, model="mnist1d-mlp",
        batch_size=128, epochs=60, model_kwargs={"hidden": 100},
    ),
}

DEFAULT_TASK = "mnist1d-cnn"


def get_task(name: str) -> Task:
    """The registered task ``name``; ``ValueError`` listing the valid names otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"Unknown task: {name!r} (allowed: {', '.join(TASKS)})") from None


def describe() -> list[tuple[str, str]]:
    """(name, one-line description) for every registered task."""
    return [(name, task.description) for name, task in TASKS.items()]
