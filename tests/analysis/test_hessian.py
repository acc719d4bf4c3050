import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from polyak.analysis.hessian import hessian_trace, hvp, top_hessian_eigenvalue


def tiny_mlp(seed=0, bn=False):
    torch.manual_seed(seed)
    layers = [nn.Linear(4, 4)]
    if bn:
        layers.append(nn.BatchNorm1d(4))
    layers += [nn.Tanh(), nn.Linear(4, 2)]
    return nn.Sequential(*layers).double()


def batches(n_batches=3, size=8, seed=1, classes=False):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        x = torch.randn(size, 4, generator=gen, dtype=torch.float64)
        y = (torch.randint(0, 2, (size,), generator=gen) if classes
             else torch.randn(size, 2, generator=gen, dtype=torch.float64))
        out.append((x, y))
    return out


def explicit_hessian(model, loss_fn, data):
    """Hessian of the mean batch loss w.r.t. the flattened parameters, by autograd.functional."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    buffers = {n: b.clone() for n, b in model.named_buffers()}

    def f(flat):
        params = {n: c.view(s) for n, c, s in zip(names, flat.split(sizes), shapes)}
        losses = [loss_fn(functional_call(model, ({**params, **buffers},), (x,)), y)
                  for x, y in data]
        return torch.stack(losses).mean()

    return torch.autograd.functional.hessian(f, flat0)


@pytest.mark.parametrize("loss_fn,classes", [(F.mse_loss, False), (F.cross_entropy, True)])
def test_lambda_max_matches_eigvalsh_of_explicit_hessian(loss_fn, classes):
    model, data = tiny_mlp(), batches(classes=classes)
    assert sum(p.numel() for p in model.parameters()) == 30
    reference = torch.linalg.eigvalsh(explicit_hessian(model, loss_fn, data)).max().item()
    result = top_hessian_eigenvalue(model, loss_fn, data, tol=1e-10, max_iter=2000)
    assert result.converged
    assert result.lambda_max == pytest.approx(reference, rel=1e-6)
    assert result.gd_bound == pytest.approx(2 / reference, rel=1e-6)
    assert result.residual < 1e-3 * abs(reference)


class Quadratic(nn.Module):
    def __init__(self, x0):
        super().__init__()
        self.x = nn.Parameter(x0.clone())

    def forward(self, inputs):
        return self.x


def quad_loss(H):
    return lambda out, target: 0.5 * out @ H @ out


def test_lambda_max_of_a_quadratic_whose_dominant_eigenvalue_is_negative():
    Q, _ = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(0),
                                       dtype=torch.float64))
    H = Q @ torch.diag(torch.tensor([-7.0, -1.0, 0.5, 2.0, 3.0], dtype=torch.float64)) @ Q.T
    model = Quadratic(torch.ones(5, dtype=torch.float64))
    result = top_hessian_eigenvalue(model, quad_loss(H), [(None, None)], tol=1e-12,
                                    max_iter=5000)
    assert result.lambda_max == pytest.approx(torch.linalg.eigvalsh(H).max().item(), rel=1e-6)


@pytest.mark.parametrize("factor,converges", [(0.98, True), (1.02, False)])
def test_gradient_descent_converges_iff_lr_below_two_over_lambda_max(factor, converges):
    gen = torch.Generator().manual_seed(3)
    M = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    H = M @ M.T + 0.1 * torch.eye(6, dtype=torch.float64)
    model = Quadratic(torch.randn(6, generator=gen, dtype=torch.float64))
    bound = top_hessian_eigenvalue(model, quad_loss(H), [(None, None)], tol=1e-12,
                                   max_iter=5000).gd_bound
    opt = torch.optim.SGD(model.parameters(), lr=factor * bound)
    start = model.x.detach().norm().item()
    for _ in range(600):
        opt.zero_grad()
        quad_loss(H)(model(None), None).backward()
        opt.step()
    end = model.x.detach().norm().item()
    assert (end < 1e-6 * start) if converges else (end > 1e6 * start)


def test_heavy_ball_bound_is_the_stability_edge_of_the_momentum_recursion():
    result = top_hessian_eigenvalue(Quadratic(torch.ones(1, dtype=torch.float64)),
                                    quad_loss(torch.tensor([[4.0]], dtype=torch.float64)),
                                    [(None, None)])
    beta = 0.9
    assert result.heavy_ball_bound(beta) == pytest.approx(2 * (1 + beta) / 4.0)

    def radius(lr):  # heavy ball on h*x^2/2: [x_{k+1}, x_k] = [[1+beta-lr*h, -beta], [1, 0]]
        T = torch.tensor([[1 + beta - lr * 4.0, -beta], [1.0, 0.0]], dtype=torch.float64)
        return torch.linalg.eigvals(T).abs().max().item()

    assert radius(0.99 * result.heavy_ball_bound(beta)) < 1
    assert radius(1.01 * result.heavy_ball_bound(beta)) > 1
    with pytest.raises(ValueError, match="beta"):
        result.heavy_ball_bound(1.0)


def test_batchnorm_train_mode_hessian_and_running_stats_untouched():
    model, data = tiny_mlp(bn=True), batches()
    model.train()
    before = {n: b.clone() for n, b in model.named_buffers()}
    params = [p.detach().clone() for p in model.parameters()]
    reference = torch.linalg.eigvalsh(explicit_hessian(model, F.mse_loss, data)).max().item()
    result = top_hessian_eigenvalue(model, F.mse_loss, data, tol=1e-10, max_iter=3000)
    assert result.lambda_max == pytest.approx(reference, rel=1e-5)
    for n, b in model.named_buffers():
        assert torch.equal(b, before[n]), n
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))
    assert model.training and model[1].training


def test_dropout_is_off_during_the_computation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Dropout(0.5), nn.Linear(4, 2)).double()
    data = batches()
    ref = tiny_mlp()
    ref.load_state_dict({k.replace("3.", "2."): v for k, v in model.state_dict().items()})
    model.train()
    a = top_hessian_eigenvalue(model, F.mse_loss, data, tol=1e-10, max_iter=2000)
    b = top_hessian_eigenvalue(ref, F.mse_loss, data, tol=1e-10, max_iter=2000)
    assert a.lambda_max == pytest.approx(b.lambda_max, rel=1e-8)
    assert model[2].training


def test_hvp_matches_explicit_hessian_times_vector():
    model, data = tiny_mlp(), batches()
    H = explicit_hessian(model, F.mse_loss, data)
    v = torch.randn(30, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    parts = list(v.split([p.numel() for p in model.parameters()]))
    vec = [c.view(p.shape) for c, p in zip(parts, model.parameters())]
    out = torch.cat([t.reshape(-1) for t in hvp(model, F.mse_loss, data, vec)])
    torch.testing.assert_close(out, H @ v)


def test_hutchinson_trace_within_four_standard_errors_of_exact_trace():
    model, data = tiny_mlp(seed=2), batches(n_batches=1, size=16, classes=True)
    exact = torch.trace(explicit_hessian(model, F.cross_entropy, data)).item()
    est = hessian_trace(model, F.cross_entropy, data, n_samples=400, seed=1)
    assert est.n_samples == 400 and est.stderr > 0
    assert abs(est.trace - exact) < 4 * est.stderr
    # the standard error is the right size: Var(z^T H z) = 2 sum_{i != j} H_ij^2 for Rademacher z
    H = explicit_hessian(model, F.cross_entropy, data)
    sd = math.sqrt(2 * ((H ** 2).sum() - (torch.diag(H) ** 2).sum()).item())
    assert est.stderr == pytest.approx(sd / math.sqrt(400), rel=0.25)


def test_invalid_arguments():
    model, data = tiny_mlp(), batches()
    with pytest.raises(ValueError, match="tol"):
        top_hessian_eigenvalue(model, F.mse_loss, data, tol=0)
    with pytest.raises(ValueError, match="max_iter"):
        top_hessian_eigenvalue(model, F.mse_loss, data, max_iter=0)
    with pytest.raises(ValueError, match="batches"):
        top_hessian_eigenvalue(model, F.mse_loss, [])
    with pytest.raises(ValueError, match="n_samples"):
        hessian_trace(model, F.mse_loss, data, n_samples=1)
