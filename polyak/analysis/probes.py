"""Loss-surface probes along the optimization path.

Phase-wise parameter aggregation (Kobayashi), Sec. 2.1.1: Figure 2 measures training/test loss on
the segments ``(1-alpha) theta_a + alpha theta_b`` between iterates of one phase (a concave
"error plateau" late in the phase), Figure 3 the loss of the two-point average
``(theta_T + theta_{T-k})/2`` against the interval ``k``. With BatchNorm, each probed point gets
its own statistics: one cumulative-average forward pass over ``bn_loader`` (as after averaging in
the paper, and as ``torch.optim.swa_utils.update_bn``).

Evaluation is in eval mode without gradients; the loss is the example-weighted mean of
``loss_fn(model(x), y)`` (``loss_fn`` returning the batch mean), the accuracy the fraction of
``argmax`` hits (``nan`` when outputs are not class scores). The model's parameters, buffers and
train/eval flags are restored bit for bit afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from polyak.analysis._weights import (
    Weights,
    as_reiterable,
    as_weight_list,
    load_weights,
    preserved,
    recalibrate_bn,
    split_batch,
)

__all__ = ["Probe", "evaluate", "segment_losses", "two_point_average_losses"]

LossFn = Callable[[Any, Any], torch.Tensor]


@dataclass(frozen=True)
class Probe:
    """Loss and accuracy at a sequence of probed points (``x``: alpha or interval k)."""

    x: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray


def _accuracy_hits(output: Any, target: Any) -> float | None:
    if not (isinstance(output, torch.Tensor) and isinstance(target, torch.Tensor)):
        return None
    if output.dim() != 2 or target.dim() != 1 or target.dtype.is_floating_point:
        return None
    return float((output.argmax(dim=1) == target).sum())


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn: LossFn, batches: Iterable[Any]) -> tuple[float, float]:
    """``(mean loss, accuracy)`` of the model as it is, in eval mode (mode restored)."""
    modes = [m.training for m in model.modules()]
    model.eval()
    total, hits, count, classify = 0.0, 0.0, 0, True
    try:
        for batch in batches:
            inputs, target = split_batch(batch)
            output = model(inputs)
            n = len(target) if target is not None else len(inputs)
            total += float(loss_fn(output, target)) * n
            h = _accuracy_hits(output, target)
            classify = classify and h is not None
            hits += h or 0.0
            count += n
    finally:
        for m, mode in zip(model.modules(), modes):
            m.training = mode
    if count == 0:
        raise ValueError("Invalid batches: empty (need at least one batch)")
    return total / count, (hits / count if classify else float("nan"))


def _probe_points(model: nn.Module, points: Iterable[list[torch.Tensor]], loss_fn: LossFn,
                  batches: Iterable[Any], bn_loader: Iterable[Any] | None) -> tuple[list, list]:
    losses, accs = [], []
    batches = as_reiterable(batches)
    with preserved(model):
        for weights in points:
            load_weights(model, weights)
            if bn_loader is not None:
                recalibrate_bn(model, bn_loader)
            loss, acc = evaluate(model, loss_fn, batches)
            losses.append(loss)
            accs.append(acc)
    return losses, accs


def _lerp(w_a: list[torch.Tensor], w_b: list[torch.Tensor], alpha: float) -> list[torch.Tensor]:
    return [(1 - alpha) * a + alpha * b for a, b in zip(w_a, w_b)]


def segment_losses(model: nn.Module, w_a: Weights, w_b: Weights, loss_fn: LossFn,
                   batches: Iterable[Any], alphas: Sequence[float] | np.ndarray,
                   bn_loader: Iterable[Any] | None = None) -> Probe:
    """Loss and accuracy at ``(1-alpha) w_a + alpha w_b`` for each alpha (PWA Figure 2).

    ``w_a``/``w_b`` are parameter lists (``model.parameters()`` order) or state dicts of the
    parameters. ``bn_loader`` given: BatchNorm statistics recomputed at every point.
    """
    alphas = np.asarray(alphas, dtype=np.float64)
    if alphas.ndim != 1 or alphas.size < 1 or not np.all(np.isfinite(alphas)):
        raise ValueError(f"Invalid alphas: {alphas!r} (a non-empty sequence of finite numbers)")
    a, b = as_weight_list(model, w_a), as_weight_list(model, w_b)
    bn_loader = as_reiterable(bn_loader) if bn_loader is not None else None
    points = (_lerp(a, b, float(alpha)) for alpha in alphas)
    losses, accs = _probe_points(model, points, loss_fn, batches, bn_loader)
    return Probe(alphas, np.array(losses), np.array(accs))


def two_point_average_losses(model: nn.Module, iterates: Sequence[Weights], loss_fn: LossFn,
                             batches: Iterable[Any], ks: Sequence[int],
                             bn_loader: Iterable[Any] | None = None) -> Probe:
    """Loss and accuracy of ``(theta_T + theta_{T-k})/2`` for each interval k (PWA Figure 3).

    ``iterates`` are ``theta_0 .. theta_T`` in training order (the last one is ``theta_T``);
    ``k = 0`` gives ``theta_T`` itself.
    """
    T = len(iterates) - 1
    if T < 0:
        raise ValueError("Invalid iterates: empty (need at least one)")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= T:
            raise ValueError(f"Invalid k: {k!r} (an integer with 0 <= k <= {T})")
    last = as_weight_list(model, iterates[T])
    bn_loader = as_reiterable(bn_loader) if bn_loader is not None else None
    points = (_lerp(last, as_weight_list(model, iterates[T - k]), 0.5) for k in ks)
    losses, accs = _probe_points(model, points, loss_fn, batches, bn_loader)
    return Probe(np.asarray(ks, dtype=np.int64), np.array(losses), np.array(accs))
