"""Incremental gradient descent (IGD) on regularized least squares, exactly.

Vanilla SGD with larger learning rates (SGDL), Sec. 5 eq. (8) and Appendix A.2 Example 3
(docs/methods.md section 7). The problem is ``f(x) = 1/2 ||Ax - b||^2 + mu/2 ||D^(1/2) x||^2`` with
rows ``a_i`` of ``A`` (N rows). One IGD epoch visits rows 1..N in order with the constant step
``t``, each step on ``f_i(x) = 1/2 (a_i^T x - b_i)^2 + mu/(2N) x^T D x``::

    x <- x - t * (a_i (a_i^T x - b_i) + mu/N * D x)

so an epoch is the affine map ``x <- K_N(t) x + t c(t)`` with (eq. 21)
``K_N(t) = M_N ... M_2 M_1``, ``M_i = I - t a_i a_i^T - t mu D/N`` (row 1 applied first) and
``c(t) = sum_j b_j M_N ... M_{j+1} a_j``. IGD converges iff ``rho(K_N(t)) < 1``; the paper's
"sufficient" condition (from the matrix AM-GM conjecture) is ``t < 2N / rho(mu D + A^T A)``, N
times the full-gradient bound ``2/lambda_max(mu D + A^T A)``. It is not sufficient in general:
the AM-GM step needs PSD factors, yet ``M_i`` has an eigenvalue below -1 once ``t`` passes about
``2/||a_i||^2``. The paper's own Example 1 (``f = sum x_i^2``: ``rho = |1 - 2t|``, converges iff
``t < 1``) has bound N. We therefore also measure the exact edge, the smallest ``t`` with
``rho(K_N(t)) = 1``. The fixed point of IGD is not the minimizer ``x*`` (the paper's Figure 2
plots ``||x - x*||``, which settles at a t-dependent level).

Everything is float64 numpy. ``D`` may be a matrix or a vector (its diagonal).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "LeastSquares", "random_least_squares", "sigmoid_least_squares", "igd_map",
    "igd_spectral_radius", "igd_sufficient_bound", "gd_bound", "igd_fixed_point", "run_igd",
    "igd_critical_step", "igd_curves",
]


@dataclass(frozen=True)
class LeastSquares:
    """``f(x) = 1/2 ||Ax - b||^2 + mu/2 x^T D x``: rows of ``A`` are the IGD components."""

    A: np.ndarray
    b: np.ndarray
    mu: float
    D: np.ndarray

    @property
    def hessian(self) -> np.ndarray:
        """``A^T A + mu D``."""
        return self.A.T @ self.A + self.mu * _as_matrix(self.D, self.A.shape[1])

    @property
    def x_star(self) -> np.ndarray:
        """The minimizer ``(A^T A + mu D)^(-1) A^T b``."""
        return np.linalg.solve(self.hessian, self.A.T @ self.b)


def _as_matrix(D: np.ndarray, n: int) -> np.ndarray:
    D = np.asarray(D, dtype=np.float64)
    if D.ndim == 1:
        D = np.diag(D)
    if D.shape != (n, n):
        raise ValueError(f"Invalid D: shape {D.shape} (allowed: ({n},) or ({n}, {n}))")
    return D


def _check_A(A: np.ndarray) -> np.ndarray:
    A = np.asarray(A, dtype=np.float64)
    if A.ndim != 2 or A.shape[0] < 1 or A.shape[1] < 1:
        raise ValueError(f"Invalid A: shape {A.shape} (a non-empty 2-D matrix, rows = components)")
    return A


def _check_positive(name: str, value: float) -> None:
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"Invalid {name}: {value} (a finite number > 0)")


def _check_size(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"Invalid {name}: {value!r} (an integer >= 1)")


def random_least_squares(rows: int, dim: int, mu: float = 0.1, *, seed: int = 0,
                         noise: float = 0.1) -> LeastSquares:
    """A Gaussian problem: ``A_ij ~ N(0, 1/dim)``, ``b = A x_true + noise*N(0,1)``, ``D = I``."""
    _check_size("rows", rows)
    _check_size("dim", dim)
    if not (np.isfinite(mu) and mu >= 0):
        raise ValueError(f"Invalid mu: {mu} (a finite number >= 0)")
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((rows, dim)) / np.sqrt(dim)
    b = A @ rng.standard_normal(dim) + noise * rng.standard_normal(rows)
    return LeastSquares(A, b, float(mu), np.ones(dim))


def sigmoid_least_squares(n: int, mu: float = 1.0, *, sigma: float = 0.05,
                          seed: int = 0) -> LeastSquares:
    """Smoothing of noisy sigmoid samples, the paper's Sec. 5 set-up as we read it.

    ``b = 1/(1+e^z) + N(0, sigma^2)`` with ``z ~ U(0, 10)`` sorted, ``A = I`` and ``D = L^T L``
    (``L`` first differences): the paper only names the data, the rest is our choice.
    """
    _check_size("n", n)
    rng = np.random.default_rng(seed)
    z = np.sort(rng.uniform(0.0, 10.0, n))
    b = 1.0 / (1.0 + np.exp(z)) + sigma * rng.standard_normal(n)
    L = np.diff(np.eye(n), axis=0)
    return LeastSquares(np.eye(n), b, float(mu), L.T @ L)


def igd_map(A: np.ndarray, mu: float, D: np.ndarray, t: float) -> np.ndarray:
    """The N-step IGD matrix ``K_N(t) = M_N ... M_1``, ``M_i = I - t a_i a_i^T - t mu D/N``."""
    A = _check_A(A)
    N, n = A.shape
    reg = (t * mu / N) * _as_matrix(D, n)
    K = np.eye(n)
    for a in A:
        K = K - t * np.outer(a, a @ K) - reg @ K
    return K


def igd_spectral_radius(A: np.ndarray, mu: float, D: np.ndarray, t: float) -> float:
    """``rho(K_N(t))``, the largest eigenvalue modulus of the epoch map (IGD converges iff < 1)."""
    return float(np.max(np.abs(np.linalg.eigvals(igd_map(A, mu, D, t)))))


def igd_sufficient_bound(A: np.ndarray, mu: float, D: np.ndarray) -> float:
    """The paper's step-size bound ``2N / rho(mu D + A^T A)`` (not sufficient in general).

    It rests on the matrix AM-GM conjecture and on the factors commuting; the paper's own
    Example 1 (``A = sqrt(2) I``, N rows) has bound N yet diverges for every ``t > 1``. Use
    :func:`igd_critical_step` for the exact edge.
    """
    A = _check_A(A)
    H = A.T @ A + mu * _as_matrix(D, A.shape[1])
    return 2.0 * A.shape[0] / float(np.max(np.abs(np.linalg.eigvalsh(H))))


def gd_bound(H: np.ndarray) -> float:
    """``2/lambda_max(H)``: gradient descent on ``1/2 x^T H x`` converges iff lr is below it."""
    H = np.asarray(H, dtype=np.float64)
    if H.ndim != 2 or H.shape[0] != H.shape[1]:
        raise ValueError(f"Invalid H: shape {H.shape} (a square matrix)")
    lam = float(np.max(np.linalg.eigvalsh((H + H.T) / 2)))
    return 2.0 / lam if lam > 0 else float("inf")


def igd_fixed_point(problem: LeastSquares, t: float) -> np.ndarray:
    """Where IGD with step ``t`` converges when ``rho(K_N(t)) < 1``: ``(I - K) x = t c(t)``."""
    zero = run_igd(problem, t, epochs=1, x0=np.zeros(problem.A.shape[1]), return_iterate=True)
    K = igd_map(problem.A, problem.mu, problem.D, t)
    return np.linalg.solve(np.eye(K.shape[0]) - K, zero)


def run_igd(problem: LeastSquares, t: float, epochs: int, *, x0: np.ndarray | None = None,
            return_iterate: bool = False) -> np.ndarray:
    """Run IGD for ``epochs`` epochs; ``||x_k - x*||`` for k = 0..epochs (or the last iterate).

    A diverging run stops early and its remaining errors are ``inf``.
    """
    _check_positive("t", t)
    _check_size("epochs", epochs)
    A, b, mu = problem.A, problem.b, problem.mu
    N, n = A.shape
    D = _as_matrix(problem.D, n)
    x = np.zeros(n) if x0 is None else np.array(x0, dtype=np.float64)
    x_star = problem.x_star
    errors = np.full(epochs + 1, np.inf)
    errors[0] = np.linalg.norm(x - x_star)
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(1, epochs + 1):
            for a, bi in zip(A, b):
                x = x - t * (a * (a @ x - bi) + (mu / N) * (D @ x))
            errors[k] = np.linalg.norm(x - x_star)
            if not np.isfinite(errors[k]) or errors[k] > 1e150:
                errors[k:] = np.inf
                break
    return x if return_iterate else errors


def igd_critical_step(A: np.ndarray, mu: float, D: np.ndarray, *, t_max: float | None = None,
                      grid: int = 200, tol: float = 1e-6) -> float:
    """The measured critical step: the smallest ``t`` with ``rho(K_N(t)) >= 1``.

    Scanned on ``grid`` points of ``(0, t_max]``, then refined by bisection to relative ``tol``
    (``t_max`` defaults to 4x the paper's bound); ``inf`` when the radius stays below 1.
    """
    _check_size("grid", grid)
    t_max = 4.0 * igd_sufficient_bound(A, mu, D) if t_max is None else t_max
    _check_positive("t_max", t_max)
    ts = np.linspace(t_max / grid, t_max, grid)
    lo = 0.0
    for t in ts:
        if igd_spectral_radius(A, mu, D, t) >= 1.0:
            hi = t
            break
        lo = t
    else:
        return float("inf")
    while hi - lo > tol * hi:
        mid = (lo + hi) / 2
        if igd_spectral_radius(A, mu, D, mid) >= 1.0:
            hi = mid
        else:
            lo = mid
    return float(hi)


def igd_curves(problem: LeastSquares, ts: np.ndarray, epochs: int) -> tuple[np.ndarray, np.ndarray]:
    """``(rho(K_N(t)), ||x_epochs - x*||)`` for each step size in ``ts`` (the paper's Figure 2)."""
    ts = np.asarray(ts, dtype=np.float64)
    rho = np.array([igd_spectral_radius(problem.A, problem.mu, problem.D, t) for t in ts])
    final = np.array([run_igd(problem, t, epochs)[-1] for t in ts])
    return rho, final
