"""Small networks for 28x28 grey-scale images (Fashion-MNIST), also usable on 32x32 colour ones.

- :class:`AlexNet`: TSO-ALRA trains "AlexNet ... with kernel size and stride modified to fit the
  image sizes" without giving the layers. We use the CIFAR AlexNet of bearpaw's
  pytorch-classification, whose schedule TSO-ALRA follows (164 epochs, learning rate divided by
  10 at epochs 81 and 122): conv11x11/4 64, max-pool, conv5x5 192, max-pool, conv3x3 384,
  conv3x3 256, conv3x3 256, max-pool, Linear(256, classes), ReLU after each convolution. The
  first convolution's padding is 5 on 32x32 inputs (2,472,266 parameters on CIFAR-10) and 6 on
  28x28 ones, so that both reach an 8x8 map and then 1x1 (2,456,778 on Fashion-MNIST).
- :class:`SmallCNN`: a 2-convolution LeNet-style network, the one the vanilla-SGD paper
  describes (Sec. 6.3: "20 channels, a 2D dropout layer and 2 full-connection layers with 1,000
  hidden nodes"): conv5x5 10, max-pool, ReLU, conv5x5 20, 2-D dropout, max-pool, ReLU,
  Linear(320, 1000), ReLU, dropout, Linear(1000, classes). 336,290 parameters on 28x28 inputs.
  With ``batchnorm=True`` it is that paper's image setting in small (App. A.3.1: "BN ... but
  without dropout" for its image networks): BatchNorm after each convolution and after the
  hidden linear layer (before the ReLU), and ``dropout=0``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from polyak.bench.models._layers import check_int

__all__ = ["AlexNet", "SmallCNN", "alexnet", "small_cnn"]

_ALEXNET_PADDING = {28: 6, 32: 5}


class AlexNet(nn.Module):
    """AlexNet-style network for 28x28 or 32x32 images (bearpaw's CIFAR AlexNet)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> None:
        check_int("num_classes", num_classes)
        check_int("in_channels", in_channels)
        if image_size not in _ALEXNET_PADDING:
            raise ValueError(f"Invalid image_size: {image_size!r} (allowed: 28, 32)")
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, 11, stride=4, padding=_ALEXNET_PADDING[image_size]),
            nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
        )
        self.classifier = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class SmallCNN(nn.Module):
    """Two 5x5 convolutions and two fully connected layers (vanilla-SGD paper, Sec. 6.3)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
                 hidden: int = 1000, dropout: float = 0.5, channels: tuple[int, int] = (10, 20),
                 batchnorm: bool = False) -> None:
        check_int("num_classes", num_classes)
        if len(channels) != 2:
            raise ValueError(f"Invalid channels: {channels!r} (allowed: two integers >= 1)")
        for c in channels:
            check_int("channels", c)
        check_int("in_channels", in_channels)
        check_int("hidden", hidden)
        check_int("image_size", image_size, 16)
        if not 0 <= dropout < 1:
            raise ValueError(f"Invalid dropout: {dropout!r} (allowed: 0 <= dropout < 1)")
        if not isinstance(batchnorm, bool):
            raise ValueError(f"Invalid batchnorm: {batchnorm!r} (allowed: True, False)")
        super().__init__()
        side = ((image_size - 4) // 2 - 4) // 2
        c1, c2 = channels
        self.conv1 = nn.Conv2d(in_channels, c1, 5)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        self.fc1 = nn.Linear(c2 * side * side, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)
        self.dropout = dropout
        norm = (lambda n, k: k(n)) if batchnorm else (lambda n, k: nn.Identity())
        self.bn1, self.bn2 = norm(c1, nn.BatchNorm2d), norm(c2, nn.BatchNorm2d)
        self.bn3 = norm(hidden, nn.BatchNorm1d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.max_pool2d(self.bn1(self.conv1(x)), 2))
        x = F.dropout2d(self.bn2(self.conv2(x)), self.dropout, self.training)
        x = F.relu(F.max_pool2d(x, 2)).flatten(1)
        x = F.dropout(F.relu(self.bn3(self.fc1(x))), self.dropout, self.training)
        return self.fc2(x)


def alexnet(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> AlexNet:
    """AlexNet-style network of TSO-ALRA (bearpaw's CIFAR AlexNet), 28x28 or 32x32 inputs."""
    return AlexNet(num_classes, in_channels, image_size)


def small_cnn(num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
              hidden: int = 1000, dropout: float = 0.5, channels: tuple[int, int] = (10, 20),
              batchnorm: bool = False) -> SmallCNN:
    """Small 2-conv CNN (LeNet-style, vanilla-SGD paper Sec. 6.3): 0.34M parameters on 28x28
    (``hidden=1000``, ``channels=(10, 20)``; narrower ones make a cheaper network for CPU
    budgets); ``batchnorm=True, dropout=0`` is that paper's image setting in small."""
    return SmallCNN(num_classes, in_channels, image_size, hidden, dropout, tuple(channels),
                    batchnorm)
