"""DenseNet-BC (Huang et al., "Densely connected convolutional networks", 2017), CIFAR form.

The vanilla-SGD paper trains DenseNet with depth 100 and growth rate k = 12 (DenseNet-BC-100):
a 3x3 stem of 2k channels; three dense blocks of n = (depth - 4) / 6 bottleneck layers
(BN-ReLU-conv1x1 to 4k channels, BN-ReLU-conv3x3 to k channels, output concatenated to the
input); between blocks a transition BN-ReLU-conv1x1 halving the channels (compression 0.5) and
2x2 average pooling; a final BN-ReLU, global average pooling and a linear classifier.
No bias in the convolutions (the authors' code): 769,162 parameters on CIFAR-10 (0.8M).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from polyak.bench.models._layers import check_depth, check_int, he_init

__all__ = ["DenseNetBC", "densenet_bc100"]


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([x, out], dim=1)


class Transition(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.bn, self.conv = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNetBC(nn.Module):
    """DenseNet-BC of depth 6n+4 and growth rate ``growth`` for 32x32 images."""

    def __init__(self, depth: int = 100, growth: int = 12, num_classes: int = 10,
                 in_channels: int = 3, compression: float = 0.5) -> None:
        n = check_depth(depth, 6, 4)
        check_int("growth", growth)
        check_int("num_classes", num_classes)
        check_int("in_channels", in_channels)
        if not 0 < compression <= 1:
            raise ValueError(f"Invalid compression: {compression!r} (allowed: 0 < c <= 1)")
        super().__init__()
        channels = 2 * growth
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)]
        for block in range(3):
            for _ in range(n):
                layers.append(DenseLayer(channels, growth))
                channels += growth
            if block < 2:
                out = int(channels * compression)
                layers.append(Transition(channels, out))
                channels = out
        self.features = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, num_classes)
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.features(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def densenet_bc100(num_classes: int = 10, in_channels: int = 3) -> DenseNetBC:
    """DenseNet-BC-100, growth rate 12 (Huang et al. 2017): 0.8M parameters."""
    return DenseNetBC(100, 12, num_classes, in_channels)
