"""SVHN, the Street View House Numbers (Netzer et al., 2011), cropped digits ("format 2").

Used by the phase-wise aggregation paper and TSO-ALRA. Read with scipy from the official
MATLAB files ``train_32x32.mat`` and ``test_32x32.mat``: ``X`` is uint8 of shape
``(32, 32, 3, N)``, ``y`` is ``(N, 1)`` with the digits 1..9 and 10 for the digit 0, which this
loader maps to class 0 (as torchvision does). The ``extra`` set is not used by the papers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from polyak.bench.data import DataError, Splits
from polyak.bench.data._common import (
    labels,
    make_splits,
    not_found,
    remedy,
    search_dirs,
    to_images,
)

__all__ = ["load_svhn", "locate", "read_mat"]

NAME = "svhn"
TITLE = "SVHN"
FILES = ("train_32x32.mat", "test_32x32.mat")
NUM_CLASSES = 10


def read_mat(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 3, 32, 32)`` uint8 and labels 0..9 from one SVHN format-2 ``.mat`` file."""
    path = Path(path)
    try:
        mat = scipy.io.loadmat(path, variable_names=["X", "y"])
    except FileNotFoundError:
        raise
    except Exception as exc:  # scipy raises ValueError, OSError, TypeError... on bad files
        raise DataError(
            f"{path}: not a readable MATLAB file ({type(exc).__name__}: {exc})") from exc
    if "X" not in mat or "y" not in mat:
        raise DataError(f"{path}: lacks the variables X and y of SVHN format 2")
    x, y = mat["X"], np.asarray(mat["y"]).reshape(-1)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8:
        raise DataError(f"{path}: X is {x.dtype} of shape {x.shape}, expected uint8 (32, 32, 3, N)")
    if len(y) != x.shape[3]:
        raise DataError(f"{path}: {len(y)} labels for {x.shape[3]} images")
    if len(y) and (y.min() < 1 or y.max() > 10):
        raise DataError(f"{path}: label {int(y.min() if y.min() < 1 else y.max())} outside 1..10")
    return x.transpose(3, 2, 0, 1), np.where(y == 10, 0, y)


def locate(data_dir: str | Path | None = None) -> tuple[list[Path], Path | None]:
    """(directories searched, the first one holding both files)."""
    dirs = search_dirs(NAME, data_dir, ())
    for d in dirs:
        if all((d / f).is_file() for f in FILES):
            return dirs, d
    return dirs, None


def load_svhn(data_dir: str | Path | None = None, *, val_size: int = 5000,
              subset: int | None = None, test_subset: int | None = None,
              seed: int = 0) -> Splits:
    """SVHN as :class:`Splits`: x float32 in [0, 1] of shape (N, 3, 32, 32), digits 0..9."""
    dirs, found = locate(data_dir)
    if found is None:
        raise not_found(TITLE, NAME, FILES, dirs)
    with remedy(NAME):
        x_train, y_train = read_mat(found / FILES[0])
        x_test, y_test = read_mat(found / FILES[1])
        y_train = labels(y_train, NUM_CLASSES, found / FILES[0])
        y_test = labels(y_test, NUM_CLASSES, found / FILES[1])
    return make_splits(
        to_images(x_train), y_train, to_images(x_test), y_test, NUM_CLASSES,
        val_size=val_size, subset=subset, test_subset=test_subset, seed=seed)
