"""SVHN loader against small MATLAB files written here in the official format-2 layout."""

import numpy as np
import pytest
import scipy.io
import torch

from polyak.bench.data import DataError
from polyak.bench.data.svhn import load_svhn


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("POLYAK_CACHE", str(tmp_path / "cache"))


def write_mat(path, n, seed, y=None):
    """Format 2: X uint8 (32, 32, 3, N), y (N, 1) with digits 1..10 (10 is the digit 0)."""
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = rng.integers(1, 11, (n, 1)).astype(np.uint8) if y is None else y
    y[0, 0] = 10
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"X": X, "y": y}, format="5")
    return X, y


def test_reads_images_and_maps_ten_to_zero(tmp_path):
    X, y = write_mat(tmp_path / "svhn" / "train_32x32.mat", 8, 0)
    Xt, yt = write_mat(tmp_path / "svhn" / "test_32x32.mat", 3, 1)
    s = load_svhn(tmp_path, val_size=0)
    assert s.x_train.shape == (8, 3, 32, 32) and s.num_classes == 10
    for n in (0, 7):
        for c in range(3):
            for i in range(0, 32, 5):
                for j in range(0, 32, 7):
                    assert s.x_train[n, c, i, j].item() == np.float32(X[i, j, c, n]) / 255
    assert s.y_train.tolist() == [0 if v == 10 else int(v) for v in y[:, 0]]
    assert s.y_train[0].item() == 0
    assert torch.equal(s.x_test[2, 1], torch.tensor(Xt[:, :, 1, 2], dtype=torch.float32) / 255)


def test_validation_split(tmp_path):
    write_mat(tmp_path / "train_32x32.mat", 20, 0)
    write_mat(tmp_path / "test_32x32.mat", 4, 1)
    s = load_svhn(tmp_path, val_size=6)
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (14, 6, 4)


def test_missing(tmp_path):
    write_mat(tmp_path / "train_32x32.mat", 4, 0)  # test file absent
    with pytest.raises(FileNotFoundError) as err:
        load_svhn(tmp_path)
    for needle in ("test_32x32.mat", str(tmp_path), "polyak data download svhn"):
        assert needle in str(err.value)


def test_truncated_file(tmp_path):
    write_mat(tmp_path / "train_32x32.mat", 6, 0)
    write_mat(tmp_path / "test_32x32.mat", 3, 1)
    path = tmp_path / "train_32x32.mat"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError) as err:
        load_svhn(tmp_path)
    assert str(path) in str(err.value)


def test_wrong_shape(tmp_path):
    scipy.io.savemat(tmp_path / "train_32x32.mat",
                     {"X": np.zeros((28, 28, 1, 2), np.uint8), "y": np.ones((2, 1), np.uint8)})
    write_mat(tmp_path / "test_32x32.mat", 3, 1)
    with pytest.raises(DataError, match=r"\(32, 32, 3, N\)"):
        load_svhn(tmp_path)


def test_label_out_of_range(tmp_path):
    write_mat(tmp_path / "train_32x32.mat", 4, 0, y=np.array([[1], [2], [11], [3]], np.uint8))
    write_mat(tmp_path / "test_32x32.mat", 3, 1)
    with pytest.raises(DataError, match="label 11"):
        load_svhn(tmp_path)
