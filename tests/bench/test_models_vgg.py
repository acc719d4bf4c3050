"""VGG-16(-BN) in the SWA/Gadam CIFAR form and the 13-layer ConvLarge: counts by closed form."""

import pytest
import torch

from polyak.bench.models._layers import count_parameters
from polyak.bench.models.vgg import VGG, ConvLarge, conv_large13, vgg16, vgg16_bn

VGG16_WIDTHS = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]


def vgg16_params(classes, batch_norm, head="mlp", cin=3):
    total = 0
    for w in VGG16_WIDTHS:
        total += 9 * cin * w + w + (2 * w if batch_norm else 0)  # 3x3 conv with bias (+ BN)
        cin = w
    if head == "mlp":  # Linear(512, 512), Linear(512, 512), Linear(512, classes)
        return total + 2 * (512 * 512 + 512) + 512 * classes + classes
    return total + 512 * classes + classes


def test_vgg16_counts():
    assert vgg16_params(100, True) == 15_299_748  # the ~15.3M of Gadam's VGG-16 on CIFAR-100
    assert count_parameters(vgg16_bn(100)) == 15_299_748
    assert count_parameters(vgg16_bn()) == vgg16_params(10, True)
    assert count_parameters(vgg16(100)) == vgg16_params(100, False)
    assert count_parameters(VGG(16, classifier="linear")) == vgg16_params(10, True, "linear")
    # torchvision's VGG-16 feature extractor (ImageNet) has 14,714,688 parameters.
    assert vgg16_params(10, False) - 2 * (512 * 512 + 512) - 5130 == 14_714_688


def conv_large_params(classes):
    """BN after every (bias-free) conv: 3x 3x3 128, 3x 3x3 256, 3x3 512, 1x1 256, 1x1 128."""
    layers = [(3, 128, 9), (128, 128, 9), (128, 128, 9), (128, 256, 9), (256, 256, 9),
              (256, 256, 9), (256, 512, 9), (512, 256, 1), (256, 128, 1)]
    return sum(cin * cout * k + 2 * cout for cin, cout, k in layers) + 128 * classes + classes


def test_conv_large_count_and_shape():
    model = conv_large13()
    assert count_parameters(model) == conv_large_params(10) == 3_121_802
    assert count_parameters(ConvLarge(100)) == conv_large_params(100)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_vgg_forward_on_32_and_28_pixels():
    assert vgg16_bn(100)(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    model = vgg16_bn(10, in_channels=1)  # TSO-ALRA's VGG on Fashion-MNIST
    assert count_parameters(model) == vgg16_params(10, True, cin=1)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="depth"):
        VGG(17)
    with pytest.raises(ValueError, match="classifier"):
        VGG(16, classifier="conv")
