"""MNIST-1D (Greydanus & Kobak, "Scaling down deep learning with MNIST-1D"), generated offline.

Every split comes from ``mnist1d.data.make_dataset`` with the package's default transformation
arguments (templates, padding, shear, noise, 40 points); the package's download is never used.

- train: the standard 4000 training examples (``seed=42``, 5000 samples, ``train_split=0.8``),
  or the first ``n_train`` of them;
- validation: ``n_val`` examples generated with ``seed=43`` (held out, used by ``polyak tune``);
- test: ``n_test`` examples generated with ``seed=44`` (10,000 by default: the standard 1000 are
  too few to separate methods whose accuracies differ by a point).

``make_dataset`` standardises each generated set by its own mean and standard deviation (its
code, kept as is); with thousands of examples of the same generative process these agree to
about 1%. Each split is cached as ``.npz`` under ``cache_dir()/mnist1d`` (written atomically);
generating all three takes about 3 s. A cache file that does not load or has the wrong shape is
regenerated: it is a cache of deterministic, offline data.
"""

from __future__ import annotations

import os
import random
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from polyak.bench.data import Splits, cache_dir

__all__ = ["load_mnist1d", "TRAIN_SEED", "VAL_SEED", "TEST_SEED"]

TRAIN_SEED, VAL_SEED, TEST_SEED = 42, 43, 44
STANDARD_TRAIN = 4000
LENGTH = 40
NUM_CLASSES = 10


def _check_count(name: str, value: int, upper: int | None = None) -> None:
    """Training prefixes may have any size up to ``upper``; generated splits hold a whole number
    of examples per class (``make_dataset`` draws ``num_samples // 10`` of each digit)."""
    ok = not isinstance(value, bool) and isinstance(value, int) and value >= 1
    if upper is not None:
        ok, allowed = ok and value <= upper, f"an integer, 1 <= {name} <= {upper}"
    else:
        ok, allowed = ok and value % NUM_CLASSES == 0, f"a positive multiple of {NUM_CLASSES}"
    if not ok:
        raise ValueError(f"Invalid {name}: {value!r} (allowed: {allowed})")


def _generate(num_samples: int, seed: int, train_split: float) -> dict[str, np.ndarray]:
    """Call mnist1d's generator without disturbing the caller's global RNG states."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed, args.train_split = num_samples, seed, train_split
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {"x": data["x"].astype(np.float32), "y": data["y"].astype(np.int64)}


def _save_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load(path: Path, n: int) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path) as npz:
            arrays = {"x": npz["x"], "y": npz["y"]}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if arrays["x"].shape != (n, LENGTH) or arrays["y"].shape != (n,):
        return None
    return arrays


def _split(kind: str, n: int, root: Path) -> dict[str, np.ndarray]:
    if kind == "train":
        path = root / f"train-seed{TRAIN_SEED}-n{STANDARD_TRAIN}.npz"
        arrays = _load(path, STANDARD_TRAIN)
        if arrays is None:
            arrays = _generate(STANDARD_TRAIN * 5 // 4, TRAIN_SEED, 0.8)
            _save_atomic(path, arrays)
        return {"x": arrays["x"][:n], "y": arrays["y"][:n]}
    seed = VAL_SEED if kind == "val" else TEST_SEED
    path = root / f"{kind}-seed{seed}-n{n}.npz"
    arrays = _load(path, n)
    if arrays is None:
        arrays = _generate(n, seed, 1.0)
        _save_atomic(path, arrays)
    return arrays


def load_mnist1d(n_train: int = STANDARD_TRAIN, n_val: int = 2000, n_test: int = 10_000,
                 root: str | os.PathLike | None = None) -> Splits:
    """MNIST-1D train/validation/test splits as tensors ``x: (N, 1, 40) float32``, ``y: (N,)``.

    ``root`` defaults to ``cache_dir() / "mnist1d"``; smaller ``n_*`` give the quick variants
    the tests use (``n_train`` takes a prefix of the standard, shuffled, training set).
    """
    _check_count("n_train", n_train, STANDARD_TRAIN)
    _check_count("n_val", n_val)
    _check_count("n_test", n_test)
    base = Path(root) if root is not None else cache_dir() / "mnist1d"
    parts = {k: _split(k, n, base) for k, n in
             (("train", n_train), ("val", n_val), ("test", n_test))}

    def x(k: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(parts[k]["x"])).unsqueeze(1)

    def y(k: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(parts[k]["y"]))

    return Splits(x("train"), y("train"), x("val"), y("val"), x("test"), y("test"),
                  num_classes=NUM_CLASSES)
