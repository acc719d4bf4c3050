"""The Fashion-MNIST networks: AlexNet-style and the small 2-conv CNN; counts by closed form."""

import pytest
import torch

from polyak.bench.models._layers import count_parameters
from polyak.bench.models.fmnist import AlexNet, SmallCNN, alexnet, small_cnn


def alexnet_params(cin, classes):
    convs = [(cin, 64, 11), (64, 192, 5), (192, 384, 3), (384, 256, 3), (256, 256, 3)]
    return sum(a * b * k * k + b for a, b, k in convs) + 256 * classes + classes


def test_alexnet_counts_and_shapes():
    # bearpaw's CIFAR AlexNet: 2.47M parameters on CIFAR-10.
    assert alexnet_params(3, 10) == 2_472_266
    assert count_parameters(AlexNet(10, 3, 32)) == 2_472_266
    assert count_parameters(alexnet()) == alexnet_params(1, 10)
    assert alexnet()(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert AlexNet(100, 3, 32)(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_alexnet_reaches_one_pixel_before_the_classifier():
    for size, cin in ((28, 1), (32, 3)):
        features = AlexNet(10, cin, size).features(torch.randn(1, cin, size, size))
        assert features.shape == (1, 256, 1, 1)


def test_small_cnn():
    # conv5x5 1->10, conv5x5 10->20, 20*4*4 -> 1000 -> 10
    expected = (25 * 10 + 10) + (25 * 10 * 20 + 20) + (320 * 1000 + 1000) + (1000 * 10 + 10)
    model = small_cnn()
    assert count_parameters(model) == expected == 336_290
    model.eval()
    x = torch.randn(3, 1, 28, 28)
    assert model(x).shape == (3, 10) and torch.equal(model(x), model(x))
    assert SmallCNN(10, 3, 32)(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="image_size"):
        AlexNet(image_size=64)
    with pytest.raises(ValueError, match="hidden"):
        SmallCNN(hidden=0)
