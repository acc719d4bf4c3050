"""Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017) from its official IDX files.

Used by TSO-ALRA (Ida & Fujiwara) with AlexNet- and VGG-style networks. The four files of the
official release (``train-images-idx3-ubyte.gz`` ...) are read gzipped or unpacked. IDX format:
a big-endian magic number ``0x0000 08 0D`` (``08`` = unsigned byte, ``0D`` = number of
dimensions: 3 for images, 1 for labels), one big-endian uint32 per dimension, then the data.

Looks in ``data_dir/fashion-mnist``, ``data_dir``, the download directory, then
``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from polyak.bench.data import DataError, Splits
from polyak.bench.data._common import (
    labels,
    make_splits,
    not_found,
    remedy,
    search_dirs,
    to_images,
)

__all__ = ["load_fashion_mnist", "locate", "read_idx"]

NAME = "fashion-mnist"
TITLE = "Fashion-MNIST"
PACKAGE = "dataset-fashion-mnist"
SYSTEM_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
NUM_CLASSES = 10


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes with ``ndim`` dimensions (gzipped if it ends in .gz)."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise DataError(f"{path}: not a complete gzip file ({exc})") from exc
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated: {len(raw)} bytes, shorter than the IDX header")
    magic = struct.unpack(">I", raw[:4])[0]
    if magic != 0x800 + ndim:
        raise DataError(f"{path}: bad magic number 0x{magic:08x} "
                        f"(expected 0x{0x800 + ndim:08x}: unsigned bytes, {ndim} dimensions)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != expected:
        problem = "truncated" if len(raw) - header < expected else "wrong size"
        raise DataError(f"{path}: {problem}: {len(raw) - header} data bytes, expected {expected} "
                        f"for dimensions {dims}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find_file(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def locate(data_dir: str | Path | None = None) -> tuple[list[Path], dict[str, Path] | None]:
    """(directories searched, the four files of the first directory holding all of them)."""
    dirs = search_dirs(NAME, data_dir, SYSTEM_DIRS)
    for d in dirs:
        found = {key: _find_file(d, stem) for key, stem in FILES.items()}
        if all(found.values()):
            return dirs, found  # type: ignore[return-value]
    return dirs, None


def _read_pair(images: Path, label_file: Path) -> tuple[np.ndarray, np.ndarray]:
    x = read_idx(images, 3)
    y = read_idx(label_file, 1)
    if x.shape[1:] != (28, 28):
        raise DataError(f"{images}: images of shape {x.shape[1:]}, expected (28, 28)")
    if len(x) != len(y):
        raise DataError(f"{label_file}: {len(y)} labels for the {len(x)} images of {images}")
    return x, y


def load_fashion_mnist(data_dir: str | Path | None = None, *, val_size: int = 5000,
                       subset: int | None = None, test_subset: int | None = None,
                       seed: int = 0) -> Splits:
    """Fashion-MNIST as :class:`Splits`: x float32 in [0, 1] of shape (N, 1, 28, 28).

    ``val_size`` training images (seeded by ``seed``) are held out for validation; ``subset`` and
    ``test_subset`` keep that many training / test images for quick runs.
    """
    dirs, files = locate(data_dir)
    if files is None:
        expected = [stem + ".gz" for stem in FILES.values()]
        raise not_found(TITLE, NAME, expected, dirs, PACKAGE)
    with remedy(NAME, PACKAGE):
        x_train, y_train = _read_pair(files["train_images"], files["train_labels"])
        x_test, y_test = _read_pair(files["test_images"], files["test_labels"])
        y_train = labels(y_train, NUM_CLASSES, files["train_labels"])
        y_test = labels(y_test, NUM_CLASSES, files["test_labels"])
    return make_splits(
        to_images(x_train[:, None]), y_train, to_images(x_test[:, None]), y_test, NUM_CLASSES,
        val_size=val_size, subset=subset, test_subset=test_subset, seed=seed)
