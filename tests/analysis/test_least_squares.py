from functools import reduce

import numpy as np
import pytest

from polyak.analysis.least_squares import (
    LeastSquares,
    gd_bound,
    igd_critical_step,
    igd_fixed_point,
    igd_map,
    igd_spectral_radius,
    igd_sufficient_bound,
    random_least_squares,
    run_igd,
    sigmoid_least_squares,
)


def explicit_epoch_matrix(A, mu, D, t):
    """M_N @ ... @ M_1 with M_i = I - t a_i a_i^T - t mu D / N, written as a plain product."""
    N, n = A.shape
    Dm = np.diag(D) if np.ndim(D) == 1 else D
    Ms = [np.eye(n) - t * np.outer(A[i], A[i]) - t * mu * Dm / N for i in range(N)]
    return reduce(lambda acc, M: M @ acc, Ms, np.eye(n))


def explicit_epoch_offset(A, b, mu, D, t):
    """t c(t) = t sum_j b_j M_N ... M_{j+1} a_j, by propagating each row's push to the end."""
    N, n = A.shape
    Dm = np.diag(D) if np.ndim(D) == 1 else D
    Ms = [np.eye(n) - t * np.outer(A[i], A[i]) - t * mu * Dm / N for i in range(N)]
    total = np.zeros(n)
    for j in range(N):
        push = t * b[j] * A[j]
        for M in Ms[j + 1:]:
            push = M @ push
        total += push
    return total


@pytest.mark.parametrize("diag", [True, False])
def test_igd_map_and_radius_match_an_explicit_product(diag):
    rng = np.random.default_rng(0)
    A = rng.standard_normal((7, 4))
    D = rng.uniform(0.5, 2.0, 4) if diag else (lambda M: M @ M.T)(rng.standard_normal((4, 4)))
    for t in (0.01, 0.2, 0.7):
        K = explicit_epoch_matrix(A, 0.3, D, t)
        np.testing.assert_allclose(igd_map(A, 0.3, D, t), K, rtol=1e-12, atol=1e-12)
        assert igd_spectral_radius(A, 0.3, D, t) == pytest.approx(
            np.abs(np.linalg.eigvals(K)).max(), rel=1e-10)


def test_one_igd_epoch_is_the_affine_map_K_x_plus_t_c():
    p = random_least_squares(6, 3, 0.5, seed=1)
    x0 = np.array([1.0, -2.0, 0.5])
    t = 0.3
    after = run_igd(p, t, 1, x0=x0, return_iterate=True)
    expected = explicit_epoch_matrix(p.A, p.mu, p.D, t) @ x0 + explicit_epoch_offset(
        p.A, p.b, p.mu, p.D, t)
    np.testing.assert_allclose(after, expected, rtol=1e-12)


def test_paper_example_1_radius_is_abs_one_minus_two_t():
    # f = sum_i x_i^2 = 1/2 ||sqrt(2) I x||^2: K_N(t) = diag(1 - 2t), rho = |1 - 2t|
    N = 4
    A = np.sqrt(2.0) * np.eye(N)
    for t in (0.1, 0.5, 0.9, 1.3):
        assert igd_spectral_radius(A, 0.0, np.ones(N), t) == pytest.approx(abs(1 - 2 * t))
    assert igd_critical_step(A, 0.0, np.ones(N), t_max=3.0) == pytest.approx(1.0, rel=1e-5)


def test_the_papers_bound_is_not_sufficient_on_its_own_example_1():
    # 2N/rho(A^T A) = N here, yet IGD diverges for every t > 1: the bound rests on a conjecture
    N = 3
    A = np.sqrt(2.0) * np.eye(N)
    assert igd_sufficient_bound(A, 0.0, np.ones(N)) == pytest.approx(N)
    assert igd_spectral_radius(A, 0.0, np.ones(N), 0.9 * N) == pytest.approx(abs(1 - 1.8 * N))


def test_single_row_bound_is_exact_gradient_descent():
    rng = np.random.default_rng(2)
    A = rng.standard_normal((1, 3))
    D = np.array([1.0, 2.0, 3.0])
    H = A.T @ A + 0.4 * np.diag(D)
    edge = 2.0 / np.linalg.eigvalsh(H).max()
    assert igd_sufficient_bound(A, 0.4, D) == pytest.approx(edge)
    assert gd_bound(H) == pytest.approx(edge)
    for f in (0.3, 0.9, 0.99):
        assert igd_spectral_radius(A, 0.4, D, f * edge) < 1
    assert igd_spectral_radius(A, 0.4, D, 1.01 * edge) > 1
    assert igd_critical_step(A, 0.4, D) == pytest.approx(edge, rel=1e-5)


@pytest.mark.parametrize("factor", [0.98, 1.02])
def test_igd_converges_just_below_and_diverges_just_above_the_critical_step(factor):
    p = random_least_squares(12, 4, 0.2, seed=3)
    t_c = igd_critical_step(p.A, p.mu, p.D)
    t = factor * t_c
    rho = np.abs(np.linalg.eigvals(explicit_epoch_matrix(p.A, p.mu, p.D, t))).max()
    x0 = np.full(4, 5.0)
    if factor < 1:
        assert rho < 1
        K = explicit_epoch_matrix(p.A, p.mu, p.D, t)
        x_fp = np.linalg.solve(np.eye(4) - K, explicit_epoch_offset(p.A, p.b, p.mu, p.D, t))
        np.testing.assert_allclose(igd_fixed_point(p, t), x_fp, rtol=1e-9)
        x = run_igd(p, t, 3000, x0=x0, return_iterate=True)
        assert np.linalg.norm(x - x_fp) < 1e-6 * np.linalg.norm(x0 - x_fp)
        errors = run_igd(p, t, 3000, x0=x0)
        assert errors[-1] == pytest.approx(np.linalg.norm(x_fp - p.x_star), rel=1e-4)
    else:
        assert rho > 1
        errors = run_igd(p, t, 3000, x0=x0)
        assert not np.isfinite(errors[-1]) or errors[-1] > 1e6 * errors[0]


def test_x_star_zeroes_the_gradient_and_errors_start_at_x0():
    p = random_least_squares(10, 3, 0.1, seed=4)
    grad = p.A.T @ (p.A @ p.x_star - p.b) + p.mu * p.D * p.x_star
    np.testing.assert_allclose(grad, 0.0, atol=1e-12)
    errors = run_igd(p, 0.1, 5)
    assert errors.shape == (6,)
    assert errors[0] == pytest.approx(np.linalg.norm(p.x_star))


def test_sigmoid_problem_is_a_smoothing_of_noisy_sigmoid_samples():
    p = sigmoid_least_squares(20, 1.0, sigma=0.0, seed=0)
    assert np.array_equal(p.A, np.eye(20))
    assert np.all(np.diff(p.b) <= 0) and np.all((p.b > 0) & (p.b < 0.5))
    # D = L^T L annihilates constants: a constant signal is its own smoothing
    np.testing.assert_allclose(p.D @ np.ones(20), 0.0, atol=1e-12)


def test_invalid_inputs():
    with pytest.raises(ValueError, match="rows"):
        random_least_squares(0, 3)
    with pytest.raises(ValueError, match="D"):
        igd_map(np.ones((2, 3)), 0.1, np.ones(2), 0.1)
    with pytest.raises(ValueError, match="t"):
        run_igd(LeastSquares(np.eye(2), np.ones(2), 0.1, np.ones(2)), -1.0, 3)
    with pytest.raises(ValueError, match="epochs"):
        run_igd(LeastSquares(np.eye(2), np.ones(2), 0.1, np.ones(2)), 0.1, 0)
    with pytest.raises(ValueError, match="H"):
        gd_bound(np.ones((2, 3)))
