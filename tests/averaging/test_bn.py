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


# ---------------------------------------------------------------- stale statistics (issue 21)
def _perturb(model, scale=0.5, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def _stale_warnings(record):
    from polyak.averaging import StaleBatchNormWarning

    return [w for w in record if issubclass(w.category, StaleBatchNormWarning)]


def test_phase_end_without_bn_loader_warns_once_and_keep_bn_stats_is_silent():
    """Issue 21 defect 5: PWA's phase end wrote the aggregate into a BatchNorm model without
    bn_loader and silently kept the pre-aggregation statistics."""
    import warnings

    from polyak.averaging import KEEP_BN_STATS, PhaseWise

    for bn_loader, expected in ((None, 1), (image_batches(), 0), (KEEP_BN_STATS, 0)):
        model = bn_net()
        _trained_stats(model)
        pwa = PhaseWise(model, phases=[2, 2])
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            for epoch in range(4):                  # two phase ends
                _perturb(model, seed=epoch)
                stats = bn_buffers(model)
                pwa.end_epoch(epoch, bn_loader=bn_loader)
        stale = _stale_warnings(record)
        assert len(stale) == expected, (bn_loader, [str(w.message) for w in stale])
        if expected:
            text = str(stale[0].message)
            assert "PhaseWise" in text and "bn_loader" in text and "KEEP_BN_STATS" in text
        if bn_loader is KEEP_BN_STATS:               # the live statistics, kept as they were
            assert_lists_equal(bn_buffers(model), stats)


def test_applied_average_without_bn_loader_warns_once_not_for_live_weights_or_no_batchnorm():
    import warnings

    from polyak.averaging import KEEP_BN_STATS, Uniform

    model = bn_net()
    _trained_stats(model)
    avg = Uniform(model, start_epoch=0)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with avg.applied():                          # nothing averaged yet: the live weights
            pass
        assert not _stale_warnings(record)
        avg.end_epoch(0)
        _perturb(model)
        avg.end_epoch(1)
        for _ in range(2):
            with avg.applied():
                pass
        with avg.applied(bn_loader=KEEP_BN_STATS) as m:   # on purpose: the live statistics
            assert_lists_equal(bn_buffers(m), bn_buffers(model))
        plain = Uniform(mlp(), start_epoch=0)        # no BatchNorm: nothing can be stale
        plain.end_epoch(0)
        with plain.applied():
            pass
    assert len(_stale_warnings(record)) == 1
    assert "Uniform.applied()" in str(_stale_warnings(record)[0].message)
