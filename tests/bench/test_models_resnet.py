"""ResNet / PreResNet (CIFAR forms): parameter counts by closed form and published values,
option-A shortcuts against an explicit construction, forward shapes."""

import pytest
import torch

from polyak.bench.models._layers import count_parameters
from polyak.bench.models.resnet import (
    BasicBlock,
    PreResNet,
    ResNet,
    preresnet110,
    resnet20,
    resnet56,
    resnet110,
)


def resnet_params(depth, classes, shortcut="A", cin0=3):
    """3x3 stem (16) + BN; per basic block two 3x3 convs and two BNs; option B adds a 1x1
    projection + BN where the width changes; linear head."""
    n = (depth - 2) // 6
    total, cin = 9 * cin0 * 16 + 2 * 16, 16
    for w in (16, 32, 64):
        for _ in range(n):
            total += 9 * cin * w + 9 * w * w + 2 * 2 * w
            if shortcut == "B" and cin != w:
                total += cin * w + 2 * w
            cin = w
    return total + 64 * classes + classes


def preresnet_params(depth, classes, bottleneck):
    """Pre-activation: BN before each conv; 1x1 projection (no BN) where the shape changes."""
    n = (depth - 2) // (9 if bottleneck else 6)
    total, cin = 9 * 3 * 16, 16
    for planes in (16, 32, 64):
        cout = 4 * planes if bottleneck else planes
        for _ in range(n):
            if bottleneck:
                total += 2 * cin + cin * planes + 2 * planes + 9 * planes * planes
                total += 2 * planes + planes * cout
            else:
                total += 2 * cin + 9 * cin * planes + 2 * planes + 9 * planes * planes
            if cin != cout:  # first block of a stage (also where the stride is 2)
                total += cin * cout
            cin = cout
    return total + 2 * cin + cin * classes + classes


@pytest.mark.parametrize("build,depth,published", [
    (resnet20, 20, 269_722), (resnet56, 56, 853_018), (resnet110, 110, 1_727_962)])
def test_resnet_counts(build, depth, published):
    # He et al. 2016 Table 6: 0.27M / 0.85M / 1.7M with option-A shortcuts.
    assert resnet_params(depth, 10) == published
    assert count_parameters(build()) == published
    assert count_parameters(build(num_classes=100)) == resnet_params(depth, 100)


@pytest.mark.parametrize("depth,published", [(20, 272_474), (56, 855_770)])
def test_option_b_gives_the_often_quoted_counts(depth, published):
    assert resnet_params(depth, 10, "B") == published
    assert count_parameters(ResNet(depth, shortcut="B")) == published


def test_preresnet_counts():
    # SWA/Gadam PreResNet-110: bottleneck blocks, depth 9n+2 (n = 12).
    assert count_parameters(preresnet110(100)) == preresnet_params(110, 100, True)
    assert count_parameters(PreResNet(110, 10)) == preresnet_params(110, 10, True)
    # He et al. (identity mappings) PreResNet-110 with basic blocks: 1.7M.
    basic = count_parameters(PreResNet(110, 10, block="basic"))
    assert basic == preresnet_params(110, 10, False) and round(basic / 1e6, 1) == 1.7
    # PreResNet-164 (bottleneck) is the identity-mappings paper's 1.7M network.
    assert round(count_parameters(PreResNet(164)) / 1e6, 1) == 1.7


def test_option_a_shortcut_subsamples_and_zero_pads():
    block = BasicBlock(16, 32, stride=2)
    x = torch.randn(2, 16, 8, 8)
    out = block.shortcut(x)
    assert out.shape == (2, 32, 4, 4)
    for c in range(32):
        for i in range(4):
            for j in range(4):
                expected = x[:, c - 8, 2 * i, 2 * j] if 8 <= c < 24 else torch.zeros(2)
                assert torch.equal(out[:, c, i, j], expected)


def test_forward_shapes_and_gradients():
    for model in (ResNet(8), PreResNet(11, block="bottleneck"), PreResNet(20)):
        x = torch.randn(2, 3, 32, 32)
        out = model(x)
        assert out.shape == (2, 10)
        out.sum().backward()
        assert all(p.grad is not None for p in model.parameters())
    assert ResNet(8, in_channels=1)(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_he_init_of_convolutions():
    conv = ResNet(20).blocks[-1].conv2  # 64 -> 64, 3x3: fan_out = 576
    assert abs(conv.weight.std().item() / (2 / 576) ** 0.5 - 1) < 0.05


def test_invalid_arguments():
    with pytest.raises(ValueError, match="depth"):
        ResNet(21)
    with pytest.raises(ValueError, match="depth"):
        PreResNet(112)  # bottleneck needs 9n+2
    with pytest.raises(ValueError, match="shortcut"):
        ResNet(20, shortcut="C")
    with pytest.raises(ValueError, match="block"):
        PreResNet(110, block="wide")
