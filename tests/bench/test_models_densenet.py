"""DenseNet-BC-100 (k=12): published count 769,162 on CIFAR-10, by closed form; forward."""

import pytest
import torch

from polyak.bench.models._layers import count_parameters
from polyak.bench.models.densenet import DenseNetBC, densenet_bc100


def densenet_params(depth, k, classes):
    """Stem 3x3 to 2k; bottleneck layers BN, 1x1 to 4k, BN, 3x3 to k; transitions BN and 1x1
    halving the channels; final BN and linear head."""
    n = (depth - 4) // 6
    total, c = 9 * 3 * 2 * k, 2 * k
    for block in range(3):
        for _ in range(n):
            total += 2 * c + c * 4 * k + 2 * 4 * k + 9 * 4 * k * k
            c += k
        if block < 2:
            total += 2 * c + c * (c // 2)
            c //= 2
    return total + 2 * c + c * classes + classes


def test_published_count():
    assert densenet_params(100, 12, 10) == 769_162
    assert count_parameters(densenet_bc100()) == 769_162
    assert count_parameters(densenet_bc100(100)) == densenet_params(100, 12, 100)


def test_forward():
    model = DenseNetBC(16, 4, num_classes=7)
    assert count_parameters(model) == densenet_params(16, 4, 7)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_invalid_arguments():
    with pytest.raises(ValueError, match="depth"):
        DenseNetBC(99)
    with pytest.raises(ValueError, match="compression"):
        DenseNetBC(100, compression=0)
