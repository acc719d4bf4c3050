"""CIFAR-10/100 loaders against small binary files written here in the official layout."""

import io
import tarfile

import numpy as np
import pytest
import torch

from polyak.bench.data import DataError
from polyak.bench.data.cifar import load_cifar10, load_cifar100


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("POLYAK_CACHE", str(tmp_path / "cache"))


def records(images, label_columns):
    """Official record: label byte(s), then 1024 red, 1024 green, 1024 blue bytes, row-major."""
    out = bytearray()
    for n in range(len(images)):
        out += bytes(int(col[n]) for col in label_columns)
        for c in range(3):
            out += images[n, c].tobytes()
    return bytes(out)


def cifar10_files(n_per_batch=4, n_test=6, seed=0):
    rng = np.random.default_rng(seed)
    files, truth = {}, {"x": [], "y": []}
    for name, n in [(f"data_batch_{i}.bin", n_per_batch) for i in range(1, 6)] + \
                   [("test_batch.bin", n_test)]:
        x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        y = rng.integers(0, 10, n)
        files[name] = records(x, [y])
        truth["x"].append(x)
        truth["y"].append(y)
    return files, truth


def write_dir(directory, files):
    directory.mkdir(parents=True)
    for name, raw in files.items():
        (directory / name).write_bytes(raw)


def write_archive(path, folder, files):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, raw in files.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))


def as_float(x):
    return torch.tensor(x, dtype=torch.float32) / 255.0


def test_cifar10_unpacked_directory(tmp_path):
    files, truth = cifar10_files()
    write_dir(tmp_path / "cifar10" / "cifar-10-batches-bin", files)
    s = load_cifar10(tmp_path, val_size=0)
    assert s.x_train.shape == (20, 3, 32, 32) and s.num_classes == 10
    assert torch.equal(s.x_train, as_float(np.concatenate(truth["x"][:5])))
    assert s.y_train.tolist() == np.concatenate(truth["y"][:5]).tolist()
    assert torch.equal(s.x_test, as_float(truth["x"][5]))
    assert s.y_test.tolist() == truth["y"][5].tolist()
    # the red plane comes first: record byte 1 + 0 is pixel (0, 0) of channel 0
    assert s.x_test[0, 0, 0, 0].item() == as_float(files["test_batch.bin"][1])
    assert s.x_test[0, 2, 31, 31].item() == as_float(files["test_batch.bin"][3072])


def test_cifar10_from_the_archive_with_validation(tmp_path):
    files, truth = cifar10_files(seed=1)
    write_archive(tmp_path / "cifar-10-binary.tar.gz", "cifar-10-batches-bin", files)
    s = load_cifar10(tmp_path, val_size=5, seed=0)
    assert (len(s.x_train), len(s.x_val), len(s.x_test)) == (15, 5, 6)
    everything = torch.cat([s.x_train, s.x_val])
    expected = as_float(np.concatenate(truth["x"][:5]))
    key = lambda t: sorted(tuple(row.flatten()[:8].tolist()) for row in t)  # noqa: E731
    assert key(everything) == key(expected)


def test_cifar100_fine_and_coarse_labels(tmp_path):
    rng = np.random.default_rng(2)
    x_train = rng.integers(0, 256, (9, 3, 32, 32), dtype=np.uint8)
    x_test = rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    coarse, fine = rng.integers(0, 20, 9), rng.integers(0, 100, 9)
    t_coarse, t_fine = rng.integers(0, 20, 3), rng.integers(0, 100, 3)
    files = {"train.bin": records(x_train, [coarse, fine]),
             "test.bin": records(x_test, [t_coarse, t_fine])}
    write_archive(tmp_path / "cifar100" / "cifar-100-binary.tar.gz", "cifar-100-binary", files)
    s = load_cifar100(tmp_path, val_size=0)
    assert s.num_classes == 100 and s.y_train.tolist() == fine.tolist()
    assert torch.equal(s.x_train, as_float(x_train)) and s.y_test.tolist() == t_fine.tolist()
    c = load_cifar100(tmp_path, val_size=0, coarse=True)
    assert c.num_classes == 20 and c.y_train.tolist() == coarse.tolist()


def test_missing_names_archive_and_remedy(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_cifar10(tmp_path / "nothing")
    message = str(err.value)
    for needle in ("cifar-10-binary.tar.gz", "data_batch_1.bin", str(tmp_path / "nothing"),
                   "polyak data download cifar10"):
        assert needle in message


def test_truncated_batch(tmp_path):
    files, _ = cifar10_files()
    files["data_batch_3.bin"] = files["data_batch_3.bin"][:-10]
    write_dir(tmp_path / "cifar-10-batches-bin", files)
    with pytest.raises(DataError, match="truncated") as err:
        load_cifar10(tmp_path)
    assert "data_batch_3.bin" in str(err.value)


def test_truncated_archive(tmp_path):
    files, _ = cifar10_files()
    path = tmp_path / "cifar-10-binary.tar.gz"
    write_archive(path, "cifar-10-batches-bin", files)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(DataError) as err:
        load_cifar10(tmp_path)
    assert str(path) in str(err.value)


def test_archive_missing_a_member(tmp_path):
    files, _ = cifar10_files()
    del files["test_batch.bin"]
    write_archive(tmp_path / "cifar-10-binary.tar.gz", "cifar-10-batches-bin", files)
    with pytest.raises(DataError, match="test_batch.bin"):
        load_cifar10(tmp_path)


def test_label_out_of_range(tmp_path):
    files, _ = cifar10_files()
    raw = bytearray(files["data_batch_2.bin"])
    raw[0] = 10
    files["data_batch_2.bin"] = bytes(raw)
    write_dir(tmp_path / "cifar-10-batches-bin", files)
    with pytest.raises(DataError, match="data_batch_2.bin: label 10"):
        load_cifar10(tmp_path)
