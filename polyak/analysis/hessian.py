"""Curvature of a training loss: the largest Hessian eigenvalue and the Hessian trace.

Vanilla SGD with larger learning rates (SGDL, docs/methods.md section 7): gradient descent on a
quadratic with Hessian ``H`` converges iff ``lr < 2/lambda_max(H)``; heavy ball with momentum
``beta`` (``v <- beta*v + g; w <- w - lr*v``) iff ``lr < 2(1+beta)/lambda_max``. Near a minimum
these bounds tell how large a constant learning rate a network tolerates.
Why parameter averaging helps (Nitanda et al.): SGD minimises a smoothed objective
``F = f + eta^2/2 Tr(H E[eps eps^T])``; the Hessian trace is the curvature it penalises.

Both quantities use exact Hessian-vector products (double backward: ``autograd.grad`` with
``create_graph=True``, then the gradient of ``g . v``) of the full-batch loss, defined as the mean
of ``loss_fn(model(x), y)`` over the given batches (equal weight per batch). The model keeps its
train/eval mode (BatchNorm in train mode uses batch statistics, as in training); its buffers,
BatchNorm running statistics included, are restored bit for bit afterwards. Dropout layers are
switched to eval mode during the computation: a random operator has no eigenvalues.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from polyak.analysis._weights import as_reiterable, preserved, split_batch

__all__ = ["TopEigenvalue", "TraceEstimate", "hvp", "top_hessian_eigenvalue", "hessian_trace"]

LossFn = Callable[[Any, Any], torch.Tensor]
Vector = list[torch.Tensor]


@dataclass(frozen=True)
class TopEigenvalue:
    """Largest Hessian eigenvalue by power iteration, and the learning-rate bounds it implies."""

    lambda_max: float
    iterations: int
    converged: bool
    residual: float  # ||H v - lambda_max v|| for the returned unit vector v

    @property
    def gd_bound(self) -> float:
        """``2/lambda_max``: gradient descent on the local quadratic is stable below this lr."""
        return 2.0 / self.lambda_max if self.lambda_max > 0 else math.inf

    def heavy_ball_bound(self, beta: float) -> float:
        """``2(1+beta)/lambda_max``: the stable lr range of heavy-ball momentum ``beta``."""
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta: {beta} (allowed: 0 <= beta < 1)")
        return 2.0 * (1.0 + beta) / self.lambda_max if self.lambda_max > 0 else math.inf


@dataclass(frozen=True)
class TraceEstimate:
    """Hutchinson estimate of ``Tr(H)`` with its standard error over ``n_samples`` probes."""

    trace: float
    stderr: float
    n_samples: int


def _params(model: nn.Module) -> list[nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("Invalid model: it has no parameter that requires grad")
    return params


def _dot(a: Vector, b: Vector) -> float:
    return float(sum((x * y).sum() for x, y in zip(a, b)))


def _norm(a: Vector) -> float:
    return math.sqrt(_dot(a, a))


def _hvp_batches(model: nn.Module, loss_fn: LossFn, batches: Iterable[Any],
                 params: list[nn.Parameter], vector: Vector) -> Vector:
    total = [torch.zeros_like(p) for p in params]
    count = 0
    for batch in batches:
        inputs, target = split_batch(batch)
        loss = loss_fn(model(inputs), target)
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        dot = sum((g * v).sum() for g, v in zip(grads, vector) if g is not None)
        if isinstance(dot, torch.Tensor) and dot.requires_grad:
            hv = torch.autograd.grad(dot, params, allow_unused=True)
            for t, h in zip(total, hv):
                if h is not None:
                    t.add_(h)
        count += 1
    if count == 0:
        raise ValueError("Invalid batches: empty (need at least one batch)")
    return [t.div_(count) for t in total]


class _Operator:
    """``v -> H v`` of the full-batch loss, with dropout off and buffers restored by the caller."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, batches: Iterable[Any]) -> None:
        self.model, self.loss_fn = model, loss_fn
        self.batches = as_reiterable(batches)
        self.params = _params(model)

    def __call__(self, vector: Vector) -> Vector:
        return _hvp_batches(self.model, self.loss_fn, self.batches, self.params, vector)


def _dropout_off(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.eval()


def hvp(model: nn.Module, loss_fn: LossFn, batches: Iterable[Any], vector: Vector) -> Vector:
    """Hessian-vector product ``H v`` of the mean loss over ``batches`` (buffers restored)."""
    with preserved(model, params=False):
        _dropout_off(model)
        return _Operator(model, loss_fn, batches)(list(vector))


def _power_iteration(op: Callable[[Vector], Vector], v: Vector, shift: float, tol: float,
                     max_iter: int) -> tuple[float, int, bool, float]:
    """Dominant eigenvalue of ``op + shift*I`` from the unit vector ``v``."""
    lam_prev, lam, residual = None, 0.0, math.inf
    for it in range(1, max_iter + 1):
        w = op(v)
        if shift:
            w = [wi + shift * vi for wi, vi in zip(w, v)]
        lam = _dot(v, w)
        residual = _norm([wi - lam * vi for wi, vi in zip(w, v)])
        norm_w = _norm(w)
        if norm_w == 0.0:
            return 0.0, it, True, 0.0
        if lam_prev is not None and abs(lam - lam_prev) <= tol * max(abs(lam), 1e-30):
            return lam, it, True, residual
        v = [wi / norm_w for wi in w]
        lam_prev = lam
    return lam, max_iter, False, residual


def _check(tol: float, max_iter: int) -> None:
    if not (math.isfinite(tol) and tol > 0):
        raise ValueError(f"Invalid tol: {tol} (a finite number > 0)")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"Invalid max_iter: {max_iter!r} (an integer >= 1)")


def _random_unit(params: list[nn.Parameter], seed: int) -> Vector:
    gen = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for p in params]
    n = _norm(v)
    return [x / n for x in v]


def top_hessian_eigenvalue(model: nn.Module, loss_fn: LossFn, batches: Iterable[Any], *,
                           tol: float = 1e-4, max_iter: int = 100, seed: int = 0) -> TopEigenvalue:
    """Largest eigenvalue of the Hessian of the mean loss over ``batches``, by power iteration.

    Power iteration finds the eigenvalue of largest magnitude. When that one is negative
    (a saddle), the iteration is rerun on ``H + |lambda| I``, whose dominant eigenvalue is
    ``lambda_max + |lambda|``. Convergence: relative change of the Rayleigh quotient <= ``tol``.
    """
    _check(tol, max_iter)
    with preserved(model, params=False):
        _dropout_off(model)
        op = _Operator(model, loss_fn, batches)
        v0 = _random_unit(op.params, seed)
        lam, iters, converged, residual = _power_iteration(op, v0, 0.0, tol, max_iter)
        if lam < 0:
            shift = -lam
            mu, more, converged, residual = _power_iteration(op, v0, shift, tol, max_iter)
            lam, iters = mu - shift, iters + more
    return TopEigenvalue(float(lam), iters, converged, float(residual))


def hessian_trace(model: nn.Module, loss_fn: LossFn, batches: Iterable[Any], *,
                  n_samples: int = 100, seed: int = 0) -> TraceEstimate:
    """Hutchinson's estimate ``mean_k z_k^T H z_k`` (Rademacher ``z``) of the Hessian trace."""
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 2:
        raise ValueError(f"Invalid n_samples: {n_samples!r} (an integer >= 2)")
    gen = torch.Generator().manual_seed(seed)
    values = []
    with preserved(model, params=False):
        _dropout_off(model)
        op = _Operator(model, loss_fn, batches)
        for _ in range(n_samples):
            z = [(torch.randint(0, 2, p.shape, generator=gen) * 2 - 1).to(p.device, p.dtype)
                 for p in op.params]
            values.append(_dot(z, op(z)))
    samples = torch.tensor(values, dtype=torch.float64)
    stderr = float(samples.std(unbiased=True)) / math.sqrt(n_samples)
    return TraceEstimate(float(samples.mean()), stderr, n_samples)
