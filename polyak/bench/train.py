"""The training loop of one benchmark run: a pure function of (task, method spec, seed, epochs).

Each epoch:
1. shuffle the training set with a ``torch.Generator`` seeded from the run seed and take every
   batch once (the last one may be smaller), calling ``method.step(closure)``; train loss and
   accuracy are the means over the epoch's clean forward passes (the first call of the closure
   in each step, so SAM's perturbed pass is not counted);
2. evaluate the live weights on the validation set (the feedback recipes such as gadam-auto or a
   TSO-ALRA plateau switch read) and call ``method.end_epoch(epoch, val_loss, val_acc, bn_loader)``;
3. evaluate validation and test loss (NLL) and accuracy of the weights the method reports, under
   ``method.eval_weights(bn_loader=...)`` (BatchNorm recalibrated on the whole training set);
4. record train/val/test metrics, the epoch's learning rate and the cumulative wall time.

A non-finite loss ends the run as "diverged" with the epochs recorded so far. The seed sets
torch's, numpy's and Python's global RNGs (the model's initial weights come from it) and the
batch-order generator; with one thread the run is reproducible bit for bit across processes.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import polyak
from polyak.bench.models import get_model
from polyak.bench.tasks import Task

__all__ = ["Batches", "RunResult", "train_run", "build_method", "resolve_overrides",
           "evaluate"]

_LR_IN_SPEC = re.compile(r"(?:^|[:,])\s*lr\s*=")


class Batches:
    """A re-iterable over ``(x, y)`` batches in a fixed order (the ``bn_loader`` of a run)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, len(self.x), self.batch_size):
            yield self.x[i:i + self.batch_size], self.y[i:i + self.batch_size]


@dataclass
class RunResult:
    """What a run produced: ``status`` is "complete" or "diverged"; one dict per epoch."""

    status: str
    records: list[dict[str, float]] = field(default_factory=list)
    error: str | None = None
    wall_time: float = 0.0


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def resolve_overrides(task: Task, spec: str) -> dict[str, Any]:
    """Keyword overrides for ``polyak.recipe``: the task's tuned ``lr`` unless the spec sets one."""
    if _LR_IN_SPEC.search(spec):
        return {}
    name = spec.split(":", 1)[0].strip()
    lrs = task.tuned_lrs()
    return {"lr": lrs[name]} if name in lrs else {}


def build_method(task: Task, spec: str, model: nn.Module, epochs: int, steps_per_epoch: int
                 ) -> Any:
    """``polyak.recipe(spec, model, ...)`` with the task's tuned learning rate applied."""
    return polyak.recipe(spec, model, epochs=epochs, steps_per_epoch=steps_per_epoch,
                         **resolve_overrides(task, spec))


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int
             ) -> tuple[float, float]:
    """Mean NLL and accuracy of ``model`` (in eval mode) on ``(x, y)``."""
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, len(x), batch_size):
        out = model(x[i:i + batch_size])
        target = y[i:i + batch_size]
        loss_sum += F.cross_entropy(out, target, reduction="sum").item()
        correct += int((out.argmax(1) == target).sum())
    model.train(was_training)
    return loss_sum / len(x), correct / len(x)


def _train_epoch(method: Any, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 batch_size: int, generator: torch.Generator) -> tuple[float, float]:
    model.train()
    order = torch.randperm(len(x), generator=generator)
    loss_sum = torch.zeros(())
    correct = torch.zeros((), dtype=torch.long)
    for i in range(0, len(x), batch_size):
        idx = order[i:i + batch_size]
        xb, yb = x[idx], y[idx]
        first = [True]

        def closure(xb: torch.Tensor = xb, yb: torch.Tensor = yb, first: list = first
                    ) -> torch.Tensor:
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            if first[0]:
                first[0] = False
                loss_sum.add_(loss.detach() * len(yb))
                correct.add_((out.detach().argmax(1) == yb).sum())
            return loss

        method.step(closure)
    return loss_sum.item() / len(x), correct.item() / len(x)


def train_run(task: Task, spec: str, seed: int, epochs: int | None = None,
              on_epoch: Callable[[dict[str, float]], None] | None = None) -> RunResult:
    """Train ``spec`` on ``task`` from ``seed`` for ``epochs`` (default: the task's budget)."""
    epochs = task.epochs if epochs is None else epochs
    start = time.perf_counter()
    splits = task.load()
    seed_everything(seed)
    model = get_model(task.model, **task.model_kwargs)
    steps = math.ceil(len(splits.x_train) / task.batch_size)
    method = build_method(task, spec, model, epochs, steps)
    generator = torch.Generator().manual_seed(seed)
    bn_loader = Batches(splits.x_train, splits.y_train, task.batch_size)
    result = RunResult(status="complete")
    for epoch in range(epochs):
        lr = float(method.lr)
        train_loss, train_acc = _train_epoch(method, model, splits.x_train, splits.y_train,
                                             task.batch_size, generator)
        live_val = evaluate(model, splits.x_val, splits.y_val, task.eval_batch_size)
        if not all(math.isfinite(v) for v in (train_loss, *live_val)):
            result.status, result.error = "diverged", f"non-finite loss in epoch {epoch}"
            break
        method.end_epoch(epoch, val_loss=live_val[0], val_acc=live_val[1], bn_loader=bn_loader)
        with method.eval_weights(bn_loader=bn_loader):
            val = evaluate(model, splits.x_val, splits.y_val, task.eval_batch_size)
            test = evaluate(model, splits.x_test, splits.y_test, task.eval_batch_size)
        record = dict(epoch=epoch, train_loss=train_loss, train_acc=train_acc, val_loss=val[0],
                      val_acc=val[1], test_loss=test[0], test_acc=test[1], lr=lr,
                      time=time.perf_counter() - start)
        result.records.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if not (math.isfinite(val[0]) and math.isfinite(test[0])):
            result.status = "diverged"
            result.error = f"non-finite loss of the reported weights in epoch {epoch}"
            break
        if method.should_stop:
            break
    result.wall_time = time.perf_counter() - start
    return result
