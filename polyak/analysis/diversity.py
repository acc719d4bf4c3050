"""Solution diversity of saved iterates (Gadam paper, Sec. 3 and Figure 4).

Granziol et al. measure how different the iterates entering an average are by the divergence of
their predictive distributions (softmax outputs) on a dataset, averaged over all pairs:

- symmetrised KL, the paper's ``D = 1/2 sum_c (p log(p/q) + q log(q/p))`` per example
  (= ``1/2 sum_c (p - q)(log p - log q)``), averaged over examples;
- total variation, ``1/2 sum_c |p - q|`` per example, averaged over examples. (The paper writes
  ``||p - q||^2``; we use the standard total-variation distance and say so.)

Identical models give 0. Logits are turned into probabilities with ``log_softmax`` (stable).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import torch
from torch import nn

from polyak.analysis._weights import (
    Weights,
    as_reiterable,
    as_weight_list,
    load_weights,
    preserved,
    split_batch,
)

__all__ = ["Diversity", "symmetric_kl", "total_variation", "diversity"]


@dataclass(frozen=True)
class Diversity:
    """Mean pairwise symmetrised KL and total variation over ``pairs`` pairs of iterates."""

    symmetric_kl: float
    total_variation: float
    pairs: int


def symmetric_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``1/2 sum_c (p - q)(log p - log q)`` over the last dimension, from log-probabilities."""
    return 0.5 * ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(dim=-1)


def total_variation(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``1/2 sum_c |p - q|`` over the last dimension, from probabilities."""
    return 0.5 * (p - q).abs().sum(dim=-1)


@torch.no_grad()
def _log_probs(model: nn.Module, batches: Iterable[Any]) -> torch.Tensor:
    model.eval()
    outs = [torch.log_softmax(model(split_batch(b)[0]).double(), dim=-1) for b in batches]
    if not outs:
        raise ValueError("Invalid batches: empty (need at least one batch)")
    return torch.cat(outs)


Iterate = nn.Module | Weights


def diversity(models_or_weights: Sequence[Iterate], model: nn.Module | None,
              batches: Iterable[Any]) -> Diversity:
    """Mean pairwise symmetrised KL and total variation between the iterates' softmax outputs.

    Each entry is a module, or weights (parameter list or state dict of parameters) loaded into
    ``model`` (whose parameters, buffers and modes are restored afterwards). Outputs in eval mode.
    """
    if len(models_or_weights) < 2:
        raise ValueError(f"Invalid iterates: {len(models_or_weights)} given (need at least 2)")
    batches = as_reiterable(batches)
    logs = []
    for item in models_or_weights:
        if isinstance(item, nn.Module):
            with preserved(item, params=False):
                logs.append(_log_probs(item, batches))
            continue
        if model is None:
            raise ValueError("Invalid model: None, but weights were given (pass the module)")
        with preserved(model):
            load_weights(model, as_weight_list(model, item))
            logs.append(_log_probs(model, batches))
    kl, tv = 0.0, 0.0
    pairs = list(combinations(range(len(logs)), 2))
    for i, j in pairs:
        kl += float(symmetric_kl(logs[i], logs[j]).mean())
        tv += float(total_variation(logs[i].exp(), logs[j].exp()).mean())
    return Diversity(kl / len(pairs), tv / len(pairs), len(pairs))
