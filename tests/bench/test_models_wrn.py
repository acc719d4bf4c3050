"""Wide ResNet: WRN-28-10's published count (36,479,194 on CIFAR-10) by closed form, and a
small WRN's forward pass (WRN-28-10 itself is only constructed: its forward is too slow here)."""

import pytest
import torch

from polyak.bench.models._layers import count_parameters
from polyak.bench.models.wrn import WideResNet, wrn28_10


def wrn_params(depth, k, classes):
    """Stem 3x3 (16); per block BN, 3x3, BN, 3x3 and a 1x1 projection where the width changes;
    final BN and linear head. No conv biases."""
    n = (depth - 4) // 6
    total, cin = 9 * 3 * 16, 16
    for w in (16 * k, 32 * k, 64 * k):
        for _ in range(n):
            total += 2 * cin + 9 * cin * w + 2 * w + 9 * w * w + (cin * w if cin != w else 0)
            cin = w
    return total + 2 * cin + cin * classes + classes


def test_wrn28_10_published_count():
    assert wrn_params(28, 10, 10) == 36_479_194
    assert count_parameters(wrn28_10()) == 36_479_194


def test_small_wrn_count_forward_and_dropout():
    model = WideResNet(16, 2, num_classes=100, dropout=0.3)
    assert count_parameters(model) == wrn_params(16, 2, 100)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 100) and torch.equal(out, model(x))  # no dropout in eval
    model.train()
    assert not torch.equal(model(x), model(x))  # dropout active in training


def test_invalid_arguments():
    with pytest.raises(ValueError, match="depth"):
        WideResNet(27, 10)
    with pytest.raises(ValueError, match="dropout"):
        WideResNet(16, 1, dropout=1.0)
