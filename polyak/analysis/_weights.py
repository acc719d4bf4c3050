"""Shared helpers of the analysis tools: weight lists, snapshots and BatchNorm recalibration.

Weights are handled as lists of tensors in the order of ``model.named_parameters()``; a state
dict of parameters (name -> tensor) is accepted wherever weights are. BatchNorm statistics are
recalibrated as in ``torch.optim.swa_utils.update_bn``: running statistics reset, then one pass
over the data with a cumulative average (``momentum=None``, equal weight per batch).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

Weights = Sequence[torch.Tensor] | Mapping[str, torch.Tensor]


def as_weight_list(model: nn.Module, weights: Weights) -> list[torch.Tensor]:
    """``weights`` as a list aligned with ``model.named_parameters()``, shapes checked."""
    named = list(model.named_parameters())
    if isinstance(weights, Mapping):
        missing = [name for name, _ in named if name not in weights]
        if missing:
            raise ValueError(f"Invalid weights: no entry for parameter(s) {missing[:3]}")
        tensors = [weights[name] for name, _ in named]
    else:
        tensors = list(weights)
        if len(tensors) != len(named):
            raise ValueError(
                f"Invalid weights: {len(tensors)} tensors for a model with {len(named)} parameters"
            )
    for (name, p), w in zip(named, tensors):
        if tuple(w.shape) != tuple(p.shape):
            raise ValueError(
                f"Invalid weights: {name} has shape {tuple(w.shape)}, the model {tuple(p.shape)}"
            )
    return tensors


def weights_of(model: nn.Module) -> list[torch.Tensor]:
    """A detached copy of the model's parameters, in ``named_parameters()`` order."""
    return [p.detach().clone() for p in model.parameters()]


@torch.no_grad()
def load_weights(model: nn.Module, weights: Sequence[torch.Tensor]) -> None:
    """Copy ``weights`` (aligned with ``model.parameters()``) into the model in place."""
    for p, w in zip(model.parameters(), weights):
        p.copy_(w)


@contextmanager
def preserved(model: nn.Module, params: bool = True) -> Iterator[None]:
    """Restore buffers (BatchNorm statistics), train/eval flags and, with ``params``, the
    parameters bit for bit on exit."""
    saved_params = weights_of(model) if params else None
    buffers = [b.detach().clone() for b in model.buffers()]
    modes = [m.training for m in model.modules()]
    try:
        yield
    finally:
        with torch.no_grad():
            if saved_params is not None:
                load_weights(model, saved_params)
            for b, saved in zip(model.buffers(), buffers):
                b.copy_(saved)
        for m, mode in zip(model.modules(), modes):
            m.training = mode


def as_reiterable(batches: Iterable[Any]) -> Iterable[Any]:
    """A one-shot iterator is materialised into a list; lists and DataLoaders are kept as is."""
    if iter(batches) is batches:
        batches = list(batches)
    return batches


def split_batch(batch: Any) -> tuple[Any, Any]:
    """``(inputs, target)`` of a batch given as a pair, or ``(inputs, None)`` for inputs alone."""
    if isinstance(batch, (tuple, list)):
        if len(batch) < 1:
            raise ValueError("Invalid batch: an empty tuple")
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None


def _bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [
        m for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader: Iterable[Any]) -> None:
    """Recompute BatchNorm running statistics by one cumulative-average pass over ``loader``.

    Same rule as ``torch.optim.swa_utils.update_bn``: each layer's running mean/var is reset and
    then averaged with equal weight per batch. The model's train/eval flags and the layers'
    ``momentum`` are restored afterwards. A model without BatchNorm is left untouched.
    """
    layers = _bn_layers(model)
    if not layers:
        return
    momenta = [m.momentum for m in layers]
    modes = [m.training for m in model.modules()]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        for batch in loader:
            inputs, _ = split_batch(batch)
            model(inputs)
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        for m, mode in zip(model.modules(), modes):
            m.training = mode
