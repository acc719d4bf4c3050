"""Uniform (Polyak/SWA/Gadam) averaging against torch's AveragedModel and the arithmetic mean."""

from __future__ import annotations

import pytest
import torch
from avg_helpers import (
    assert_lists_close,
    assert_lists_equal,
    mlp,
    params_of,
    random_iterate,
    regression_data,
    set_params,
    train_epoch,
)
from torch.optim.swa_utils import AveragedModel

from polyak.averaging import Uniform


@pytest.mark.parametrize("foreach", [True, False])
def test_equals_averaged_model_and_arithmetic_mean(foreach):
    model = mlp()
    avg = Uniform(model, foreach=foreach)
    ref = AveragedModel(model)
    iterates = []
    for epoch in range(6):
        iterates.append(random_iterate(model, seed=epoch))
        avg.end_epoch(epoch)
        ref.update_parameters(model)
    assert avg.n_averaged == avg.collected == 6
    assert_lists_close(avg.averaged(), [p.detach() for p in ref.module.parameters()])
    means = [torch.stack([it[i] for it in iterates]).mean(0) for i in range(len(iterates[0]))]
    assert_lists_close(avg.averaged(), means)


def test_foreach_and_single_tensor_paths_agree_bit_for_bit():
    model = mlp()
    fast, slow = Uniform(model, foreach=True), Uniform(model, foreach=False)
    for epoch in range(5):
        random_iterate(model, seed=10 + epoch)
        fast.end_epoch(epoch)
        slow.end_epoch(epoch)
    assert_lists_equal(fast.average, slow.average)


def test_constant_iterates_average_to_themselves():
    model = mlp()
    w = params_of(model)
    avg = Uniform(model)
    for epoch in range(7):
        avg.end_epoch(epoch)
    assert_lists_equal(avg.averaged(), w)


def test_one_collected_model_gives_that_model():
    model = mlp()
    avg = Uniform(model)
    w = random_iterate(model, seed=4)
    avg.end_epoch(0)
    random_iterate(model, seed=5)            # the live model moves on
    assert_lists_equal(avg.averaged(), w)


def test_every_n_steps_collects_at_steps_n_2n_3n():
    model = mlp()
    avg = Uniform(model, every=3)
    for step in range(1, 11):
        set_params(model, [torch.full(p.shape, float(step)) for p in model.parameters()])
        avg.step()
        assert avg.n_averaged == step // 3
    # steps 3, 6 and 9 were collected: their mean is 6
    for a in avg.averaged():
        assert torch.equal(a, torch.full(a.shape, 6.0))


def test_start_epoch_respected():
    model = mlp()
    avg = Uniform(model, start_epoch=2)
    for epoch in range(5):
        set_params(model, [torch.full(p.shape, float(epoch)) for p in model.parameters()])
        avg.end_epoch(epoch)
        assert avg.has_average == (epoch >= 2)
    assert avg.n_averaged == 3
    for a in avg.averaged():                 # epochs 2, 3, 4
        assert torch.equal(a, torch.full(a.shape, 3.0))


def test_start_epoch_with_every_n_steps():
    model = mlp()
    avg = Uniform(model, start_epoch=1, every=2)
    collected_values = []
    value = 0.0
    for epoch in range(3):
        for _ in range(3):                   # 3 steps per epoch, global steps 1..9
            value += 1
            set_params(model, [torch.full(p.shape, value) for p in model.parameters()])
            avg.step()
            if avg.steps % 2 == 0 and epoch >= 1:
                collected_values.append(value)
        avg.end_epoch(epoch)
    assert collected_values == [4.0, 6.0, 8.0]
    assert avg.n_averaged == 3
    for a in avg.averaged():
        assert torch.equal(a, torch.full(a.shape, 6.0))


def test_average_of_sgd_iterates_on_a_trained_net():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    avg, ref = Uniform(model, start_epoch=1), AveragedModel(model)
    data = regression_data()
    for epoch in range(4):
        train_epoch(model, opt, data)
        avg.end_epoch(epoch)
        if epoch >= 1:
            ref.update_parameters(model)
    assert_lists_close(avg.averaged(), [p.detach() for p in ref.module.parameters()])


def test_memory_is_one_copy_of_the_parameters():
    model = mlp()
    avg = Uniform(model)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert avg.nbytes == param_bytes


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: model on cuda, copy on cpu")
def test_device_keeps_the_average_on_cpu():
    model = mlp().cuda()
    avg = Uniform(model, device="cpu")
    iterates = []
    for epoch in range(3):
        iterates.append([p.detach().cpu().clone() for p in model.parameters()])
        avg.end_epoch(epoch)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * (epoch + 1))
    assert all(a.device.type == "cpu" for a in avg.average)
    means = [torch.stack([it[i] for it in iterates]).mean(0) for i in range(len(iterates[0]))]
    assert_lists_close(avg.averaged(), means)
    avg.copy_to(model)
    assert_lists_close([p.detach().cpu() for p in model.parameters()], means)
