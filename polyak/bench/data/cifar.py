"""CIFAR-10 and CIFAR-100 (Krizhevsky, 2009) from their official binary versions (no pickle).

Used by all five papers. Read from ``cifar-10-binary.tar.gz`` / ``cifar-100-binary.tar.gz`` or
from the directories they unpack to (``cifar-10-batches-bin/``, ``cifar-100-binary/``).
Binary layout: fixed-length records, CIFAR-10 ``<label byte><3072 pixel bytes>``, CIFAR-100
``<coarse label byte><fine label byte><3072 pixel bytes>``; the pixels are the red, green then
blue 32x32 planes, row-major. Training files: ``data_batch_1.bin`` .. ``data_batch_5.bin`` and
``test_batch.bin`` (CIFAR-10); ``train.bin`` and ``test.bin`` (CIFAR-100).
"""

from __future__ import annotations

import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from polyak.bench.data import DataError, Splits
from polyak.bench.data._common import (
    labels,
    make_splits,
    not_found,
    remedy,
    search_dirs,
    to_images,
)

__all__ = ["load_cifar10", "load_cifar100", "locate", "read_records", "VARIANTS"]

PIXELS = 3 * 32 * 32


@dataclass(frozen=True)
class Variant:
    name: str
    title: str
    archive: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    label_bytes: int
    num_classes: int


VARIANTS = {
    "cifar10": Variant("cifar10", "CIFAR-10", "cifar-10-binary.tar.gz", "cifar-10-batches-bin",
                       tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin", 1, 10),
    "cifar100": Variant("cifar100", "CIFAR-100", "cifar-100-binary.tar.gz", "cifar-100-binary",
                        ("train.bin",), "test.bin", 2, 100),
}


def read_records(raw: bytes, label_bytes: int, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Split a CIFAR binary file into uint8 images ``(N, 3, 32, 32)`` and labels
    ``(N, label_bytes)``."""
    record = label_bytes + PIXELS
    if len(raw) == 0 or len(raw) % record:
        raise DataError(f"{source}: truncated or wrong size: {len(raw)} bytes is not a whole "
                        f"number of {record}-byte records")
    table = np.frombuffer(raw, dtype=np.uint8).reshape(-1, record)
    return table[:, label_bytes:].reshape(-1, 3, 32, 32), table[:, :label_bytes]


def _complete(directory: Path, v: Variant) -> bool:
    return all((directory / f).is_file() for f in (*v.train_files, v.test_file))


def locate(variant: str, data_dir: str | Path | None = None) -> tuple[list[Path], Path | None]:
    """(directories searched, the unpacked folder or the archive found first)."""
    v = VARIANTS[variant]
    dirs = search_dirs(v.name, data_dir, ())
    for d in dirs:
        for candidate in (d / v.folder, d):
            if _complete(candidate, v):
                return dirs, candidate
        if (d / v.archive).is_file():
            return dirs, d / v.archive
    return dirs, None


def _read_files(found: Path, v: Variant) -> dict[str, tuple[bytes, str]]:
    wanted = (*v.train_files, v.test_file)
    if found.is_dir():
        return {f: ((found / f).read_bytes(), str(found / f)) for f in wanted}
    out: dict[str, tuple[bytes, str]] = {}
    try:
        with tarfile.open(found, "r:gz") as tar:
            for member in tar:
                name = Path(member.name)
                if member.isfile() and name.parent.name == v.folder and name.name in wanted:
                    out[name.name] = (tar.extractfile(member).read(), f"{found}:{member.name}")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{found}: not a complete tar.gz archive ({exc})") from exc
    missing = [f for f in wanted if f not in out]
    if missing:
        raise DataError(f"{found}: archive lacks {', '.join(f'{v.folder}/{m}' for m in missing)}")
    return out


def _load(variant: str, data_dir: str | Path | None, label_index: int, num_classes: int,
          **split_args) -> Splits:
    v = VARIANTS[variant]
    dirs, found = locate(variant, data_dir)
    if found is None:
        expected = [v.archive, f"{v.folder}/ ({', '.join((*v.train_files, v.test_file))})"]
        raise not_found(v.title, v.name, expected, dirs)
    xs, ys = [], []
    with remedy(v.name):
        files = _read_files(found, v)
        for f in (*v.train_files, v.test_file):
            x, y = read_records(files[f][0], v.label_bytes, files[f][1])
            xs.append(x)
            ys.append(labels(y[:, label_index], num_classes, files[f][1]))
    return make_splits(
        to_images(np.concatenate(xs[:-1])), torch.cat(ys[:-1]), to_images(xs[-1]), ys[-1],
        num_classes, **split_args)


def load_cifar10(data_dir: str | Path | None = None, *, val_size: int = 5000,
                 subset: int | None = None, test_subset: int | None = None,
                 seed: int = 0) -> Splits:
    """CIFAR-10 as :class:`Splits`: x float32 in [0, 1] of shape (N, 3, 32, 32), 10 classes.

    ``val_size`` training images (seeded by ``seed``) are held out for validation (45k/5k by
    default, as in the SWA and Gadam code); ``subset``/``test_subset`` shrink train/test.
    """
    return _load("cifar10", data_dir, 0, 10, val_size=val_size, subset=subset,
                 test_subset=test_subset, seed=seed)


def load_cifar100(data_dir: str | Path | None = None, *, val_size: int = 5000,
                  subset: int | None = None, test_subset: int | None = None, seed: int = 0,
                  coarse: bool = False) -> Splits:
    """CIFAR-100 as :class:`Splits`, 100 fine labels (``coarse=True``: the 20 superclasses)."""
    return _load("cifar100", data_dir, 0 if coarse else 1, 20 if coarse else 100,
                 val_size=val_size, subset=subset, test_subset=test_subset, seed=seed)
