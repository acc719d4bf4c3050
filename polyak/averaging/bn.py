"""BatchNorm statistics for averaged weights.

Izmailov et al. (SWA, Sec. 3.2) and Kobayashi (phase-wise aggregation, Sec. 2.1, after eq. 3):
the running statistics of an average of weights are not the average of the statistics; they are
recomputed by a forward pass over training data. As ``torch.optim.swa_utils.update_bn`` does,
each BatchNorm's statistics are reset and its ``momentum`` set to ``None``, so the running
estimates become the cumulative average over the batches (every batch weighs the same).

Stale statistics are a silent error (torch's ``update_bn`` docs insist on the pass): where
weights other than the live ones are written or swapped in (PWA's phase end, ``applied()``,
``Method.eval_weights()``) without a ``bn_loader`` on a model with BatchNorm running statistics,
a :class:`StaleBatchNormWarning` says so, once per object. To keep the live weights' statistics
on purpose, pass ``bn_loader=KEEP_BN_STATS``: an explicit value, unlike ``None`` (not given).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from polyak.distributed import is_distributed

__all__ = ["recalibrate_bn", "saved_bn_buffers", "default_forward", "bn_modules",
           "KEEP_BN_STATS", "StaleBatchNormWarning", "bn_loader_for"]

Forward = Callable[[nn.Module, Any], Any]


class _KeepBNStats:
    """The type of :data:`KEEP_BN_STATS` (one instance)."""

    def __repr__(self) -> str:
        return "polyak.averaging.KEEP_BN_STATS"

    def __reduce__(self) -> str:
        return "KEEP_BN_STATS"   # pickles (e.g. into a worker process) as the same object


#: ``bn_loader=KEEP_BN_STATS``: keep the BatchNorm statistics the model has (the live weights'),
#: on purpose: nothing is recalibrated and nothing is warned.
KEEP_BN_STATS = _KeepBNStats()


class StaleBatchNormWarning(UserWarning):
    """Weights other than the live ones met BatchNorm statistics computed for the live ones."""


def bn_modules(model: nn.Module) -> list[_BatchNorm]:
    """Every BatchNorm (1d/2d/3d, Sync, Lazy) inside ``model``."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def bn_loader_for(owner: object, model: nn.Module, bn_loader: Any, what: str,
                  stale: bool = True) -> Iterable[Any] | None:
    """The loader to recalibrate ``model``'s BatchNorm on (``None``: do not).

    ``bn_loader`` as given, ``None`` for :data:`KEEP_BN_STATS`. When ``stale`` (``what``, e.g.
    "PhaseWise wrote the phase's aggregate into the model", put other weights in) and no loader
    was given on a model with BatchNorm running statistics, a :class:`StaleBatchNormWarning`
    says so, once per ``owner``."""
    if bn_loader is KEEP_BN_STATS:
        return None
    if bn_loader is None and stale and not getattr(owner, "_stale_bn_warned", False) \
            and any(m.track_running_stats for m in bn_modules(model)):
        owner._stale_bn_warned = True  # type: ignore[attr-defined]
        warnings.warn(
            f"{what} without bn_loader on a model with BatchNorm: its running statistics are "
            "the live weights', stale for these weights (recompute them, as torch's "
            "update_bn docs insist). Pass bn_loader=<training batches> to recalibrate them, or "
            "bn_loader=polyak.averaging.KEEP_BN_STATS to keep them on purpose (warned once "
            f"per {type(owner).__name__})", StaleBatchNormWarning, stacklevel=4)
    return bn_loader


def default_forward(model: nn.Module, batch: Any) -> Any:
    """``model(batch)`` for a tensor, ``model(batch[0])`` for a tuple or list (inputs, targets)."""
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return model(batch[0])
    raise TypeError(
        f"Cannot feed a batch of type {type(batch).__name__} to the model: pass "
        "forward=lambda model, batch: ... to say how"
    )


def _to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor inside ``batch`` (tensors, tuples, lists, dicts) to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _model_device(model: nn.Module) -> torch.device | None:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return None


@contextlib.contextmanager
def saved_bn_buffers(model: nn.Module) -> Iterator[nn.Module]:
    """Restore every BatchNorm buffer (running_mean, running_var, num_batches_tracked) on exit.

    The buffers are copied back bit for bit, also when the block raises.
    """
    saved = [
        (buf, buf.detach().clone())
        for m in bn_modules(model) for buf in m.buffers(recurse=False)
    ]
    try:
        yield model
    finally:
        with torch.no_grad():
            for buf, copy in saved:
                buf.copy_(copy)


def _check_max_batches(max_batches: int | None) -> None:
    if max_batches is None:
        return
    if isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1:
        raise ValueError(f"Invalid max_batches: {max_batches!r} (None or an integer >= 1)")


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module, loader: Iterable[Any], forward: Forward | None = None,
    max_batches: int | None = None,
) -> None:
    """Recompute every BatchNorm's running statistics in one pass over ``loader``.

    Equal weight per batch (``momentum=None``, cumulative average), forward passes in train mode
    under ``torch.no_grad()``; the result equals ``torch.optim.swa_utils.update_bn``. Batches are
    moved to the model's device and fed through ``forward(model, batch)`` (default:
    :func:`default_forward`); at most ``max_batches`` of them when given. Afterwards each
    BatchNorm's momentum and the train/eval mode of every submodule are what they were, also when
    a forward pass raises. Without BatchNorm this is a no-op that does not touch the loader.

    Under ``torch.distributed`` (more than one rank) each rank passes its own share of the data
    and the statistics are those of the union of every rank's inputs, from all-reduced sums of
    ``x``, ``x^2`` and the counts (:mod:`polyak.averaging._bn_ranks`), the same on every rank.
    """
    _check_max_batches(max_batches)
    bns = bn_modules(model)
    if not bns or loader is KEEP_BN_STATS:
        return
    forward = default_forward if forward is None else forward
    device = _model_device(model)
    momenta = [m.momentum for m in bns]
    modes = [(m, m.training) for m in model.modules()]
    pooled = None
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        if is_distributed():
            from polyak.averaging._bn_ranks import RankMoments

            pooled = RankMoments(bns)
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            forward(model, batch if device is None else _to_device(batch, device))
        if pooled is not None:
            pooled.finish()
    finally:
        if pooled is not None:
            pooled.remove()
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        for m, training in modes:
            m.training = training
