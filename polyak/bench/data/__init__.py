"""Datasets of the benchmark, as tensors (no torchvision), split into train/validation/test.

Data is never downloaded silently: loaders read standard file formats from a directory and look
in well-known places; ``polyak data download`` fetches a file only when asked and verifies its
SHA-256 before anything is unpacked.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch


class DataError(ValueError):
    """A data file exists but is malformed (truncated, wrong magic number, wrong checksum...)."""


@dataclass
class Splits:
    """Train / validation / test tensors of a classification task.

    ``x_*`` hold inputs (float32, e.g. ``(N, C, L)`` or ``(N, C, H, W)``), ``y_*`` int64 class
    labels. The validation split is held out from the training data: tuning never sees the test set.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int


def cache_dir() -> Path:
    """Where generated or converted datasets are cached: ``$POLYAK_CACHE``, ``~/.cache/polyak``."""
    return Path(os.environ.get("POLYAK_CACHE", Path.home() / ".cache" / "polyak"))
