"""The two models of the MNIST-1D paper (Greydanus & Kobak, "Scaling down deep learning with
MNIST-1D", 2020/2024), for inputs of shape ``(N, 1, 40)`` or ``(N, 40)``.

- ``MLP``: 40 -> 100 -> 100 -> 10 with ReLU, as the paper's MLP baseline.
- ``CNN``: three 1-D convolutions with 25 channels (kernel 5/3/3, stride 2, padding 1:
  lengths 40 -> 19 -> 10 -> 5), ReLU, then a linear classifier on the 125 flattened features,
  as the paper's CNN baseline. Departure from the paper: a ``BatchNorm1d`` after each convolution
  (``batchnorm=True``, the default) so that weight averaging without BatchNorm recalibration,
  the case the averaging papers warn about, is exercised by the benchmark. The layers are
  :mod:`polyak.bench.models._nlc`'s ``Conv1d``/``BatchNorm1d``: torch's modules (same
  parameters, state dict and hooks) computed in ``(N, L, C)`` memory order on the CPU, about
  a fifth faster per training step at this size (``benchmarks/small_step.py``).
"""

from __future__ import annotations

import torch
from torch import nn

from polyak.bench.models._nlc import BatchNorm1d, Conv1d

__all__ = ["MLP", "CNN"]


def _positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Invalid {name}: {value!r} (allowed: an integer >= 1)")


class MLP(nn.Module):
    """MNIST-1D MLP: ``in_features -> hidden -> hidden -> num_classes``, ReLU."""

    def __init__(self, in_features: int = 40, hidden: int = 100, num_classes: int = 10) -> None:
        for name, value in (("in_features", in_features), ("hidden", hidden),
                            ("num_classes", num_classes)):
            _positive_int(name, value)
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _out_len(length: int, kernel: int, stride: int = 2, padding: int = 1) -> int:
    return (length + 2 * padding - kernel) // stride + 1


class CNN(nn.Module):
    """MNIST-1D CNN: 3 x (Conv1d stride 2 [+ BatchNorm1d] + ReLU) and a linear classifier."""

    def __init__(self, channels: int = 25, num_classes: int = 10, length: int = 40,
                 batchnorm: bool = True) -> None:
        for name, value in (("channels", channels), ("num_classes", num_classes),
                            ("length", length)):
            _positive_int(name, value)
        out_len = _out_len(_out_len(_out_len(length, 5), 3), 3)
        if out_len < 1:
            raise ValueError(f"Invalid length: {length} (allowed: >= 3, the first convolution "
                             "needs 5 padded points)")
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 1
        for kernel in (5, 3, 3):
            layers.append(Conv1d(in_ch, channels, kernel, stride=2, padding=1))
            if batchnorm:
                layers.append(BatchNorm1d(channels))
            layers.append(nn.ReLU())
            in_ch = channels
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels * out_len, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], 1, -1)
        return self.classifier(self.features(x).flatten(1))
