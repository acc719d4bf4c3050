import numpy as np
import pytest

from polyak.analysis.nqm import (
    EMA,
    NoisyQuadratic,
    PhaseWise,
    Tail,
    compare_methods,
    expected_loss,
    step_decay_lrs,
)

PROBLEM = NoisyQuadratic(np.array([1.0, 0.3, 0.05]), np.array([0.5, 1.0, 2.0]),
                         np.array([1.0, -2.0, 3.0]), batch_size=2)
RUNS = 4000


def monte_carlo(problem, lrs, *, beta=0.0, p=0.0, collect=None, seed=0):
    """Literal simulation of RUNS independent runs; per step the loss of the model in use.

    ``collect(k, x, state)`` returns the model in use after step k (and updates ``state``).
    """
    rng = np.random.default_rng(seed)
    h, s = problem.h, problem.noise / problem.batch_size
    x = np.tile(problem.x0, (RUNS, 1))
    v = np.zeros_like(x)
    state = {}
    use = collect(0, x, v, state) if collect else x
    losses = [0.5 * (h * use ** 2).sum(axis=1)]
    for k in range(1, len(lrs) + 1):
        g = h * x + np.sqrt(s) * rng.standard_normal(x.shape)
        v = beta * v + h ** -p * g
        x = x - lrs[k - 1] * v
        if collect:
            use = collect(k, x, v, state)
            x, v = state.get("x", x), state.get("v", v)
            state.pop("x", None), state.pop("v", None)
        else:
            use = x
        losses.append(0.5 * (h * use ** 2).sum(axis=1))
    losses = np.array(losses)
    return losses.mean(axis=1), losses.std(axis=1, ddof=1) / np.sqrt(RUNS)


def assert_within_se(closed, mc_mean, mc_se):
    assert closed.shape == mc_mean.shape
    assert np.all(np.abs(closed - mc_mean) < 4 * mc_se + 1e-12), np.max(
        np.abs(closed - mc_mean) / (mc_se + 1e-300))


def tail_collector(start, every):
    def collect(k, x, v, st):
        if k >= start and (k - start) % every == 0:
            st["n"] = st.get("n", 0) + 1
            st["avg"] = x.copy() if st["n"] == 1 else st["avg"] + (x - st["avg"]) / st["n"]
        return st.get("avg", x)
    return collect


def ema_collector(decay, every, bias_correction):
    def collect(k, x, v, st):
        if "ema" not in st:
            st["ema"], st["n"] = (np.zeros_like(x) if bias_correction else x.copy()), 0
        if k > 0 and k % every == 0:
            st["ema"] = decay * st["ema"] + (1 - decay) * x
            st["n"] += 1
        if bias_correction:
            return st["ema"] / (1 - decay ** st["n"]) if st["n"] else x
        return st["ema"]
    return collect


def phase_collector(phases, every, gamma0=0.9, T_ref=80, momentum="keep"):
    ends, gammas, lengths, k_end = [], [], [], 0
    for T in phases:
        k_end += T * every
        ends.append(k_end)
        gammas.append(gamma0 ** (T_ref / T))
        lengths.append(T)

    def collect(k, x, v, st):
        phase = next(i for i, e in enumerate(ends) if k <= e) if k > 0 else 0
        if k > 0 and k % every == 0:
            g = gammas[phase]
            st["avg"] = g * st.get("avg", 0.0) + (1 - g) * x
        if k in ends:
            g, T = gammas[phase], lengths[phase]
            st["x"] = st.pop("avg") / (1 - g ** T)
            if momentum == "reset":
                st["v"] = np.zeros_like(v)
            return st["x"]
        return x
    return collect


@pytest.mark.parametrize("beta,p", [(0.0, 0.0), (0.8, 0.0), (0.0, 0.5), (0.7, 0.5)])
def test_base_optimizers_match_monte_carlo(beta, p):
    lrs = np.full(50, 0.4)
    assert_within_se(expected_loss(PROBLEM, lrs, beta=beta, p=p),
                     *monte_carlo(PROBLEM, lrs, beta=beta, p=p))


def test_step_decay_matches_monte_carlo():
    lrs = step_decay_lrs(0.9, 60, (20, 40))
    assert lrs[19] == pytest.approx(0.9) and lrs[20] == pytest.approx(0.09)
    assert lrs[40] == pytest.approx(0.009)
    assert_within_se(expected_loss(PROBLEM, lrs), *monte_carlo(PROBLEM, lrs, seed=1))


@pytest.mark.parametrize("beta", [0.0, 0.6])
def test_tail_average_matches_monte_carlo(beta):
    lrs = np.full(60, 0.5)
    closed = expected_loss(PROBLEM, lrs, beta=beta, averaging=Tail(20, every=3))
    assert_within_se(closed, *monte_carlo(PROBLEM, lrs, beta=beta,
                                          collect=tail_collector(20, 3), seed=2))


@pytest.mark.parametrize("bias_correction", [True, False])
def test_ema_matches_monte_carlo(bias_correction):
    lrs = np.full(50, 0.5)
    closed = expected_loss(PROBLEM, lrs, averaging=EMA(0.8, every=2,
                                                        bias_correction=bias_correction))
    mc = monte_carlo(PROBLEM, lrs, collect=ema_collector(0.8, 2, bias_correction), seed=3)
    assert_within_se(closed, *mc)


@pytest.mark.parametrize("beta,momentum", [(0.0, "keep"), (0.9, "keep"), (0.9, "reset")])
def test_phase_wise_matches_monte_carlo(beta, momentum):
    # T_ref = 8 makes gamma = 0.8 and gamma^T large enough for the bias correction to matter
    phases, every = (8, 4, 4), 3
    lrs = np.concatenate([np.full(24, 0.5), np.full(12, 0.3), np.full(12, 0.1)])
    avg = PhaseWise(phases, every=every, gamma0=0.8, T_ref=8, momentum=momentum)
    closed = expected_loss(PROBLEM, lrs, beta=beta, averaging=avg)
    mc = monte_carlo(PROBLEM, lrs, beta=beta, seed=4,
                     collect=phase_collector(phases, every, 0.8, 8, momentum=momentum))
    assert_within_se(closed, *mc)


def test_sgd_reaches_the_stationary_loss_closed_form():
    # per direction Var x -> lr s / (h (2 - lr h)); E L -> sum lr s / (2 (2 - lr h))
    problem = NoisyQuadratic.power_law(20, noise="curvature", c=2.0, batch_size=4)
    lr = 1.5
    stationary = np.sum(lr * problem.s / (2 * (2 - lr * problem.h)))
    out = expected_loss(problem, np.full(20000, lr))
    assert out[-1] == pytest.approx(stationary, rel=1e-6)


def test_noise_free_trajectories_equal_deterministic_gradient_descent():
    problem = NoisyQuadratic(np.array([2.0, 0.5]), np.zeros(2), np.array([1.0, -1.0]))
    x, v, lr, beta = problem.x0.copy(), np.zeros(2), 0.3, 0.5
    expected = [0.5 * np.sum(problem.h * x ** 2)]
    for _ in range(30):
        v = beta * v + problem.h * x
        x = x - lr * v
        expected.append(0.5 * np.sum(problem.h * x ** 2))
    np.testing.assert_allclose(expected_loss(problem, np.full(30, lr), beta=beta), expected,
                               rtol=1e-12)


def test_power_law_spectrum_and_noise_models():
    iso = NoisyQuadratic.power_law(5, noise="isotropic", c=3.0, batch_size=2)
    np.testing.assert_allclose(iso.h, [1, 1 / 2, 1 / 3, 1 / 4, 1 / 5])
    np.testing.assert_allclose(iso.s, 1.5)
    curv = NoisyQuadratic.power_law(5, exponent=2.0, noise="curvature", c=3.0)
    np.testing.assert_allclose(curv.s, 3.0 / np.arange(1, 6) ** 2)


def test_compare_methods_returns_all_runs_and_averaging_beats_constant_sgd():
    results = compare_methods(NoisyQuadratic.power_law(10), lr=0.5, epochs=16,
                              steps_per_epoch=2)
    assert {"sgd", "momentum", "step decay", "tail average", "phase-wise"} <= set(results)
    assert all(r.shape == (33,) for r in results.values())
    assert results["tail average"][-1] < results["sgd"][-1]


def test_divergence_gives_inf_and_bad_input_raises():
    assert np.isinf(expected_loss(PROBLEM, np.full(3000, 2.5))[-1])
    with pytest.raises(ValueError, match="h"):
        NoisyQuadratic(np.array([1.0, -1.0]), 1.0, 0.0)
    with pytest.raises(ValueError, match="beta"):
        expected_loss(PROBLEM, np.full(3, 0.1), beta=1.0)
    with pytest.raises(ValueError, match="phases"):
        expected_loss(PROBLEM, np.full(10, 0.1), averaging=PhaseWise((3, 3)))
    with pytest.raises(ValueError, match="decay"):
        EMA(1.0)
    with pytest.raises(ValueError, match="noise"):
        NoisyQuadratic.power_law(3, noise="pink")
