"""polyak.bench.models._nlc: the (N, L, C) Conv1d/BatchNorm1d against torch's own modules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from polyak.bench.models._nlc import BatchNorm1d, Conv1d, _ConvNLC, with_torch_layers
from polyak.bench.models.mnist1d import CNN


def assert_same_state(a: nn.Module, b: nn.Module, tol: float) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].shape == sb[key].shape, key
        torch.testing.assert_close(sa[key], sb[key], rtol=tol, atol=tol, msg=key)


def test_the_cnn_uses_the_polyak_layers_and_keeps_torchs_types_and_state_dict():
    model = CNN()
    kinds = [type(m) for m in model.features]
    assert kinds.count(Conv1d) == 3 and kinds.count(BatchNorm1d) == 3
    assert all(isinstance(m, (nn.Conv1d, nn.BatchNorm1d, nn.ReLU)) for m in model.features)
    twin = with_torch_layers(model)
    assert [type(m) for m in twin.features] == [nn.Conv1d, nn.BatchNorm1d, nn.ReLU] * 3
    # the same init as torch's layers built in the same order from the same seed
    torch.manual_seed(3)
    layers = []
    for c_in, kernel in ((1, 5), (25, 3), (25, 3)):
        layers += [nn.Conv1d(c_in, 25, kernel, stride=2, padding=1), nn.BatchNorm1d(25), nn.ReLU()]
    plain = nn.Sequential(nn.Sequential(*layers), nn.Linear(125, 10))
    torch.manual_seed(3)
    ours = CNN()
    assert len(ours.state_dict()) == len(plain.state_dict())
    for (key, a), b in zip(ours.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), key


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_training_steps_match_torch_modules(dtype, tol):
    """Forward, loss, every gradient and the BatchNorm buffers over SGD steps in train mode,
    then the eval-mode output: equal to torch's modules up to rounding."""
    torch.manual_seed(0)
    model = CNN().to(dtype)
    ref = with_torch_layers(model)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (model, ref)]
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        x = torch.randn(32, 1, 40, generator=gen, dtype=dtype)
        y = torch.randint(0, 10, (32,), generator=gen)
        losses = []
        for m, opt in zip((model, ref), opts):
            opt.zero_grad()
            loss = F.cross_entropy(m(x), y)
            loss.backward()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[0], losses[1], rtol=tol, atol=tol)
        for (name, p), q in zip(model.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=tol, atol=tol, msg=name)
            assert p.grad.stride() == p.stride() == q.grad.stride(), name  # DDP's bucket layout
        for opt in opts:
            opt.step()
    assert_same_state(model, ref, tol * 10)
    x = torch.randn(7, 40, generator=gen, dtype=dtype)
    model.eval(), ref.eval()
    torch.testing.assert_close(model(x), ref(x), rtol=tol, atol=tol)
    assert int(model.features[1].num_batches_tracked) == 4


@pytest.mark.parametrize("c_in,c_out,kernel,stride,pad,bias,length", [
    (1, 4, 5, 2, 1, True, 40), (3, 5, 3, 1, 0, False, 9), (2, 3, 4, 3, 2, True, 11),
    (4, 2, 1, 1, 0, True, 6), (2, 2, 3, 2, 1, True, 3), (3, 6, 7, 1, 3, False, 7)])
def test_conv1d_matches_torch_on_every_geometry(c_in, c_out, kernel, stride, pad, bias, length):
    torch.manual_seed(0)
    conv = Conv1d(c_in, c_out, kernel, stride, pad, bias=bias, dtype=torch.float64)
    ref = with_torch_layers(nn.Sequential(conv))[0]
    assert type(ref) is nn.Conv1d
    # a non-contiguous input (a transposed view) and a batch of one
    for x in (torch.randn(5, length, c_in, dtype=torch.float64).transpose(1, 2),
              torch.randn(1, c_in, length, dtype=torch.float64)):
        xa, xb = x.detach().requires_grad_(), x.detach().requires_grad_()
        out, out_ref = conv(xa), ref(xb)
        torch.testing.assert_close(out, out_ref)
        g = torch.randn_like(out_ref)
        out.backward(g)
        out_ref.backward(g)
        torch.testing.assert_close(xa.grad, xb.grad)
        torch.testing.assert_close(conv.weight.grad, ref.weight.grad)
        assert conv.weight.grad.stride() == conv.weight.stride() == ref.weight.grad.stride()
        if bias:
            torch.testing.assert_close(conv.bias.grad, ref.bias.grad)
        conv.zero_grad(), ref.zero_grad()


def test_conv_function_passes_gradcheck_and_gradgradcheck():
    torch.manual_seed(0)
    x = torch.randn(2, 7, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)

    def fn(x, w, b):
        return _ConvNLC.apply(x, w, b, 2, 1)

    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


def test_hessian_vector_products_match_torch_modules():
    """Double backward (polyak.analysis.hessian's HVPs) through the fast path."""
    from polyak.analysis.hessian import hvp

    torch.manual_seed(0)
    model = CNN().double()
    ref = with_torch_layers(model)
    gen = torch.Generator().manual_seed(2)
    batches = [(torch.randn(16, 1, 40, generator=gen, dtype=torch.float64),
                torch.randint(0, 10, (16,), generator=gen))]
    vec = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in model.parameters()]

    got = hvp(model, F.cross_entropy, batches, vec)
    want = hvp(ref, F.cross_entropy, batches, vec)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("kwargs", [dict(dilation=2), dict(groups=2), dict(padding="same"),
                                    dict(padding=1, padding_mode="circular")])
def test_other_configurations_are_torchs_own_forward(kwargs):
    torch.manual_seed(0)
    conv = Conv1d(4, 4, 3, **kwargs)
    ref = with_torch_layers(nn.Sequential(conv))[0]
    x = torch.randn(3, 4, 12)
    out = conv(x)
    assert out.is_contiguous()  # torch's kernel's layout, not the (N, L, C) one
    assert torch.equal(out, ref(x))


def test_forward_only_passes_take_torchs_kernels():
    """Evaluation under no_grad: torch's own layout (contiguous outputs) and values."""
    torch.manual_seed(0)
    model = CNN().eval()
    ref = with_torch_layers(model)
    x = torch.randn(9, 1, 40)
    with torch.no_grad():
        inner = model.features[:2](x)
        assert inner.is_contiguous()
        assert torch.equal(model(x), ref(x))
    assert not model.features[:2](x).is_contiguous()  # a training forward: (N, L, C) memory


def test_autocast_and_unbatched_inputs_take_torchs_forward():
    torch.manual_seed(0)
    conv = Conv1d(2, 3, 3, 2, 1)
    ref = with_torch_layers(nn.Sequential(conv))[0]
    x = torch.randn(4, 2, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, want = conv(x), ref(x)
    assert out.dtype == torch.bfloat16 and torch.equal(out, want)
    assert torch.equal(conv(x[0]), ref(x[0]))  # (C, L) input


def test_batchnorm_on_nlc_memory_matches_torch_in_both_modes_and_with_cumulative_momentum():
    torch.manual_seed(0)
    for momentum in (0.1, None):
        bn = BatchNorm1d(5, momentum=momentum, dtype=torch.float64)
        ref = with_torch_layers(nn.Sequential(bn))[0]
        for _ in range(3):
            x = torch.randn(6, 9, 5, dtype=torch.float64).transpose(1, 2)  # (N, C, L) view
            out = bn(x)
            assert out.stride() == x.stride()  # the memory order is kept
            torch.testing.assert_close(out, ref(x.contiguous()))
        assert_same_state(bn, ref, 1e-12)
        bn.eval(), ref.eval()
        x = torch.randn(2, 5, 4, dtype=torch.float64).transpose(1, 2).transpose(1, 2)
        torch.testing.assert_close(bn(x), ref(x))


def test_hooks_see_torchs_shapes_and_bn_recalibration_matches():
    """Module hooks (K-FAC's, BatchNorm recalibration's) get (N, C, L) tensors; recalibrating
    the fast model and the torch one on the same batches gives the same running statistics."""
    from polyak.averaging.bn import recalibrate_bn

    torch.manual_seed(0)
    model = CNN()
    ref = with_torch_layers(model)
    seen = []
    model.features[3].register_forward_hook(
        lambda mod, args, out: seen.append((tuple(args[0].shape), tuple(out.shape))))
    batches = [(torch.randn(20, 1, 40), torch.zeros(20, dtype=torch.long)) for _ in range(3)]
    recalibrate_bn(model, batches)
    recalibrate_bn(ref, batches)
    assert seen[0] == ((20, 25, 19), (20, 25, 10))
    assert_same_state(model, ref, 1e-5)


def test_tso_alra_kfac_steps_match_torch_modules():
    """TSO-ALRA's K-FAC factors come from module hooks on the convolutions: a few
    preconditioned steps move both models alike."""
    import polyak

    torch.manual_seed(0)
    model = CNN().double()
    ref = with_torch_layers(model)
    methods = [polyak.recipe("tso-alra", m, epochs=4, steps_per_epoch=3) for m in (model, ref)]
    gen = torch.Generator().manual_seed(5)
    for _ in range(5):
        x = torch.randn(16, 1, 40, generator=gen, dtype=torch.float64)
        y = torch.randint(0, 10, (16,), generator=gen)
        for m, method in zip((model, ref), methods):
            method.step(lambda m=m, x=x, y=y: F.cross_entropy(m(x), y))
    assert_same_state(model, ref, 1e-8)
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), CNN().parameters()))


def _ddp_step(rank: int) -> dict:
    """One DDP forward/backward of the MNIST-1D CNN on this rank's half of a fixed batch."""
    import warnings

    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.manual_seed(0)
    model = DDP(CNN(channels=8))
    x, y = _ddp_batch()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        F.cross_entropy(model(x[rank::2]), y[rank::2]).backward()
    return {"warnings": [str(w.message) for w in caught],
            "grads": [p.grad.clone() for p in model.parameters()],
            "strides": [(p.grad.stride(), p.stride()) for p in model.parameters()]}


def _ddp_batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    return torch.randn(32, 40, generator=gen), torch.randint(0, 10, (32,), generator=gen)


@pytest.mark.slow
def test_ddp_sees_gradients_in_its_bucket_layout_and_torchs_values(tmp_path, capfd):
    """Issue 21: under DDP (2 gloo processes) the first convolution's weight gradient (C_in = 1)
    had strides that differ from its weight's, and every rank printed "Grad strides do not match
    bucket view strides". Now: no warning, and each rank's all-reduced gradient is the mean of
    torch's own layers' gradients on the two halves of the batch."""
    from _ddp_checks import spawn

    ranks = spawn(_ddp_step, tmp_path)
    assert "Grad strides" not in capfd.readouterr().err
    torch.manual_seed(0)
    ref = with_torch_layers(CNN(channels=8))
    x, y = _ddp_batch()
    halves = []
    for rank in range(2):
        ref.zero_grad()
        F.cross_entropy(ref(x[rank::2]), y[rank::2]).backward()
        halves.append([p.grad.clone() for p in ref.parameters()])
    for got in ranks:
        assert not [w for w in got["warnings"] if "stride" in w], got["warnings"]
        assert all(grad == param for grad, param in got["strides"]), got["strides"]
        for a, b0, b1 in zip(got["grads"], *halves):
            torch.testing.assert_close(a, (b0 + b1) / 2, rtol=1e-5, atol=1e-6)
