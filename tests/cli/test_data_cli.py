"""``polyak data list`` and ``polyak data download`` (against a local HTTP server)."""

import functools
import gzip
import hashlib
import struct
import threading
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

import polyak.cli
import polyak.cli.data  # noqa: F401  (registers the `data` commands)
from polyak.bench.data import fashion_mnist
from polyak.bench.data.download import DATASETS, RemoteDataset, RemoteFile


def run(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        polyak.cli.main(argv)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextmanager
def serve(directory):
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=directory))
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def idx_gz(array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return gzip.compress(header + array.tobytes())


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A directory of Fashion-MNIST fixture files and a registry entry with their checksums."""
    rng = np.random.default_rng(0)
    files = {
        "train-images-idx3-ubyte.gz": idx_gz(rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)),
        "train-labels-idx1-ubyte.gz": idx_gz(rng.integers(0, 10, 20, dtype=np.uint8)),
        "t10k-images-idx3-ubyte.gz": idx_gz(rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)),
        "t10k-labels-idx1-ubyte.gz": idx_gz(rng.integers(0, 10, 5, dtype=np.uint8)),
    }
    served = tmp_path / "served"
    served.mkdir()
    remote = []
    for name, body in files.items():
        (served / name).write_bytes(body)
        remote.append(RemoteFile(f"https://example.invalid/{name}", len(body),
                                 hashlib.sha256(body).hexdigest(), hashlib.md5(body).hexdigest()))
    monkeypatch.setitem(DATASETS, "fashion-mnist",
                        RemoteDataset("fashion-mnist", "Fashion-MNIST", tuple(remote)))
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIRS", ())
    monkeypatch.setenv("POLYAK_CACHE", str(tmp_path / "cache"))
    return served


def test_download_then_list_finds_it(mirror, tmp_path, capsys):
    data = tmp_path / "data"
    with serve(mirror) as url:
        code, out, err = run(["data", "download", "fashion-mnist", "--data-dir", str(data),
                              "--base-url", url], capsys)
    assert code == 0, err
    assert out.strip() == str(data / "fashion-mnist")
    assert "SHA-256" in err
    for f in mirror.iterdir():
        assert (data / "fashion-mnist" / f.name).read_bytes() == f.read_bytes()
    code, out, err = run(["data", "list", "--data-dir", str(data)], capsys)
    assert code == 0
    row = next(line for line in out.splitlines() if "fashion-mnist" in line)
    assert "found" in row
    cifar_row = next(line for line in out.splitlines() if "cifar10 " in line)
    assert "missing" in cifar_row


def test_wrong_checksum_exits_2_with_one_line_and_keeps_nothing(mirror, tmp_path, capsys):
    (mirror / "t10k-labels-idx1-ubyte.gz").write_bytes(b"corrupted on the mirror")
    data = tmp_path / "data"
    with serve(mirror) as url:
        code, out, err = run(["data", "download", "fashion-mnist", "--data-dir", str(data),
                              "--base-url", url], capsys)
    assert code == 2
    error = [line for line in err.splitlines() if line.startswith("polyak: error:")]
    assert len(error) == 1 and "t10k-labels-idx1-ubyte.gz" in error[0]
    assert "Traceback" not in err
    assert not (data / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").exists()
    assert not [p for p in (data / "fashion-mnist").iterdir() if p.name.endswith(".part")]


def test_unknown_dataset_exits_2(capsys):
    code, _, err = run(["data", "download", "imagenet"], capsys)
    assert code == 2 and "Invalid dataset: 'imagenet'" in err


def test_loading_missing_data_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    # The CLI's error path turns the loader's FileNotFoundError into exit status 2.
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIRS", ())
    monkeypatch.setenv("POLYAK_CACHE", str(tmp_path / "cache"))

    @polyak.cli.app.command("load-fmnist-for-test", hidden=True)
    def _load() -> None:
        fashion_mnist.load_fashion_mnist(tmp_path)

    try:
        code, _, err = run(["load-fmnist-for-test"], capsys)
    finally:
        polyak.cli.app.registered_commands.pop()
    assert code == 2
    assert "polyak data download fashion-mnist" in err and "Traceback" not in err
