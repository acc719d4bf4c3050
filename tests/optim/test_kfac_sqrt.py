"""KFACSqrt (TSO-ALRA stage 1) against explicit Kronecker products, loops and torch.optim.SGD."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from polyak.optim import _kfac_factors as kf
from polyak.optim.kfac import KFACSqrt

# ---------------------------------------------------------------- references written for tests


def spd(n: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(n, n, generator=g, dtype=torch.float64)
    return scale * (m @ m.T / n + 0.5 * torch.eye(n, dtype=torch.float64))


def inv_sqrt_ref(m: torch.Tensor) -> torch.Tensor:
    lam, v = torch.linalg.eigh(m.double())
    return v @ torch.diag(lam.rsqrt()) @ v.T


def loop_patches(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Rows = input patches of every (example, output position), by explicit indexing."""
    two_d = isinstance(conv, nn.Conv2d)
    if not two_d:
        x = x.unsqueeze(2)
    kh, kw = conv.kernel_size if two_d else (1, conv.kernel_size[0])
    sh, sw = conv.stride if two_d else (1, conv.stride[0])
    dh, dw = conv.dilation if two_d else (1, conv.dilation[0])
    ph, pw = conv.padding if two_d else (0, conv.padding[0])
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    xp = F.pad(x, (pw, pw, ph, ph), mode=mode)
    n, c, h, w = xp.shape
    h_out, w_out = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    rows = []
    for b in range(n):
        for i in range(h_out):
            for j in range(w_out):
                patch = torch.empty(c, kh, kw, dtype=x.dtype)
                for ki in range(kh):
                    for kj in range(kw):
                        patch[:, ki, kj] = xp[b, :, i * sh + dh * ki, j * sw + dw * kj]
                rows.append(patch.reshape(-1))
    return torch.stack(rows)


def loop_grads(out_grad: torch.Tensor) -> torch.Tensor:
    """Rows = dL/ds at every (example, output position), same order as loop_patches."""
    g = out_grad if out_grad.dim() == 4 else out_grad.unsqueeze(2)
    n, c, h, w = g.shape
    return torch.stack([g[b, :, i, j] for b in range(n) for i in range(h) for j in range(w)])


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 6, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 16, 2),
    )


def image_data(n: int = 512, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 1, 8, 8, generator=g)
    x[:, 0, 2:6, 2:6] += 0.5 * (2 * y - 1).float().view(-1, 1, 1)
    return x, y


def batches(steps: int, bs: int = 32, seed: int = 0):
    x, y = image_data(seed=seed)
    for s in range(steps):
        i = (s * bs) % len(x)
        yield x[i:i + bs], y[i:i + bs]


def train_step(model, opt, xb, yb) -> float:
    loss = F.cross_entropy(model(xb), yb)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def set_grads(params, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)


# ---------------------------------------------------------------- the preconditioned update


@pytest.mark.parametrize("damping", [0.0, 0.1])
def test_update_is_inverse_sqrt_of_full_kronecker_product(damping):
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    opt = KFACSqrt(lin, lr=0.5, damping=damping)
    A, B = spd(5, 1), spd(3, 2, scale=0.3)
    opt.state[lin.weight]["A"].copy_(A)
    opt.state[lin.weight]["B"].copy_(B)
    lin.eval()  # no statistics: the step uses the injected factors
    set_grads(lin.parameters(), 3)
    G = torch.cat([lin.weight.grad, lin.bias.grad[:, None]], 1).double()
    W0 = torch.cat([lin.weight, lin.bias[:, None]], 1).detach().double().clone()
    opt.step()
    eye5, eye3 = torch.eye(5, dtype=torch.float64), torch.eye(3, dtype=torch.float64)
    K = torch.kron(A + damping * eye5, B + damping * eye3)  # 15 x 15, = F kron approximation
    update = inv_sqrt_ref(K) @ G.T.reshape(-1)  # column-major vec(G)
    expected = W0 - 0.5 * update.reshape(5, 3).T
    W1 = torch.cat([lin.weight, lin.bias[:, None]], 1).detach().double()
    torch.testing.assert_close(W1, expected, rtol=1e-5, atol=1e-6)


def test_identity_factors_without_damping_is_torch_sgd_bit_for_bit():
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Flatten(), nn.Linear(12, 2))
    ref = copy.deepcopy(model)
    model.eval()  # factors stay at their identity start
    opt = KFACSqrt(model, lr=0.1, damping=0.0, momentum=0.9, weight_decay=1e-2)
    sgd = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        x, t = torch.randn(4, 2, 6, generator=g), torch.randn(4, 2, generator=g)
        for m, o in ((model, opt), (ref, sgd)):
            o.zero_grad()
            F.mse_loss(m(x), t).backward()
            o.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q)


def test_scaled_identity_factors_divide_the_gradient_by_sqrt_ab():
    lin = nn.Linear(3, 4)
    opt = KFACSqrt(lin, lr=0.2, damping=0.0)
    a, b = 4.0, 0.25 * 9
    opt.state[lin.weight]["A"].mul_(a)
    opt.state[lin.weight]["B"].mul_(b)
    lin.eval()
    set_grads(lin.parameters(), 0)
    expected = [p.detach() - 0.2 * p.grad / (a * b) ** 0.5 for p in lin.parameters()]
    opt.step()
    for p, e in zip(lin.parameters(), expected):
        torch.testing.assert_close(p.detach(), e)


# ---------------------------------------------------------------- patches and factors

CONVS = [
    lambda: nn.Conv2d(2, 3, 3, stride=2, padding=1, dilation=2),
    lambda: nn.Conv2d(2, 3, (2, 3), stride=(1, 2), padding=(1, 0), padding_mode="reflect"),
    lambda: nn.Conv2d(2, 3, 3, padding=2, bias=False, padding_mode="circular"),
    lambda: nn.Conv1d(2, 3, 3, stride=2, padding=2, dilation=2),
    lambda: nn.Conv1d(2, 3, 4, padding=1, padding_mode="replicate"),
]


def conv_input(conv: nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    shape = (3, 2, 7, 6) if isinstance(conv, nn.Conv2d) else (3, 2, 9)
    return torch.randn(shape, generator=g)


@pytest.mark.parametrize("make", CONVS)
def test_conv_factors_are_the_loop_averages(make):
    torch.manual_seed(0)
    conv = make()
    opt = KFACSqrt(conv, lr=0.1, factor_decay=1.0)  # gamma = 1: the factors are this batch's
    x = conv_input(conv)
    out = conv(x)
    out.retain_grad()
    (out.sin() * 3).mean().backward()
    a = loop_patches(conv, x).double()
    g = loop_grads(out.grad).double()
    if conv.bias is not None:
        a = torch.cat([a, torch.ones(len(a), 1, dtype=torch.float64)], 1)
    n = x.shape[0]
    A_ref = sum(r[:, None] * r[None, :] for r in a) / len(a)
    B_ref = n * sum(r[:, None] * r[None, :] for r in g)
    # the loop patches reproduce autograd's gradients: sum over batch and positions of g a^T
    G_ref = sum(gr[:, None] * ar[None, :] for gr, ar in zip(g, a))
    G_autograd = kf.homogeneous(conv.weight.grad, conv.bias.grad if conv.bias is not None else None)
    torch.testing.assert_close(G_ref.float(), G_autograd, rtol=1e-4, atol=1e-5)
    opt.step()
    st = opt.state[conv.weight]
    torch.testing.assert_close(st["A"].double(), A_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(st["B"].double(), B_ref, rtol=1e-5, atol=1e-8)


MORE = [
    lambda: nn.Conv2d(2, 3, 3, padding="same", dilation=2),
    lambda: nn.Conv1d(2, 3, 5, padding="same", padding_mode="reflect"),
    lambda: nn.Conv2d(2, 3, 1, stride=2, padding="valid"),
    lambda: nn.Linear(9, 4),
]


@pytest.mark.parametrize("make", CONVS + MORE)
def test_unfolded_patches_reproduce_autograd_gradients(make):
    torch.manual_seed(0)
    layer = make()
    x = torch.randn(3, 5, 9) if isinstance(layer, nn.Linear) else conv_input(layer)
    out = layer(x)
    out.retain_grad()
    (out.cos() * 2).sum().backward()
    a = kf.input_patches(layer, x)
    g = kf.output_grads(layer, out.grad)
    G = torch.einsum("ro,ri->oi", g, a)  # sum over batch and positions of g a^T
    torch.testing.assert_close(G, layer.weight.grad.reshape(G.shape), rtol=1e-4, atol=1e-5)
    if layer.bias is not None:
        torch.testing.assert_close(g.sum(0), layer.bias.grad, rtol=1e-4, atol=1e-5)


def test_linear_factors_with_inplace_relu_after_the_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(12, 2))
    opt = KFACSqrt(model, factor_decay=1.0)
    x = torch.randn(4, 1, 4, 4)
    F.cross_entropy(model(x), torch.tensor([0, 1, 1, 0])).backward()
    opt.step()
    # reference dL/ds of the conv, from an out-of-place replica at the same (old) weights
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2))
    s = ref[0](x)
    s.retain_grad()
    F.cross_entropy(ref[3](ref[2](ref[1](s))), torch.tensor([0, 1, 1, 0])).backward()
    g = loop_grads(s.grad).double()
    B_ref = 4 * sum(r[:, None] * r[None, :] for r in g)
    torch.testing.assert_close(opt.state[model[0].weight]["B"].double(), B_ref)


# ---------------------------------------------------------------- timing of factors and roots


def test_factors_stay_psd_and_roots_change_only_on_refresh_steps():
    model = small_cnn()
    opt = KFACSqrt(model, lr=0.05, factor_decay=0.3, damping=1e-2, inv_every=4, factor_every=2)
    w = model[0].weight
    prev = {k: opt.state[w][k].clone() for k in ("A", "A_inv_sqrt", "B_inv_sqrt")}
    for t, (xb, yb) in enumerate(batches(11), start=1):
        train_step(model, opt, xb, yb)
        for layer in opt.layers:
            for k in ("A", "B"):
                f = opt.state[layer.weight][k].double()
                torch.testing.assert_close(f, f.T)
                assert torch.linalg.eigvalsh(f).min() >= -1e-6 * f.abs().max()
        st = opt.state[w]
        assert (not torch.equal(st["A"], prev["A"])) == ((t - 1) % 2 == 0), t
        refresh = (t - 1) % 4 == 0
        for k, f in (("A_inv_sqrt", "A"), ("B_inv_sqrt", "B")):
            assert (not torch.equal(st[k], prev[k])) == refresh, (t, k)
            if refresh:
                eye = torch.eye(len(st[f]), dtype=torch.float64)
                expected = inv_sqrt_ref(st[f].double() + 1e-2 * eye)
                torch.testing.assert_close(st[k].double(), expected, rtol=1e-4, atol=1e-4)
        prev = {k: opt.state[w][k].clone() for k in prev}


# ---------------------------------------------------------------- capture rules


def linear_A(x: torch.Tensor) -> torch.Tensor:
    a = torch.cat([x, torch.ones(len(x), 1)], 1).double()
    return sum(r[:, None] * r[None, :] for r in a) / len(a)


def test_no_capture_under_no_grad_or_eval_and_last_backward_wins():
    torch.manual_seed(0)
    lin = nn.Linear(3, 2)
    opt = KFACSqrt(lin, lr=1e-3, factor_decay=1.0)
    x1, x2, x3 = torch.randn(5, 3), torch.randn(6, 3), torch.randn(4, 3)
    eye = torch.eye(4)
    lin.eval()
    lin(x1).sum().backward()
    lin.train()
    with torch.no_grad():
        lin(x2)
    opt.step()  # nothing captured: the factors keep their identity start
    assert torch.equal(opt.state[lin.weight]["A"], eye)
    # two forward/backward pairs, then a forward without backward (SAM, eval-like probes)
    for xb in (x1, x2):
        opt.zero_grad()
        lin(xb).pow(2).sum().backward()
    lin(x3).sum()
    opt.step()
    torch.testing.assert_close(opt.state[lin.weight]["A"].double(), linear_A(x2))


class EmbedBNGroupConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.bn = nn.Embedding(5, 4), nn.BatchNorm1d(4)
        self.conv = nn.Conv1d(4, 4, 1, groups=2)  # grouped: not preconditioned

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.conv(self.bn(self.emb(idx).transpose(1, 2)))


def test_model_without_supported_layer_warns_and_is_sgd():
    torch.manual_seed(0)
    model = EmbedBNGroupConv()
    ref = copy.deepcopy(model)
    with pytest.warns(UserWarning, match="plain SGD"):
        opt = KFACSqrt(model, lr=0.1, momentum=0.5)
    assert opt.layers == () and opt.factor_nbytes() == 0
    sgd = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.5)
    idx = torch.tensor([[0, 1, 2], [3, 4, 0], [1, 1, 2]])
    for _ in range(3):
        for m, o in ((model, opt), (ref, sgd)):
            o.zero_grad()
            m(idx).square().mean().backward()
            o.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q)


def test_other_parameters_get_torch_sgd_with_momentum_and_weight_decay():
    model = small_cnn()
    ref = copy.deepcopy(model)
    opt = KFACSqrt(model, lr=0.05, momentum=0.9, weight_decay=1e-3, inv_every=3)
    sgd = torch.optim.SGD([ref[1].weight, ref[1].bias], lr=0.05, momentum=0.9, weight_decay=1e-3)
    for xb, yb in batches(5):
        with torch.no_grad():  # the same forward: copy the preconditioned layers' weights
            for m, r in zip(model, ref):
                if not isinstance(m, nn.BatchNorm2d):
                    for p, q in zip(m.parameters(), r.parameters()):
                        q.copy_(p)
        train_step(model, opt, xb, yb)
        train_step(ref, sgd, xb, yb)
        assert torch.equal(model[1].weight, ref[1].weight)
        assert torch.equal(model[1].bias, ref[1].bias)
    assert opt.layers == (model[0], model[3], model[6])


@pytest.mark.parametrize("momentum,wd", [(0.0, 0.0), (0.9, 1e-3)])
def test_foreach_and_single_tensor_paths_agree(momentum, wd):
    runs = []
    for foreach in (True, False):
        model = small_cnn()
        opt = KFACSqrt(model, lr=0.05, momentum=momentum, weight_decay=wd, inv_every=3,
                       foreach=foreach)
        for xb, yb in batches(7):
            train_step(model, opt, xb, yb)
        runs.append([p.detach().clone() for p in model.parameters()])
    for p, q in zip(*runs):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_factor_memory_is_the_factor_and_root_sizes():
    model = small_cnn()
    opt = KFACSqrt(model)
    sizes = [(1 * 9 + 1, 6), (6 * 9 + 1, 6), (96 + 1, 2)]
    assert opt.factor_nbytes() == sum(2 * 4 * (a * a + b * b) for a, b in sizes)


# ---------------------------------------------------------------- state and behaviour


def test_state_dict_round_trip_continues_bit_for_bit():
    model = small_cnn()
    opt = KFACSqrt(model, lr=0.05, momentum=0.9, inv_every=4, factor_every=3, factor_decay=0.2)
    data = list(batches(14))
    for xb, yb in data[:6]:
        train_step(model, opt, xb, yb)
    model2 = small_cnn(seed=1)
    model2.load_state_dict(model.state_dict())
    opt2 = KFACSqrt(model2, lr=0.05, momentum=0.9, inv_every=4, factor_every=3, factor_decay=0.2)
    opt2.load_state_dict(opt.state_dict())
    for xb, yb in data[6:]:
        train_step(model, opt, xb, yb)
        train_step(model2, opt2, xb, yb)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


def test_trains_faster_than_sgd_on_a_small_cnn():
    finals = {}
    for name in ("sgd", "kfac"):
        model = small_cnn()
        opt = (torch.optim.SGD(model.parameters(), lr=0.01) if name == "sgd"
               else KFACSqrt(model, lr=0.01, inv_every=10, factor_decay=0.1))
        losses = [train_step(model, opt, xb, yb) for xb, yb in batches(200, bs=64)]
        finals[name] = sum(losses[-20:]) / 20
    assert finals["kfac"] < 0.6 * finals["sgd"], finals


BAD = [
    ("lr", 0.0), ("lr", -1.0), ("lr", float("nan")), ("factor_decay", 0.0),
    ("factor_decay", 1.5), ("damping", -1e-3), ("inv_every", 0), ("inv_every", 2.0),
    ("inv_every", True), ("factor_every", 0), ("factor_every", 1.5), ("momentum", 1.0),
    ("momentum", -0.1), ("weight_decay", -1.0),
]


@pytest.mark.parametrize("name,value", BAD)
def test_bad_hyper_parameters_raise_before_hooks(name, value):
    model = small_cnn()
    with pytest.raises(ValueError, match=f"Invalid {name}"):
        KFACSqrt(model, **{name: value})
    assert all(not m._forward_hooks for m in model.modules())


def test_model_must_be_a_module():
    with pytest.raises(TypeError, match="nn.Module"):
        KFACSqrt([nn.Parameter(torch.zeros(2))])


# ---------------------------------------------------------------- start of the factors


def test_batches_start_is_the_running_mean_of_the_first_batches_then_the_ema():
    torch.manual_seed(0)
    lin = nn.Linear(3, 2)
    opt = KFACSqrt(lin, lr=1e-3, factor_decay=0.25)  # factor_init="batches" by default
    xs = [torch.randn(5, 3) for _ in range(6)]
    expected = None
    for n, xb in enumerate(xs, start=1):
        opt.zero_grad()
        lin(xb).pow(2).sum().backward()
        opt.step()
        batch_a = linear_A(xb)
        if n <= 4:  # running mean of the first 1/gamma = 4 batches: no identity left
            expected = sum(linear_A(x) for x in xs[:n]) / n
        else:
            expected = 0.75 * expected + 0.25 * batch_a
        torch.testing.assert_close(opt.state[lin.weight]["A"].double(), expected)


def test_identity_start_mixes_the_first_batch_into_the_identity():
    torch.manual_seed(0)
    lin = nn.Linear(3, 2)
    opt = KFACSqrt(lin, lr=1e-3, factor_decay=0.25, factor_init="identity")
    xb = torch.randn(5, 3)
    lin(xb).pow(2).sum().backward()
    opt.step()
    expected = 0.75 * torch.eye(4, dtype=torch.float64) + 0.25 * linear_A(xb)
    torch.testing.assert_close(opt.state[lin.weight]["A"].double(), expected)
    with pytest.raises(ValueError, match="Invalid factor_init"):
        KFACSqrt(nn.Linear(3, 2), factor_init="zeros")
