"""Your own task in the benchmark: a small CNN with BatchNorm on scikit-learn's 8x8 digits.

Run every paper method on it, 3 seeds each, from the repository root:

    pip install scikit-learn          # or: pip install -e ".[examples]"
    polyak bench --tasks examples/own_task.py:digits_cnn

``polyak`` calls ``digits_cnn()`` in every process that trains (the file's text travels with
the job: workers need neither this file nor a shared file system) and compares the methods on
it exactly as on its built-in tasks: same seeds for every method, the papers' protocols scaled
to this budget, paired tests, a report that starts with a recommendation. The data come with
scikit-learn (1797 images, no download). See docs/own-task.md for every field.
"""

import torch
from torch import nn

from polyak.bench.data.augment import random_crop
from polyak.bench.user_tasks import UserTask


class DigitsCNN(nn.Module):
    """conv 3x3 -> BN -> ReLU, twice, 2x2 max-pool, linear: 10 classes (about 10k parameters)."""

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        c = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
            nn.Conv2d(c, 2 * c, 3, padding=1, bias=False), nn.BatchNorm2d(2 * c), nn.ReLU(),
            nn.MaxPool2d(2))
        self.head = nn.Linear(2 * c * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def make_model(seed: int) -> nn.Module:
    """A fresh network; polyak has seeded torch with ``seed`` before calling this."""
    return DigitsCNN(channels=16)


def shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Training augmentation: each image moved by up to one pixel (zero padding)."""
    return random_crop(x, padding=1, generator=generator)


def digits_cnn() -> UserTask:
    """1000 training / 297 validation / 500 test digits, pixels scaled to [0, 1] (the shift pads
    with 0, the background); a seeded split, so every process builds the same data."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("this example needs scikit-learn: pip install scikit-learn") from None
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16  # (1797, 1, 8, 8)
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, val, test = order[:1000], order[1000:1297], order[1297:]
    return UserTask(
        train=(x[train], y[train]), val=(x[val], y[val]), test=(x[test], y[test]),
        model=make_model, batch_size=64, epochs=20, augment=shift,
        description="scikit-learn's 8x8 digits, a 2-conv CNN with BatchNorm (examples/).")
