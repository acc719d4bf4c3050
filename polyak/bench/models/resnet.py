"""Residual networks in their CIFAR form (32x32 inputs, three stages of 16/32/64 channels).

- :class:`ResNet` (He et al., "Deep residual learning", 2016, Sec. 4.2): depth 6n+2, basic
  blocks, option-A identity shortcuts (stride-2 subsampling plus zero channels, no parameters),
  as the paper's CIFAR experiments: ResNet-20 has 269,722 parameters (0.27M), ResNet-56 853,018
  (0.85M), ResNet-110 1,727,962 (1.7M), the paper's Table 6. (The often-quoted 272,474 and
  855,770 are ``shortcut="B"``: 1x1 projection + BatchNorm where the shape changes.) The
  vanilla-SGD paper trains ResNet-56 and "ResNet-120" (read as ResNet-110).
- :class:`PreResNet` (He et al., "Identity mappings", 2016): pre-activation blocks. Gadam's
  PreResNet-110 follows the SWA code (Izmailov et al.), ported from bearpaw's
  pytorch-classification: bottleneck blocks for depth >= 44 (depth 9n+2, expansion 4), basic
  blocks below (6n+2), 1x1 projection shortcuts without BatchNorm where shapes change.
  ``block="basic"`` gives the 1.7M-parameter PreResNet-110 of the identity-mappings paper.
Global average pooling is adaptive, so 28x28 inputs work too (same parameter count).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from polyak.bench.models._layers import check_depth, check_int, he_init

__all__ = ["PreResNet", "ResNet", "preresnet110", "resnet20", "resnet56", "resnet110"]


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, plus the shortcut, then ReLU. Where the shape changes the shortcut
    is option A (stride-2 subsampling, zero channels split on both sides) or option B (1x1
    projection + BatchNorm)."""

    def __init__(self, cin: int, cout: int, stride: int, shortcut: str = "A") -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(cin, cout, stride), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = _conv3x3(cout, cout), nn.BatchNorm2d(cout)
        self.stride, self.extra = stride, cout - cin
        self.project = None
        if shortcut == "B" and (stride != 1 or cin != cout):
            self.project = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                         nn.BatchNorm2d(cout))

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.project is not None:
            return self.project(x)
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra:
            x = F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet of depth 6n+2 (He et al. 2016, Sec. 4.2), option-A shortcuts by default."""

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3,
                 shortcut: str = "A") -> None:
        n = check_depth(depth, 6, 2)
        check_int("num_classes", num_classes)
        check_int("in_channels", in_channels)
        if shortcut not in ("A", "B"):
            raise ValueError(f"Invalid shortcut: {shortcut!r} (allowed: 'A', 'B')")
        super().__init__()
        self.conv, self.bn = _conv3x3(in_channels, 16), nn.BatchNorm2d(16)
        blocks, cin = [], 16
        for stage, width in enumerate((16, 32, 64)):
            for i in range(n):
                blocks.append(BasicBlock(cin, width, 2 if stage and i == 0 else 1, shortcut))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class PreBasic(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), _conv3x3(cin, planes, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(planes), _conv3x3(planes, planes)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))


class PreBottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, planes, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(planes), _conv3x3(planes, planes, stride)
        self.bn3, self.conv3 = nn.BatchNorm2d(planes), nn.Conv2d(planes, 4 * planes, 1, bias=False)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return self.conv3(F.relu(self.bn3(out)))


class PreBlock(nn.Module):
    """A pre-activation block (basic or bottleneck) and its shortcut: identity, or a 1x1
    projection (no BatchNorm, as in the SWA/bearpaw code) when the shape changes."""

    def __init__(self, kind: type, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        self.body = kind(cin, planes, stride)
        cout = planes * kind.expansion
        self.project = (nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
                        if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.project is None else self.project(x)
        return self.body.residual(x) + shortcut


class PreResNet(nn.Module):
    """CIFAR pre-activation ResNet: ``block="auto"`` is bottleneck for depth >= 44 (9n+2), basic
    below (6n+2), as the SWA code Gadam uses; ``"basic"``/``"bottleneck"`` force one."""

    def __init__(self, depth: int = 110, num_classes: int = 10, in_channels: int = 3,
                 block: str = "auto") -> None:
        if block not in ("auto", "basic", "bottleneck"):
            raise ValueError(f"Invalid block: {block!r} (allowed: 'auto', 'basic', 'bottleneck')")
        bottleneck = block == "bottleneck" or (block == "auto" and isinstance(depth, int)
                                               and depth >= 44)
        kind = PreBottleneck if bottleneck else PreBasic
        n = check_depth(depth, 9, 2) if bottleneck else check_depth(depth, 6, 2)
        check_int("num_classes", num_classes)
        check_int("in_channels", in_channels)
        super().__init__()
        self.conv = _conv3x3(in_channels, 16)
        blocks, cin = [], 16
        for stage, planes in enumerate((16, 32, 64)):
            for i in range(n):
                blocks.append(PreBlock(kind, cin, planes, 2 if stage and i == 0 else 1))
                cin = planes * kind.expansion
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.blocks(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def resnet20(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    """ResNet-20, CIFAR form, option-A shortcuts (He et al. 2016): 0.27M parameters."""
    return ResNet(20, num_classes, in_channels)


def resnet56(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    """ResNet-56, CIFAR form, option-A shortcuts (vanilla-SGD paper): 0.85M parameters."""
    return ResNet(56, num_classes, in_channels)


def resnet110(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    """ResNet-110, CIFAR form, option-A shortcuts (vanilla-SGD paper's deeper ResNet): 1.7M."""
    return ResNet(110, num_classes, in_channels)


def preresnet110(num_classes: int = 10, in_channels: int = 3) -> PreResNet:
    """PreResNet-110 with bottleneck blocks, as the SWA code used by Gadam."""
    return PreResNet(110, num_classes, in_channels)
