"""Small shared pieces of the image models: argument checks, He initialisation, parameter count."""

from __future__ import annotations

from torch import nn


def check_int(name: str, value: int, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"Invalid {name}: {value!r} (allowed: an integer >= {low})")


def check_depth(depth: int, step: int, offset: int, name: str = "depth") -> int:
    """Blocks per stage ``n`` for ``depth = step * n + offset``, or a ValueError."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < step + offset \
            or (depth - offset) % step:
        raise ValueError(f"Invalid {name}: {depth!r} (allowed: {step}n+{offset} for n >= 1)")
    return (depth - offset) // step


def he_init(model: nn.Module) -> nn.Module:
    """He et al. (2015) normal init of convolutions (fan-out, as the CIFAR reference code of
    ResNet/WRN/DenseNet/SWA-VGG does), BatchNorm at (1, 0), zero conv biases; Linear layers keep
    PyTorch's default."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters; BatchNorm running statistics are buffers, not counted."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
