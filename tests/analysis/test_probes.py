import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import update_bn

from polyak.analysis.probes import segment_losses, two_point_average_losses


def bn_net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def data(seed=0, n_batches=3, size=10):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 5, generator=gen), torch.randint(0, 3, (size,), generator=gen))
            for _ in range(n_batches)]


def reference_eval(model, weights, batches, bn_loader):
    """Independent evaluation: a copy with the weights, torch's update_bn, a plain loop."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for p, w in zip(m.parameters(), weights):
            p.copy_(w)
    if bn_loader is not None:
        update_bn(bn_loader, m)
    m.eval()
    total, hits, n = 0.0, 0, 0
    with torch.no_grad():
        for x, y in batches:
            out = m(x)
            total += F.cross_entropy(out, y, reduction="sum").item()
            hits += (out.argmax(1) == y).sum().item()
            n += len(y)
    return total / n, hits / n


def snapshot(model):
    return ([p.detach().clone() for p in model.parameters()],
            [b.detach().clone() for b in model.buffers()],
            [m.training for m in model.modules()])


def assert_same(model, snap):
    params, buffers, modes = snap
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))
    assert all(torch.equal(b, q) for b, q in zip(model.buffers(), buffers))
    assert [m.training for m in model.modules()] == modes


@pytest.mark.parametrize("recalibrate", [True, False])
def test_segment_points_equal_direct_evaluation_and_weights_are_restored(recalibrate):
    model = bn_net(0)
    model.train()
    model(data(9)[0][0])  # give the live model some running statistics of its own
    w_a = [p.detach().clone() for p in bn_net(1).parameters()]
    w_b = [p.detach().clone() for p in bn_net(2).parameters()]
    test, bn_loader = data(3), (data(4, n_batches=4) if recalibrate else None)
    snap = snapshot(model)
    probe = segment_losses(model, w_a, w_b, F.cross_entropy, test, [0.0, 0.3, 1.0],
                           bn_loader=bn_loader)
    assert_same(model, snap)
    for i, alpha in enumerate([0.0, 0.3, 1.0]):
        point = [(1 - alpha) * a + alpha * b for a, b in zip(w_a, w_b)]
        loss, acc = reference_eval(model, point, test, bn_loader)
        assert probe.loss[i] == pytest.approx(loss, rel=1e-5)
        assert probe.accuracy[i] == pytest.approx(acc)


def test_state_dict_weights_give_the_same_probe_as_lists():
    model = bn_net(0)
    a, b = bn_net(1), bn_net(2)
    as_dict = {n: p.detach() for n, p in a.named_parameters()}
    as_list = [p.detach() for p in b.parameters()]
    probe = segment_losses(model, as_dict, as_list, F.cross_entropy, data(3), [0.0, 1.0])
    loss_a, _ = reference_eval(model, list(as_dict.values()), data(3), None)
    loss_b, _ = reference_eval(model, as_list, data(3), None)
    assert probe.loss.tolist() == pytest.approx([loss_a, loss_b], rel=1e-6)


def test_two_point_average_losses_match_manual_averages():
    model = bn_net(0)
    iterates = [[p.detach().clone() for p in bn_net(s).parameters()] for s in range(5)]
    test, bn_loader = data(3), data(4)
    snap = snapshot(model)
    probe = two_point_average_losses(model, iterates, F.cross_entropy, test, [0, 1, 4],
                                     bn_loader=bn_loader)
    assert_same(model, snap)
    assert probe.x.tolist() == [0, 1, 4]
    for i, k in enumerate([0, 1, 4]):
        avg = [(a + b) / 2 for a, b in zip(iterates[4], iterates[4 - k])]
        loss, _ = reference_eval(model, avg, test, bn_loader)
        assert probe.loss[i] == pytest.approx(loss, rel=1e-5)


def test_regression_outputs_have_nan_accuracy():
    model = nn.Linear(5, 1)
    batches = [(torch.randn(4, 5), torch.randn(4, 1))]
    w = [p.detach() for p in model.parameters()]
    probe = segment_losses(model, w, w, F.mse_loss, batches, [0.5])
    with torch.no_grad():
        expected = F.mse_loss(model(batches[0][0]), batches[0][1]).item()
    assert probe.loss[0] == pytest.approx(expected)
    assert torch.isnan(torch.tensor(probe.accuracy[0]))


def test_invalid_inputs():
    model = bn_net(0)
    w = [p.detach() for p in model.parameters()]
    with pytest.raises(ValueError, match="k"):
        two_point_average_losses(model, [w, w], F.cross_entropy, data(), [2])
    with pytest.raises(ValueError, match="weights"):
        segment_losses(model, w[:-1], w, F.cross_entropy, data(), [0.5])
    with pytest.raises(ValueError, match="alphas"):
        segment_losses(model, w, w, F.cross_entropy, data(), [])
