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


def test_small_cnn_with_batchnorm_is_the_sgdl_papers_image_setting():
    """BatchNorm after each convolution and the hidden layer, no dropout: the forward equals
    the same layers written out with torch's functional ops."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = small_cnn(hidden=64, channels=(6, 12), dropout=0.0, batchnorm=True)
    bns = [m for m in model.modules() if isinstance(m, (torch.nn.BatchNorm1d,
                                                        torch.nn.BatchNorm2d))]
    assert len(bns) == 3 and count_parameters(model) == count_parameters(
        small_cnn(hidden=64, channels=(6, 12), dropout=0.0)) + 2 * (6 + 12 + 64)
    x = torch.randn(5, 1, 28, 28)
    model.train()

    def bn(t):  # training-mode BatchNorm with the initial affine (1, 0)
        dims = [0, 2, 3] if t.dim() == 4 else [0]
        return (t - t.mean(dims, keepdim=True)) / torch.sqrt(
            t.var(dims, unbiased=False, keepdim=True) + 1e-5)

    h = F.relu(F.max_pool2d(bn(model.conv1(x)), 2))
    h = F.relu(F.max_pool2d(bn(model.conv2(h)), 2)).flatten(1)
    want = model.fc2(F.relu(bn(model.fc1(h))))
    assert torch.allclose(model(x), want, atol=1e-5)
    with pytest.raises(ValueError, match="batchnorm"):
        SmallCNN(batchnorm="yes")
