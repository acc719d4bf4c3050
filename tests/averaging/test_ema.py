"""EMA against a hand computation, torch's EMA AveragedModel, and its implied weights."""

from __future__ import annotations

import pytest
import torch
from avg_helpers import assert_lists_close, assert_lists_equal, mlp, random_iterate
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from polyak.averaging import EMA


@pytest.mark.parametrize("bias_correction", [False, True])
def test_hand_computation(bias_correction):
    d = 0.8
    model = mlp()
    ema = EMA(model, decay=d, bias_correction=bias_correction)
    iterates = []
    for step in range(6):
        iterates.append(random_iterate(model, seed=step))
        ema.step()
    expected = []
    for i in range(len(iterates[0])):
        if bias_correction:
            e = torch.zeros_like(iterates[0][i])
            for it in iterates:
                e = d * e + (1 - d) * it[i]
            e = e / (1 - d ** len(iterates))
        else:
            e = iterates[0][i].clone()
            for it in iterates[1:]:
                e = d * e + (1 - d) * it[i]
        expected.append(e)
    assert ema.n_averaged == 6
    assert_lists_close(ema.averaged(), expected)


def test_equals_torch_ema_averaged_model():
    model = mlp()
    ema = EMA(model, decay=0.9)
    ref = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    for step in range(8):
        random_iterate(model, seed=100 + step)
        ema.step()
        ref.update_parameters(model)
    assert_lists_close(ema.averaged(), [p.detach() for p in ref.module.parameters()])


@pytest.mark.parametrize("bias_correction", [False, True])
def test_implied_weights_sum_to_one(bias_correction):
    # one parameter vector of n entries; iterate k is the k-th unit vector, so the averaged
    # vector lists the weight each iterate gets
    n, d = 7, 0.6
    model = nn.Module()
    model.w = nn.Parameter(torch.zeros(n, dtype=torch.float64))
    ema = EMA(model, decay=d, bias_correction=bias_correction)
    for k in range(n):
        with torch.no_grad():
            model.w.copy_(torch.eye(n, dtype=torch.float64)[k])
        ema.step()
    weights = ema.averaged()[0]
    assert abs(float(weights.sum()) - 1.0) < 1e-12
    for k in range(1, n + 1):                  # closed forms of the weight of iterate k
        if bias_correction:
            want = (1 - d) * d ** (n - k) / (1 - d ** n)
        else:
            want = d ** (n - 1) if k == 1 else (1 - d) * d ** (n - k)
        assert abs(float(weights[k - 1]) - want) < 1e-12


def test_every_epoch_and_every_n_steps():
    model = mlp()
    per_epoch = EMA(model, decay=0.5, every="epoch")
    every_two = EMA(model, decay=0.5, every=2)
    for step in range(1, 6):
        random_iterate(model, seed=step)
        per_epoch.step()
        every_two.step()
    assert per_epoch.n_averaged == 0 and every_two.n_averaged == 2
    per_epoch.end_epoch(0)
    per_epoch.end_epoch(1)
    assert per_epoch.n_averaged == 2


def test_decay_zero_is_the_last_iterate_and_paths_agree():
    model = mlp()
    fast = EMA(model, decay=0.0, foreach=True)
    slow = EMA(model, decay=0.0, foreach=False)
    for step in range(3):
        w = random_iterate(model, seed=step)
        fast.step()
        slow.step()
    assert_lists_equal(fast.averaged(), w)
    assert_lists_equal(fast.average, slow.average)


def test_start_epoch_delays_collection():
    model = mlp()
    ema = EMA(model, decay=0.9, start_epoch=1)
    ema.step()
    assert not ema.has_average
    ema.end_epoch(0)
    ema.step()
    assert ema.n_averaged == 1
