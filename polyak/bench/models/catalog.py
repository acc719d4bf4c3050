"""The papers' networks by name, their parameter counts, and :func:`count_parameters`.

``MODELS`` maps a name to a constructor taking ``num_classes`` and ``in_channels`` (and, for the
Fashion-MNIST networks, ``image_size``); ``char-lstm`` takes ``vocab_size`` instead.
``REFERENCE`` gives, per name, the dataset form its published parameter count refers to;
:func:`model_table` counts parameters for that form.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from polyak.bench.models._layers import count_parameters
from polyak.bench.models.densenet import densenet_bc100
from polyak.bench.models.fmnist import alexnet, small_cnn
from polyak.bench.models.lstm import char_lstm
from polyak.bench.models.resnet import PreResNet, preresnet110, resnet20, resnet56, resnet110
from polyak.bench.models.vgg import conv_large13, vgg16, vgg16_bn
from polyak.bench.models.wrn import wrn28_10

__all__ = ["MODELS", "REFERENCE", "count_parameters", "model_table"]


def preresnet110_basic(num_classes: int = 10, in_channels: int = 3) -> PreResNet:
    """PreResNet-110 with basic blocks (He et al., identity mappings, 2016): 1.7M parameters."""
    return PreResNet(110, num_classes, in_channels, block="basic")


MODELS: dict[str, Callable[..., nn.Module]] = {
    "vgg16-bn": vgg16_bn,
    "vgg16": vgg16,
    "conv-large-13": conv_large13,
    "resnet20": resnet20,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "preresnet110": preresnet110,
    "preresnet110-basic": preresnet110_basic,
    "wrn28-10": wrn28_10,
    "densenet-bc100": densenet_bc100,
    "alexnet": alexnet,
    "small-cnn": small_cnn,
    "char-lstm": char_lstm,
}

CIFAR10 = {"num_classes": 10, "in_channels": 3}
CIFAR100 = {"num_classes": 100, "in_channels": 3}
FMNIST = {"num_classes": 10, "in_channels": 1, "image_size": 28}

# name -> (the form the count refers to, its keyword arguments)
REFERENCE: dict[str, tuple[str, dict]] = {
    "vgg16-bn": ("CIFAR-100", CIFAR100),
    "vgg16": ("CIFAR-100", CIFAR100),
    "conv-large-13": ("CIFAR-10", CIFAR10),
    "resnet20": ("CIFAR-10", CIFAR10),
    "resnet56": ("CIFAR-10", CIFAR10),
    "resnet110": ("CIFAR-10", CIFAR10),
    "preresnet110": ("CIFAR-100", CIFAR100),
    "preresnet110-basic": ("CIFAR-100", CIFAR100),
    "wrn28-10": ("CIFAR-10", CIFAR10),
    "densenet-bc100": ("CIFAR-10", CIFAR10),
    "alexnet": ("Fashion-MNIST", FMNIST),
    "small-cnn": ("Fashion-MNIST", FMNIST),
    "char-lstm": ("KJV characters", {"vocab_size": 63}),
}


def model_table() -> list[tuple[str, int, str]]:
    """(name, parameters in its reference form, description) for every model, for
    ``polyak list --models``. Builds each model once on the CPU (about 1.5 s in all; the meta
    device would cost more in its one-time set-up)."""
    rows = []
    for name, build in MODELS.items():
        form, kwargs = REFERENCE[name]
        params = count_parameters(build(**kwargs))
        doc = (inspect.getdoc(build) or "").splitlines()[0]
        rows.append((name, params, f"{doc} [{form}]"))
    return rows
