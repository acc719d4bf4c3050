"""VGG-style networks for 32x32 (and 28x28) images.

- :class:`VGG` (Simonyan & Zisserman 2014) in the CIFAR form of the SWA code that Gadam uses:
  the 13 3x3 convolutions of VGG-16 (with bias; BatchNorm after each if ``batch_norm``), five 2x2
  max-poolings, then the classifier Dropout-Linear(512, 512)-ReLU-Dropout-Linear(512, 512)-ReLU-
  Linear(512, classes). VGG-16-BN: 15,299,748 parameters on CIFAR-100, 15,253,578 on CIFAR-10.
  ``classifier="linear"`` gives the single Linear(512, classes) head of bearpaw's
  pytorch-classification (14.7M). Max-pooling uses ``ceil_mode`` so that 28x28 Fashion-MNIST
  images (TSO-ALRA's VGG on Fashion-MNIST) reach 1x1; on 32x32 inputs this changes nothing.
- :class:`ConvLarge`: the "VGG-like 13-layer network" of the phase-wise aggregation paper, its
  reference [30] (Tarvainen & Valpola, mean teacher), itself Laine & Aila's ConvLarge: 3x conv3x3
  128, max-pool, dropout 0.5, 3x conv3x3 256, max-pool, dropout 0.5, conv3x3 512 (no padding),
  conv1x1 256, conv1x1 128, global average pooling, Linear(128, classes); BatchNorm and
  LeakyReLU(0.1) after every convolution. Departures: the input Gaussian noise of those
  semi-supervised papers is left out, and plain BatchNorm replaces their weight normalisation +
  mean-only BatchNorm (the phase-wise paper does not say which it used). 3,121,802 parameters on
  CIFAR-10.
"""

from __future__ import annotations

import torch
from torch import nn

from polyak.bench.models._layers import check_int, he_init

__all__ = ["ConvLarge", "VGG", "conv_large13", "vgg16", "vgg16_bn"]

CONFIGS = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"),
}


class VGG(nn.Module):
    """VGG-``depth`` for small images (SWA-code CIFAR form)."""

    def __init__(self, depth: int = 16, num_classes: int = 10, in_channels: int = 3,
                 batch_norm: bool = True, classifier: str = "mlp", dropout: float = 0.5) -> None:
        if depth not in CONFIGS:
            raise ValueError(f"Invalid depth: {depth!r} (allowed: {', '.join(map(str, CONFIGS))})")
        if classifier not in ("mlp", "linear"):
            raise ValueError(f"Invalid classifier: {classifier!r} (allowed: 'mlp', 'linear')")
        check_int("num_classes", num_classes)
        check_int("in_channels", in_channels)
        if not 0 <= dropout < 1:
            raise ValueError(f"Invalid dropout: {dropout!r} (allowed: 0 <= dropout < 1)")
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for v in CONFIGS[depth]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
                continue
            layers.append(nn.Conv2d(cin, v, 3, padding=1))
            layers += [nn.BatchNorm2d(v)] if batch_norm else []
            layers.append(nn.ReLU(inplace=True))
            cin = v
        self.features = nn.Sequential(*layers)
        if classifier == "mlp":
            self.classifier = nn.Sequential(
                nn.Dropout(dropout), nn.Linear(512, 512), nn.ReLU(inplace=True),
                nn.Dropout(dropout), nn.Linear(512, 512), nn.ReLU(inplace=True),
                nn.Linear(512, num_classes))
        else:
            self.classifier = nn.Linear(512, num_classes)
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class ConvLarge(nn.Module):
    """The 13-layer VGG-like ConvLarge (Laine & Aila 2017; Tarvainen & Valpola 2017)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.5,
                 slope: float = 0.1) -> None:
        check_int("num_classes", num_classes)
        check_int("in_channels", in_channels)
        if not 0 <= dropout < 1:
            raise ValueError(f"Invalid dropout: {dropout!r} (allowed: 0 <= dropout < 1)")
        super().__init__()

        def conv(cin: int, cout: int, kernel: int, padding: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, kernel, padding=padding, bias=False),
                    nn.BatchNorm2d(cout), nn.LeakyReLU(slope)]

        self.features = nn.Sequential(
            *conv(in_channels, 128, 3, 1), *conv(128, 128, 3, 1), *conv(128, 128, 3, 1),
            nn.MaxPool2d(2, 2), nn.Dropout(dropout),
            *conv(128, 256, 3, 1), *conv(256, 256, 3, 1), *conv(256, 256, 3, 1),
            nn.MaxPool2d(2, 2), nn.Dropout(dropout),
            *conv(256, 512, 3, 0), *conv(512, 256, 1, 0), *conv(256, 128, 1, 0),
            nn.AdaptiveAvgPool2d(1),
        )
        self.fc = nn.Linear(128, num_classes)
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


def vgg16_bn(num_classes: int = 10, in_channels: int = 3) -> VGG:
    """VGG-16 with BatchNorm, SWA/Gadam CIFAR form (512-512 classifier): 15.3M parameters."""
    return VGG(16, num_classes, in_channels, batch_norm=True)


def vgg16(num_classes: int = 10, in_channels: int = 3) -> VGG:
    """VGG-16 without BatchNorm, SWA/Gadam CIFAR form (Gadam's Figs. 2 and 5)."""
    return VGG(16, num_classes, in_channels, batch_norm=False)


def conv_large13(num_classes: int = 10, in_channels: int = 3) -> ConvLarge:
    """VGG-like 13-layer ConvLarge of the phase-wise aggregation paper: 3.1M parameters."""
    return ConvLarge(num_classes, in_channels)
