"""``download``: against a local HTTP server serving fixture files (never the internet)."""

import gzip
import hashlib
import io
import re
import struct
import tarfile
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

import numpy as np
import pytest

from polyak.bench.data import cifar, fashion_mnist, svhn
from polyak.bench.data import download as dl
from polyak.bench.data.download import DATASETS, DownloadError, RemoteDataset, RemoteFile


@contextmanager
def serve(files, truncate=(), hits=None):
    """Serve ``files`` (name -> bytes) on 127.0.0.1; names in ``truncate`` announce their full
    length but send half and close (an interrupted transfer)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            name = self.path.rsplit("/", 1)[-1]
            if hits is not None:
                hits.append(name)
            if name not in files:
                self.send_error(404)
                return
            body = files[name]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if name in truncate else body)
            if name in truncate:
                self.close_connection = True

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/mirror"
    finally:
        server.shutdown()
        server.server_close()


def remote(name, body, **override):
    fields = {"url": f"https://example.invalid/{name}", "size": len(body),
              "sha256": hashlib.sha256(body).hexdigest(), "md5": hashlib.md5(body).hexdigest()}
    fields.update(override)
    return RemoteFile(**fields)


def idx_gz(array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return gzip.compress(header + array.tobytes())


def fmnist_fixture():
    rng = np.random.default_rng(0)
    return {
        "train-images-idx3-ubyte.gz": idx_gz(rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)),
        "train-labels-idx1-ubyte.gz": idx_gz(rng.integers(0, 10, 30, dtype=np.uint8)),
        "t10k-images-idx3-ubyte.gz": idx_gz(rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)),
        "t10k-labels-idx1-ubyte.gz": idx_gz(rng.integers(0, 10, 10, dtype=np.uint8)),
    }


@pytest.fixture
def fixture_registry(monkeypatch):
    files = fmnist_fixture()
    spec = RemoteDataset("fashion-mnist", "Fashion-MNIST",
                         tuple(remote(n, b) for n, b in files.items()))
    monkeypatch.setitem(DATASETS, "fashion-mnist", spec)
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIRS", ())
    return files


def leftovers(directory):
    return sorted(p.name for p in directory.rglob("*")) if directory.exists() else []


def test_downloads_verifies_and_the_loader_reads_it(tmp_path, fixture_registry):
    with serve(fixture_registry) as url:
        target = dl.download("fashion-mnist", tmp_path, base_url=url)
    assert target == tmp_path / "fashion-mnist"
    assert leftovers(target) == sorted(fixture_registry)  # no temporary file left
    for name, body in fixture_registry.items():
        assert (target / name).read_bytes() == body
    splits = fashion_mnist.load_fashion_mnist(tmp_path, val_size=5)
    assert len(splits.y_train) == 25 and len(splits.y_test) == 10


def test_base_url_from_the_environment(tmp_path, fixture_registry, monkeypatch):
    with serve(fixture_registry) as url:
        monkeypatch.setenv("POLYAK_DATA_URL", url)
        dl.download("fashion-mnist", tmp_path)
    assert leftovers(tmp_path / "fashion-mnist") == sorted(fixture_registry)


def test_wrong_checksum_keeps_nothing(tmp_path, fixture_registry, monkeypatch):
    spec = DATASETS["fashion-mnist"]
    bad = spec.files[0].__class__(**{**spec.files[0].__dict__, "sha256": "0" * 64})
    monkeypatch.setitem(DATASETS, "fashion-mnist",
                        RemoteDataset(spec.name, spec.title, (bad, *spec.files[1:])))
    with serve(fixture_registry) as url, pytest.raises(DownloadError, match="SHA-256") as err:
        dl.download("fashion-mnist", tmp_path, base_url=url)
    assert "deleted" in str(err.value)
    assert leftovers(tmp_path / "fashion-mnist") == []


def test_wrong_md5_keeps_nothing(tmp_path, fixture_registry, monkeypatch):
    spec = DATASETS["fashion-mnist"]
    bad = spec.files[0].__class__(**{**spec.files[0].__dict__, "md5": "0" * 32})
    monkeypatch.setitem(DATASETS, "fashion-mnist", RemoteDataset(spec.name, spec.title, (bad,)))
    with serve(fixture_registry) as url, pytest.raises(DownloadError, match="MD5"):
        dl.download("fashion-mnist", tmp_path, base_url=url)
    assert leftovers(tmp_path / "fashion-mnist") == []


def test_interrupted_transfer_keeps_nothing(tmp_path, fixture_registry):
    with serve(fixture_registry, truncate={"train-images-idx3-ubyte.gz"}) as url, \
            pytest.raises(DownloadError, match="nothing was kept|deleted"):
        dl.download("fashion-mnist", tmp_path, base_url=url)
    assert leftovers(tmp_path / "fashion-mnist") == []


def test_missing_on_the_server(tmp_path, fixture_registry):
    files = dict(fixture_registry)
    del files["t10k-images-idx3-ubyte.gz"]
    with serve(files) as url, pytest.raises(DownloadError, match="404"):
        dl.download("fashion-mnist", tmp_path, base_url=url)
    names = leftovers(tmp_path / "fashion-mnist")
    assert "t10k-images-idx3-ubyte.gz" not in names and not any(".part" in n for n in names)


def test_ctrl_c_removes_the_partial_file(tmp_path, fixture_registry, monkeypatch):
    def interrupted(url, file, out, timeout):
        out.write(b"partial bytes")
        raise KeyboardInterrupt

    monkeypatch.setattr(dl, "_stream", interrupted)
    with pytest.raises(KeyboardInterrupt):
        dl.download("fashion-mnist", tmp_path, base_url="http://127.0.0.1:9")
    assert leftovers(tmp_path / "fashion-mnist") == []


def test_verified_files_are_not_fetched_again(tmp_path, fixture_registry):
    hits = []
    with serve(fixture_registry, hits=hits) as url:
        dl.download("fashion-mnist", tmp_path, base_url=url)
        assert len(hits) == 4
        corrupt = tmp_path / "fashion-mnist" / "train-labels-idx1-ubyte.gz"
        corrupt.write_bytes(b"garbage")
        dl.download("fashion-mnist", tmp_path, base_url=url)
    assert hits[4:] == ["train-labels-idx1-ubyte.gz"]
    assert corrupt.read_bytes() == fixture_registry["train-labels-idx1-ubyte.gz"]


def cifar10_archive():
    rng = np.random.default_rng(1)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
        for name in names + ["batches.meta.txt", "../evil.bin"]:
            if name.endswith(".bin") and "evil" not in name:
                pixels = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
                body = b"".join(bytes([rng.integers(10)]) + row.tobytes() for row in pixels)
            else:
                body = b"airplane\n"
            info = tarfile.TarInfo(name if "evil" in name else f"cifar-10-batches-bin/{name}")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return buffer.getvalue()


def test_cifar_archive_is_verified_then_unpacked_safely(tmp_path, monkeypatch):
    body = cifar10_archive()
    real = DATASETS["cifar10"]
    archive = remote("cifar-10-binary.tar.gz", body)
    monkeypatch.setitem(DATASETS, "cifar10",
                        RemoteDataset("cifar10", "CIFAR-10", (archive,), real.unpack))
    monkeypatch.setenv("POLYAK_CACHE", str(tmp_path / "cache"))
    with serve({"cifar-10-binary.tar.gz": body}) as url:
        dl.download("cifar10", tmp_path, base_url=url)
    folder = tmp_path / "cifar10" / "cifar-10-batches-bin"
    assert sorted(p.name for p in folder.iterdir()) == sorted(real.unpack[1])
    assert not (tmp_path / "evil.bin").exists()
    assert not [p for p in (tmp_path / "cifar10").iterdir() if p.name.startswith(".")]
    splits = cifar.load_cifar10(tmp_path, val_size=3)
    assert len(splits.y_train) == 12 and len(splits.y_test) == 3


def test_unknown_dataset():
    with pytest.raises(ValueError, match="Invalid dataset: 'mnist'"):
        dl.download("mnist")


def test_registry_points_at_the_official_files_the_loaders_read():
    hosts = {"fashion-mnist": "fashion-mnist.s3-website.eu-central-1.amazonaws.com",
             "cifar10": "www.cs.toronto.edu", "cifar100": "www.cs.toronto.edu",
             "svhn": "ufldl.stanford.edu"}
    assert set(DATASETS) == set(hosts)
    for name, spec in DATASETS.items():
        for f in spec.files:
            assert urlparse(f.url).hostname == hosts[name]
            assert re.fullmatch(r"[0-9a-f]{64}", f.sha256) and re.fullmatch(r"[0-9a-f]{32}", f.md5)
            assert f.size > 1000
    assert {f.filename for f in DATASETS["fashion-mnist"].files} == {
        stem + ".gz" for stem in fashion_mnist.FILES.values()}
    for name in ("cifar10", "cifar100"):
        variant = cifar.VARIANTS[name]
        assert DATASETS[name].files[0].filename == variant.archive
        folder, members = DATASETS[name].unpack
        assert folder == variant.folder
        assert set(variant.train_files) | {variant.test_file} <= set(members)
    assert {f.filename for f in DATASETS["svhn"].files} == set(svhn.FILES)
    # The authors' published MD5s (Fashion-MNIST README, CIFAR page, SVHN via torchvision).
    md5 = {f.filename: f.md5 for spec in DATASETS.values() for f in spec.files}
    assert md5["train-images-idx3-ubyte.gz"] == "8d4fb7e6c68d591d4c3dfef9ec88bf0d"
    assert md5["cifar-10-binary.tar.gz"] == "c32a1d4ab5d03f1284b67883e8d87530"
    assert md5["cifar-100-binary.tar.gz"] == "03b5dce01913d631647c71ecec9e9cb8"
    assert md5["train_32x32.mat"] == "e26dedcc434d2e4c54c9b2d4a06d8373"
    assert md5["test_32x32.mat"] == "eb5a983be6a315427106f1b164d9cef3"
