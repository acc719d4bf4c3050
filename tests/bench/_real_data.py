"""Tiny copies of the real datasets in their official file formats, for the task tests.

Written from the formats' specifications (not with polyak's readers): IDX for Fashion-MNIST,
the CIFAR binary records, SVHN's MATLAB format 2, and a UTF-8 corpus.txt.
"""

import gzip
import struct

import numpy as np
import scipy.io

TEXT = ("In the beginning was the word, and the word was with the tide; "
        "the tide turned and the word went out with it. ") * 60


def idx(array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fashion_mnist(root, n_train=60, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "fashion-mnist"
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    for name, array in arrays.items():
        (folder / (name + ".gz")).write_bytes(gzip.compress(idx(array)))
    return arrays


def cifar_records(images, labels):
    """Each record: its label byte(s), then the red, green and blue 32x32 planes."""
    out = bytearray()
    for n in range(len(images)):
        out += bytes(int(column[n]) for column in labels)
        out += images[n].astype(np.uint8).tobytes()
    return bytes(out)


def write_cifar10(root, n_per_batch=8, n_test=12, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar10" / "cifar-10-batches-bin"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for name in names:
        n = n_test if name == "test_batch.bin" else n_per_batch
        images = rng.integers(0, 256, (n, 3, 32, 32))
        (folder / name).write_bytes(cifar_records(images, [rng.integers(0, 10, n)]))


def write_cifar100(root, n_train=40, n_test=12, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar100" / "cifar-100-binary"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.bin", n_train), ("test.bin", n_test)):
        images = rng.integers(0, 256, (n, 3, 32, 32))
        labels = [rng.integers(0, 20, n), rng.integers(0, 100, n)]  # coarse, fine
        (folder / name).write_bytes(cifar_records(images, labels))


def write_svhn(root, n_train=40, n_test=12, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "svhn"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train_32x32.mat", n_train), ("test_32x32.mat", n_test)):
        X = rng.integers(0, 256, (32, 32, 3, n)).astype(np.uint8)
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)  # 10 stands for the digit 0
        scipy.io.savemat(folder / name, {"X": X, "y": y}, format="5")


def write_corpus(root, text=TEXT):
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.txt").write_text(text, encoding="utf-8")
    return text


def write_all(root):
    write_fashion_mnist(root)
    write_cifar10(root)
    write_cifar100(root)
    write_svhn(root)
    write_corpus(root)
    return root
