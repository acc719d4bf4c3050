"""Shared pieces of the file-based loaders: where to look, the held-out validation split, subsets.

Every image loader returns ``x`` as float32 in ``[0, 1]`` with shape ``(N, C, H, W)`` and ``y`` as
int64. Standardization is left to :mod:`polyak.bench.data.augment`, which computes the
per-channel statistics from the training split only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from polyak.bench.data import DataError, Splits, cache_dir


def default_data_dir() -> Path:
    """Where ``polyak data download`` writes when no ``--data-dir`` is given."""
    return cache_dir() / "data"


def search_dirs(name: str, data_dir: str | Path | None, system_dirs: Sequence[Path]) -> list[Path]:
    """The directories a loader tries, in order: ``data_dir/name``, ``data_dir``, the default
    download directory, then the places a system package installs the files."""
    dirs: list[Path] = []
    if data_dir is not None:
        dirs += [Path(data_dir) / name, Path(data_dir)]
    dirs.append(default_data_dir() / name)
    dirs += [Path(d) for d in system_dirs]
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def not_found(title: str, name: str, expected: Sequence[str], dirs: Sequence[Path],
              package: str | None = None) -> FileNotFoundError:
    """The error of a missing dataset: which files, where they were looked for, how to get them."""
    how = f"`polyak data download {name} --data-dir DIR`"
    if package:
        how += f" or `apt-get install {package}`"
    return FileNotFoundError(
        f"{title} not found: expected {', '.join(expected)} in one of "
        f"{', '.join(str(d) for d in dirs)}; get it with {how}"
    )


@contextmanager
def remedy(name: str, package: str | None = None) -> Iterator[None]:
    """Add to a :class:`DataError` raised inside how to get a good copy of dataset ``name``."""
    try:
        yield
    except DataError as exc:
        how = f"`polyak data download {name}`" + (f" or `apt-get install --reinstall {package}`"
                                                   if package else "")
        raise DataError(f"{exc}; replace it with {how}") from exc


def to_images(array: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, C, H, W)`` -> float32 in [0, 1]."""
    array = np.require(array, np.uint8, ["C_CONTIGUOUS", "WRITEABLE"])
    return torch.from_numpy(array).to(torch.float32).div_(255.0)


def _check_size(param: str, value: int | None, n: int, low: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= n:
        raise ValueError(
            f"Invalid {param}: {value!r} (allowed: an integer, {low} <= {param} <= {n})")


def make_splits(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
                y_test: torch.Tensor, num_classes: int, *, val_size: int, subset: int | None,
                test_subset: int | None, seed: int) -> Splits:
    """Hold out ``val_size`` seeded-random training examples as validation, then optionally keep
    a seeded-random ``subset`` of the rest for training and ``test_subset`` test examples.

    The split depends only on ``seed`` (default 0 everywhere): a task has one fixed validation
    set whatever the run's own seed, so methods are tuned on the same examples.
    """
    n = len(y_train)
    _check_size("val_size", val_size, n - 1, 0)
    _check_size("subset", subset, n - val_size, 1)
    _check_size("test_subset", test_subset, len(y_test), 1)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    val_idx, train_idx = order[:val_size], order[val_size:]
    if subset is not None:
        train_idx = train_idx[:subset]
    train_idx, _ = train_idx.sort()
    val_idx, _ = val_idx.sort()
    if test_subset is not None:
        test_idx = torch.randperm(len(y_test), generator=generator)[:test_subset].sort().values
        x_test, y_test = x_test[test_idx], y_test[test_idx]
    return Splits(x_train=x_train[train_idx], y_train=y_train[train_idx], x_val=x_train[val_idx],
                  y_val=y_train[val_idx], x_test=x_test, y_test=y_test, num_classes=num_classes)


def labels(array: np.ndarray, num_classes: int, source: Path | str) -> torch.Tensor:
    """int64 labels, checked to lie in ``[0, num_classes)``."""
    y = torch.from_numpy(np.asarray(array).astype(np.int64).reshape(-1))
    bad = y[(y < 0) | (y >= num_classes)]
    if len(bad):
        raise DataError(f"{source}: label {int(bad[0])} outside 0..{num_classes - 1}")
    return y
