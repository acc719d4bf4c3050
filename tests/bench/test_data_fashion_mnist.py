"""Fashion-MNIST loader against small IDX files written here in the official format."""

import gzip
import struct

import numpy as np
import pytest
import torch

from polyak.bench.data import DataError
from polyak.bench.data import fashion_mnist as fm


@pytest.fixture(autouse=True)
def _no_system_files(monkeypatch, tmp_path):
    # The machine may have Debian's dataset-fashion-mnist installed: keep tests on fixtures.
    monkeypatch.setattr(fm, "SYSTEM_DIRS", ())
    monkeypatch.setenv("POLYAK_CACHE", str(tmp_path / "cache"))


def idx_bytes(array):
    """IDX: 0x00 0x00, type 0x08 (unsigned byte), number of dimensions, big-endian sizes, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_set(directory, n_train=40, n_test=12, compress=True, seed=0):
    rng = np.random.default_rng(seed)
    data = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in data.items():
        raw = idx_bytes(array)
        if compress:
            (directory / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (directory / name).write_bytes(raw)
    return data


@pytest.mark.parametrize("compress", [True, False])
def test_reads_every_pixel_and_label(tmp_path, compress):
    data = write_set(tmp_path / "fashion-mnist", compress=compress)
    s = fm.load_fashion_mnist(tmp_path, val_size=0)
    assert s.x_train.shape == (40, 1, 28, 28) and s.x_train.dtype == torch.float32
    assert s.y_train.dtype == torch.int64 and s.num_classes == 10
    for n in (0, 17, 39):
        for i, j in ((0, 0), (5, 27), (27, 13)):
            pixel = np.float32(data["train-images-idx3-ubyte"][n, i, j]) / np.float32(255)
            assert s.x_train[n, 0, i, j].item() == pixel
        assert s.y_train[n].item() == data["train-labels-idx1-ubyte"][n]
    expected_test = torch.tensor(data["t10k-images-idx3-ubyte"], dtype=torch.float32) / 255.0
    assert torch.equal(s.x_test[:, 0], expected_test)
    assert s.y_test.tolist() == data["t10k-labels-idx1-ubyte"].tolist()


def test_validation_is_held_out_of_training_and_seeded(tmp_path):
    data = write_set(tmp_path)
    s = fm.load_fashion_mnist(tmp_path, val_size=10, seed=3)
    assert len(s.y_train) == 30 and len(s.y_val) == 10
    original = [bytes(img) for img in data["train-images-idx3-ubyte"]]
    train = [bytes((x[0] * 255).round().to(torch.uint8).numpy()) for x in s.x_train]
    val = [bytes((x[0] * 255).round().to(torch.uint8).numpy()) for x in s.x_val]
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(original)
    for x, y in zip(s.x_val, s.y_val):  # labels travel with their images
        k = original.index(bytes((x[0] * 255).round().to(torch.uint8).numpy()))
        assert y.item() == data["train-labels-idx1-ubyte"][k]
    again = fm.load_fashion_mnist(tmp_path, val_size=10, seed=3)
    other = fm.load_fashion_mnist(tmp_path, val_size=10, seed=4)
    assert torch.equal(again.x_val, s.x_val)
    assert not torch.equal(other.x_val, s.x_val)


def test_subsets(tmp_path):
    write_set(tmp_path)
    s = fm.load_fashion_mnist(tmp_path, val_size=5, subset=7, test_subset=4)
    assert (len(s.x_train), len(s.x_val), len(s.x_test)) == (7, 5, 4)
    with pytest.raises(ValueError, match="val_size"):
        fm.load_fashion_mnist(tmp_path, val_size=40)
    with pytest.raises(ValueError, match="subset"):
        fm.load_fashion_mnist(tmp_path, val_size=5, subset=36)


def test_search_order_and_system_dir(tmp_path, monkeypatch):
    system = tmp_path / "usr-share"
    write_set(system, seed=1)
    monkeypatch.setattr(fm, "SYSTEM_DIRS", (system,))
    mine = tmp_path / "mine"
    assert fm.locate(mine)[1]["train_images"].parent == system  # only the system copy
    write_set(mine / "fashion-mnist", seed=2)
    assert fm.locate(mine)[1]["train_images"].parent == mine / "fashion-mnist"


def test_missing_names_files_directories_and_remedy(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        fm.load_fashion_mnist(tmp_path / "empty")
    message = str(err.value)
    for needle in ("train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
                   str(tmp_path / "empty" / "fashion-mnist"),
                   "polyak data download fashion-mnist", "dataset-fashion-mnist"):
        assert needle in message


def test_bad_magic(tmp_path):
    write_set(tmp_path, compress=False)
    path = tmp_path / "train-labels-idx1-ubyte"
    raw = bytearray(path.read_bytes())
    raw[3] = 3  # claims 3 dimensions: an image file where labels belong
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="magic") as err:
        fm.load_fashion_mnist(tmp_path)
    assert str(path) in str(err.value)


def test_truncated_data(tmp_path):
    write_set(tmp_path, compress=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated") as err:
        fm.load_fashion_mnist(tmp_path)
    assert str(path) in str(err.value)


def test_truncated_gzip(tmp_path):
    write_set(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError) as err:
        fm.load_fashion_mnist(tmp_path)
    assert str(path) in str(err.value)


def test_label_count_must_match_images(tmp_path):
    write_set(tmp_path)
    labels = np.zeros(39, dtype=np.uint8)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    with pytest.raises(DataError, match="39 labels"):
        fm.load_fashion_mnist(tmp_path)


def test_label_out_of_range(tmp_path):
    write_set(tmp_path)
    labels = np.full(12, 10, dtype=np.uint8)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    with pytest.raises(DataError, match="label 10"):
        fm.load_fashion_mnist(tmp_path)


def test_malformed_file_message_says_how_to_replace_it(tmp_path):
    write_set(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="polyak data download fashion-mnist"):
        fm.load_fashion_mnist(tmp_path)
