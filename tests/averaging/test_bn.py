"""recalibrate_bn against torch.optim.swa_utils.update_bn and the mean of per-batch statistics."""

from __future__ import annotations

import copy

import pytest
import torch
from avg_helpers import RaisingLoader, assert_lists_equal, bn_buffers, bn_net, image_batches, mlp
from torch import nn
from torch.optim.swa_utils import update_bn

from polyak.averaging import recalibrate_bn, saved_bn_buffers


def _trained_stats(model):
    """Give the BatchNorm buffers non-default values, as after training."""
    model.train()
    with torch.no_grad():
        for x in image_batches(n=3, seed=7):
            model(x * 3 + 1)


def test_same_statistics_as_update_bn():
    model = bn_net()
    _trained_stats(model)
    ref = copy.deepcopy(model)
    loader = image_batches()
    recalibrate_bn(model, loader)
    update_bn(loader, ref)
    assert_lists_equal(bn_buffers(model), bn_buffers(ref))
    assert int(model[1].num_batches_tracked) == len(loader)


def test_running_mean_is_the_mean_of_per_batch_means():
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(10 + 3 * i, 5, generator=g) * (i + 1) + i for i in range(5)]
    bn = nn.BatchNorm1d(5, momentum=0.3)
    recalibrate_bn(bn, batches)
    want_mean = torch.stack([b.mean(0) for b in batches]).mean(0)
    want_var = torch.stack([b.var(0, unbiased=True) for b in batches]).mean(0)
    torch.testing.assert_close(bn.running_mean, want_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, want_var, rtol=1e-5, atol=1e-6)


def test_restores_momentum_and_every_submodule_mode():
    model = bn_net()
    model[1].momentum = 0.3
    model[5].momentum = None
    model.eval()
    model[5].train()
    modes = [m.training for m in model.modules()]
    recalibrate_bn(model, image_batches())
    assert model[1].momentum == 0.3 and model[5].momentum is None
    assert [m.training for m in model.modules()] == modes


def test_restores_momentum_and_modes_when_forward_raises():
    model = bn_net().eval()

    def forward(m, batch):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        recalibrate_bn(model, image_batches(), forward=forward)
    assert model[1].momentum == 0.1
    assert not any(m.training for m in model.modules())


def test_no_op_without_batchnorm_does_not_touch_the_loader():
    recalibrate_bn(mlp(), RaisingLoader())


def test_tuple_batches_custom_forward_and_max_batches():
    model = bn_net()
    ref = copy.deepcopy(model)
    batches = image_batches(n=5)
    pairs = [(x, torch.zeros(len(x))) for x in batches]
    recalibrate_bn(model, pairs, max_batches=3)
    update_bn(batches[:3], ref)
    assert_lists_equal(bn_buffers(model), bn_buffers(ref))

    dicts = [{"image": x} for x in batches]
    recalibrate_bn(model, dicts, forward=lambda m, b: m(b["image"]))
    update_bn(batches, ref)
    assert_lists_equal(bn_buffers(model), bn_buffers(ref))
    with pytest.raises(TypeError, match="forward="):
        recalibrate_bn(model, dicts)


def test_runs_without_building_a_graph():
    model = bn_net()
    outputs = []
    recalibrate_bn(model, image_batches(n=1), forward=lambda m, b: outputs.append(m(b)))
    assert not outputs[0].requires_grad


def test_saved_bn_buffers_restores_bit_for_bit_also_on_error():
    model = bn_net()
    _trained_stats(model)
    before = bn_buffers(model)
    with pytest.raises(RuntimeError):
        with saved_bn_buffers(model):
            recalibrate_bn(model, image_batches())
            raise RuntimeError("inside")
    assert_lists_equal(bn_buffers(model), before)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_max_batches(bad):
    with pytest.raises(ValueError, match="max_batches"):
        recalibrate_bn(bn_net(), image_batches(), max_batches=bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: batches moved to cuda")
def test_moves_batches_to_the_model_device():
    model = bn_net().cuda()
    ref = copy.deepcopy(model)
    cpu_batches = image_batches()
    recalibrate_bn(model, cpu_batches)
    update_bn(cpu_batches, ref, device="cuda")
    assert_lists_equal(bn_buffers(model), bn_buffers(ref))
