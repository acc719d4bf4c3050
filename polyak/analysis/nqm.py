"""Noisy quadratic model (NQM): exact expected-loss trajectories of SGD variants and averages.

Gadam paper (Granziol et al.) Sec. 4 eq. (4), Theorem 1 and the EMA analysis of its appendix;
the model is the NQM of Zhang et al. (2019). Loss ``L(x) = 1/2 sum_i h_i x_i^2`` (the minimum is
``x* = 0``), stochastic gradient ``g_i = h_i x_i + xi_i`` with ``xi`` independent across steps and
directions, zero mean, variance ``s_i = noise_i / batch_size``. Gadam's Theorem 1 takes the noise
isotropic, ``sigma^2/B`` (``noise="isotropic"``, our default); Zhang et al. take its covariance
equal to the Hessian, ``c*h_i/B`` (``noise="curvature"``). The paper gives no spectrum; the default
is Zhang et al.'s ``h_i = 1/i``.

No sampling: the directions are independent, and in each one the optimizer and its average form
a linear system driven by additive noise, ``z_{k+1} = F_k z_k + G_k xi_k`` with
``z = [x, (v), (a)]`` (iterate, heavy-ball buffer, average). Its mean and covariance follow
exactly: ``m <- F m``, ``P <- F P F^T + s G G^T``; a collection into the average
(``a <- (1-w) a + w x``) and a phase-end restart are linear maps ``C`` applied as ``m <- C m``,
``P <- C P C^T``. Then ``E L = 1/2 sum_i h_i (E[y_i]^2 + Var y_i)`` for the model in use ``y``.

Tail averaging needs the cross-covariances, which the joint covariance ``P`` carries. Written
out for SGD with ``r = 1 - lr*h`` (scalar direction; ``V`` variances, ``X = Cov(x, a)``)::

    step:     V_x <- r^2 V_x + lr^2 s,      X <- r X,         V_a unchanged
    collect:  V_a <- (1-w)^2 V_a + 2 w (1-w) X + w^2 V_x,      X <- (1-w) X + w V_x

with ``w = 1/n`` at the n-th collection: the noise of a step is independent of the past, so a
step only contracts the cross-covariance. Heavy ball (``v <- beta v + g; x <- x - lr v``, torch
convention) adds the buffer to ``z``: a 2x2 (3x3 with the average) moment recursion.
Preconditioning by ``H^-p`` scales each direction's gradient by ``h_i^-p``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from polyak.analysis.nqm_averages import EMA, Averaging, PhaseWise, Tail

__all__ = [
    "NoisyQuadratic", "EMA", "Tail", "PhaseWise", "expected_loss", "step_decay_lrs",
    "compare_methods",
]


def _positive_vector(name: str, value: np.ndarray | float, d: int) -> np.ndarray:
    arr = np.broadcast_to(np.asarray(value, dtype=np.float64), (d,)).copy()
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"Invalid {name}: {value!r} (finite values >= 0)")
    return arr


@dataclass(frozen=True)
class NoisyQuadratic:
    """``L(x) = 1/2 sum h_i x_i^2`` with gradient noise of variance ``noise_i/batch_size``."""

    h: np.ndarray
    noise: np.ndarray
    x0: np.ndarray
    batch_size: int = 1

    def __post_init__(self) -> None:
        h = np.asarray(self.h, dtype=np.float64)
        if h.ndim != 1 or h.size < 1 or not np.all(np.isfinite(h)) or np.any(h <= 0):
            raise ValueError(f"Invalid h: {self.h!r} (a non-empty vector of finite values > 0)")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) \
                or self.batch_size < 1:
            raise ValueError(f"Invalid batch_size: {self.batch_size!r} (an integer >= 1)")
        object.__setattr__(self, "h", h)
        object.__setattr__(self, "noise", _positive_vector("noise", self.noise, h.size))
        x0 = np.broadcast_to(np.asarray(self.x0, dtype=np.float64), h.shape).copy()
        if not np.all(np.isfinite(x0)):
            raise ValueError(f"Invalid x0: {self.x0!r} (finite values)")
        object.__setattr__(self, "x0", x0)

    @classmethod
    def power_law(cls, d: int = 100, *, exponent: float = 1.0, noise: str = "isotropic",
                  c: float = 1.0, batch_size: int = 1, x0: float = 1.0) -> NoisyQuadratic:
        """``h_i = i^-exponent`` (i = 1..d); noise variance ``c`` or ``c*h_i`` ("curvature")."""
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ValueError(f"Invalid d: {d!r} (an integer >= 1)")
        if not (np.isfinite(exponent) and exponent >= 0):
            raise ValueError(f"Invalid exponent: {exponent} (a finite number >= 0)")
        if noise not in ("isotropic", "curvature"):
            raise ValueError(f"Invalid noise: {noise!r} (allowed: 'isotropic', 'curvature')")
        h = np.arange(1, d + 1, dtype=np.float64) ** -exponent
        per_dim = np.full(d, float(c)) if noise == "isotropic" else c * h
        return cls(h, per_dim, np.full(d, float(x0)), batch_size)

    @property
    def s(self) -> np.ndarray:
        """Per-step gradient-noise variance ``noise / batch_size`` of each direction."""
        return self.noise / self.batch_size


def step_decay_lrs(lr: float, steps: int, milestones: Sequence[int] = (),
                   factor: float = 0.1) -> np.ndarray:
    """Per-step learning rates: ``lr``, multiplied by ``factor`` from each milestone step on."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"Invalid steps: {steps!r} (an integer >= 1)")
    lrs = np.full(steps, float(lr))
    for m in milestones:
        if not 0 <= m <= steps:
            raise ValueError(f"Invalid milestone: {m} (allowed: 0 <= milestone <= {steps})")
        lrs[m:] *= factor
    return lrs


def _dynamics(problem: NoisyQuadratic, lr: float, beta: float, p: float,
              n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-direction ``F`` (d, n, n) and ``G`` (d, n) of one optimizer step."""
    h = problem.h
    pre = h ** -p
    d = h.size
    F = np.zeros((d, n, n))
    G = np.zeros((d, n))
    if beta == 0.0:
        F[:, 0, 0] = 1.0 - lr * pre * h
        G[:, 0] = -lr * pre
    else:  # z = [x, v]: v' = beta v + pre (h x + xi); x' = x - lr v'
        F[:, 0, 0] = 1.0 - lr * pre * h
        F[:, 0, 1] = -lr * beta
        F[:, 1, 0] = pre * h
        F[:, 1, 1] = beta
        G[:, 0] = -lr * pre
        G[:, 1] = pre
    for j in range(1 + (beta != 0.0), n):  # the average is untouched by a step
        F[:, j, j] = 1.0
    return F, G


def _check_method(lrs: np.ndarray, beta: float, p: float) -> None:
    if lrs.ndim != 1 or lrs.size < 1 or not np.all(np.isfinite(lrs)) or np.any(lrs < 0):
        raise ValueError("Invalid lrs: need a non-empty 1-D sequence of finite values >= 0")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"Invalid beta: {beta} (allowed: 0 <= beta < 1)")
    if not (np.isfinite(p) and p >= 0):
        raise ValueError(f"Invalid p: {p} (a finite number >= 0)")


def _loss(h: np.ndarray, m: np.ndarray, P: np.ndarray, c: np.ndarray) -> float:
    mean = m @ c
    var = np.einsum("i,dij,j->d", c, P, c)
    return float(0.5 * np.sum(h * (mean ** 2 + var)))


def expected_loss(problem: NoisyQuadratic, lrs: Sequence[float] | np.ndarray, *,
                  beta: float = 0.0, p: float = 0.0,
                  averaging: Averaging | None = None) -> np.ndarray:
    """Exact ``E L`` of the model in use after each step: an array of ``len(lrs) + 1`` values.

    ``lrs`` are the per-step learning rates, ``beta`` heavy-ball momentum, ``p`` the power of the
    ``H^-p`` preconditioner. With ``averaging`` the model in use is the average once it exists
    (:class:`Tail`, :class:`EMA`), or the iterate restarted from the phase aggregates
    (:class:`PhaseWise`); before that, the iterate. Diverging runs give ``inf``.
    """
    lrs = np.asarray(lrs, dtype=np.float64)
    _check_method(lrs, beta, p)
    steps = lrs.size
    nb = 1 if beta == 0.0 else 2
    n = nb + (averaging is not None)
    ev = averaging.events(steps, nb) if averaging is not None else None
    m = np.zeros((problem.h.size, n))
    m[:, 0] = problem.x0
    if ev is not None and ev.a0_is_x0:
        m[:, n - 1] = problem.x0
    P = np.zeros((problem.h.size, n, n))
    s = problem.s
    out = np.empty(steps + 1)
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(steps + 1):
            if k > 0:
                F, G = _dynamics(problem, lrs[k - 1], beta, p, n)
                m = np.einsum("dij,dj->di", F, m)
                P = F @ P @ F.transpose(0, 2, 1) + s[:, None, None] * G[:, :, None] * G[:, None, :]
            if ev is not None:
                for C in ev.maps.get(k, ()):
                    m = m @ C.T
                    P = C @ P @ C.T
            c = np.zeros(n)
            if ev is None or np.isnan(ev.read_scale[k]):
                c[0] = 1.0
            else:
                c[n - 1] = ev.read_scale[k]
            out[k] = _loss(problem.h, m, P, c)
    out[~np.isfinite(out)] = np.inf
    return out


def compare_methods(problem: NoisyQuadratic, *, lr: float = 0.5, epochs: int = 160,
                    steps_per_epoch: int = 10, beta: float = 0.9, p: float = 0.5,
                    ema_decay: float = 0.9) -> dict[str, np.ndarray]:
    """Expected loss per step of averaging against learning-rate decay on one problem.

    All runs last ``epochs * steps_per_epoch`` steps; averages collect once per epoch. The
    schedule of the step-decay runs is the phase-wise paper's 80/40/40 split scaled to
    ``epochs`` (lr, lr/10, lr/100); the averaging runs keep ``lr`` constant, except phase-wise
    aggregation, whose phases share the decay's learning rates. Momentum runs with
    ``lr*(1-beta)``, the same step under a constant gradient as SGD at ``lr``.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 4:
        raise ValueError(f"Invalid epochs: {epochs!r} (an integer >= 4)")
    if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) \
            or steps_per_epoch < 1:
        raise ValueError(f"Invalid steps_per_epoch: {steps_per_epoch!r} (an integer >= 1)")
    if not (np.isfinite(lr) and lr > 0):
        raise ValueError(f"Invalid lr: {lr} (a finite number > 0)")
    K = steps_per_epoch
    T1, T2 = epochs // 2, (3 * epochs) // 4
    phases = (T1, T2 - T1, epochs - T2)
    steps = epochs * K
    constant = np.full(steps, float(lr))
    decay = step_decay_lrs(lr, steps, (T1 * K, T2 * K))
    return {
        "sgd": expected_loss(problem, constant),
        "momentum": expected_loss(problem, constant * (1 - beta), beta=beta),
        f"preconditioned (p={p:g})": expected_loss(problem, constant, p=p),
        "step decay": expected_loss(problem, decay),
        "tail average": expected_loss(problem, constant, averaging=Tail(T1 * K, every=K)),
        f"ema ({ema_decay:g}/epoch)": expected_loss(
            problem, constant, averaging=EMA(ema_decay, every=K)),
        "phase-wise": expected_loss(problem, decay, averaging=PhaseWise(phases, every=K)),
    }
