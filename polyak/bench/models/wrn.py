"""Wide residual network (Zagoruyko & Komodakis, 2016), CIFAR form: WRN-d-k.

Used by the phase-wise aggregation paper (its Fig. 1 and tables, CIFAR-100) and Gadam (WRN-28-10).
Depth d = 6n + 4: a 3x3 stem of 16 channels, three groups of n pre-activation blocks of widths
16k, 32k, 64k (BN-ReLU-conv3x3-BN-ReLU-[dropout]-conv3x3), 1x1 convolution shortcuts where the
width or stride changes, a final BN-ReLU, global average pooling and a linear classifier.
Convolutions carry no bias, as in the authors' code: WRN-28-10 has 36,479,194 parameters on
CIFAR-10 (36.5M, the paper's Table).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from polyak.bench.models._layers import check_depth, check_int, he_init

__all__ = ["WideResNet", "wrn28_10"]


class WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.dropout = dropout
        self.project = (nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
                        if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv1(pre)
        out = F.dropout(F.relu(self.bn2(out)), self.dropout, self.training)
        out = self.conv2(out)
        # The authors' code takes the projection from the pre-activated input.
        return out + (x if self.project is None else self.project(pre))


class WideResNet(nn.Module):
    """WRN-depth-widen for 32x32 images (Zagoruyko & Komodakis 2016)."""

    def __init__(self, depth: int = 28, widen: int = 10, num_classes: int = 10,
                 in_channels: int = 3, dropout: float = 0.0) -> None:
        n = check_depth(depth, 6, 4)
        check_int("widen", widen)
        check_int("num_classes", num_classes)
        check_int("in_channels", in_channels)
        if not 0 <= dropout < 1:
            raise ValueError(f"Invalid dropout: {dropout!r} (allowed: 0 <= dropout < 1)")
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        blocks, cin = [], 16
        for group, width in enumerate((16 * widen, 32 * widen, 64 * widen)):
            for i in range(n):
                blocks.append(WideBlock(cin, width, 2 if group and i == 0 else 1, dropout))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.blocks(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def wrn28_10(num_classes: int = 10, in_channels: int = 3) -> WideResNet:
    """WRN-28-10 (Zagoruyko & Komodakis 2016), no dropout: 36.5M parameters."""
    return WideResNet(28, 10, num_classes, in_channels)
