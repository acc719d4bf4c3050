"""``polyak data download``: fetch a dataset's official files and verify them before use.

Checksums and where they are published:
- SHA-256 and size of every file: TensorFlow Datasets' url_checksums (``fashion_mnist.txt``,
  ``cifar10.txt``, ``cifar100.txt``, ``svhn_cropped.txt``), recorded from these same URLs;
- MD5: the dataset authors' own pages (the Fashion-MNIST README, the CIFAR page) and the MD5s
  torchvision verifies for SVHN.
A download must match its size, SHA-256 and MD5 (all three are computed while streaming).

Each file is streamed into a hidden temporary file in the target directory and renamed into place
only once verified; a failure, a mismatch or Ctrl-C deletes it, so a half-downloaded file is never
mistaken for a dataset. The CIFAR archives are then unpacked (only their expected regular files,
into a temporary folder renamed into place). ``base_url`` (or ``$POLYAK_DATA_URL``) replaces the
directory part of every URL, for mirrors and for tests against a local server.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from polyak.bench.data import DataError
from polyak.bench.data._common import default_data_dir

__all__ = ["DATASETS", "DownloadError", "RemoteDataset", "RemoteFile", "download"]

BASE_URL_ENV = "POLYAK_DATA_URL"


class DownloadError(DataError):
    """A download failed or did not match its published checksum; nothing was kept."""


@dataclass(frozen=True)
class RemoteFile:
    url: str
    size: int
    sha256: str
    md5: str | None = None

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class RemoteDataset:
    name: str
    title: str
    files: tuple[RemoteFile, ...]
    unpack: tuple[str, tuple[str, ...]] | None = None  # (folder in the archive, its files)


_FMNIST = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_KRIZ = "https://www.cs.toronto.edu/~kriz/"
_SVHN = "http://ufldl.stanford.edu/housenumbers/"

DATASETS: dict[str, RemoteDataset] = {
    "fashion-mnist": RemoteDataset("fashion-mnist", "Fashion-MNIST", (
        RemoteFile(_FMNIST + "train-images-idx3-ubyte.gz", 26421880,
                   "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                   "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        RemoteFile(_FMNIST + "train-labels-idx1-ubyte.gz", 29515,
                   "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                   "25c81989df183df01b3e8a0aad5dffbe"),
        RemoteFile(_FMNIST + "t10k-images-idx3-ubyte.gz", 4422102,
                   "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                   "bef4ecab320f06d8554ea6380940ec79"),
        RemoteFile(_FMNIST + "t10k-labels-idx1-ubyte.gz", 5148,
                   "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                   "bb300cfdad3c16e7a12a480ee83cd310"),
    )),
    "cifar10": RemoteDataset("cifar10", "CIFAR-10", (
        RemoteFile(_KRIZ + "cifar-10-binary.tar.gz", 170052171,
                   "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
                   "c32a1d4ab5d03f1284b67883e8d87530"),
    ), unpack=("cifar-10-batches-bin", (*(f"data_batch_{i}.bin" for i in range(1, 6)),
                                        "test_batch.bin", "batches.meta.txt"))),
    "cifar100": RemoteDataset("cifar100", "CIFAR-100", (
        RemoteFile(_KRIZ + "cifar-100-binary.tar.gz", 168513733,
                   "58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec",
                   "03b5dce01913d631647c71ecec9e9cb8"),
    ), unpack=("cifar-100-binary", ("train.bin", "test.bin", "coarse_label_names.txt",
                                    "fine_label_names.txt"))),
    "svhn": RemoteDataset("svhn", "SVHN", (
        RemoteFile(_SVHN + "train_32x32.mat", 182040794,
                   "435e94d69a87fde4fd4d7f3dd208dfc32cb6ae8af2240d066de1df7508d083b8",
                   "e26dedcc434d2e4c54c9b2d4a06d8373"),
        RemoteFile(_SVHN + "test_32x32.mat", 64275384,
                   "cdce80dfb2a2c4c6160906d0bd7c68ec5a99d7ca4831afa54f09182025b6a75b",
                   "eb5a983be6a315427106f1b164d9cef3"),
    )),
}

Report = Callable[[str], None]


def _digests(path: Path) -> tuple[int, str, str]:
    sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            sha.update(block)
            md5.update(block)
            size += len(block)
    return size, sha.hexdigest(), md5.hexdigest()


def _mismatch(file: RemoteFile, size: int, sha256: str, md5: str) -> str | None:
    if size != file.size:
        return f"{size} bytes, expected {file.size}"
    if sha256 != file.sha256:
        return f"SHA-256 {sha256}, expected the published {file.sha256}"
    if file.md5 is not None and md5 != file.md5:
        return f"MD5 {md5}, expected the published {file.md5}"
    return None


def _stream(url: str, file: RemoteFile, out, timeout: float) -> tuple[int, str, str]:
    sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    with urllib.request.urlopen(url, timeout=timeout) as response:
        announced = response.headers.get("Content-Length")
        if announced is not None and int(announced) != file.size:
            raise DownloadError(f"{url}: the server announces {announced} bytes, expected "
                                f"{file.size}; nothing was kept")
        while block := response.read(1 << 20):
            size += len(block)
            if size > file.size:
                raise DownloadError(f"{url}: more than the expected {file.size} bytes; "
                                    "nothing was kept")
            sha.update(block)
            md5.update(block)
            out.write(block)
    return size, sha.hexdigest(), md5.hexdigest()


def fetch(file: RemoteFile, url: str, target: Path, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``target/<file name>``, verified, or raise leaving nothing behind."""
    final = target / file.filename
    tmp = tempfile.NamedTemporaryFile(dir=target, prefix=f".{file.filename}.", suffix=".part",
                                      delete=False)
    try:
        with tmp:
            size, sha256, md5 = _stream(url, file, tmp, timeout)
        problem = _mismatch(file, size, sha256, md5)
        if problem:
            raise DownloadError(f"{url}: {problem} (corrupt or interrupted download); "
                                "the file was deleted")
        os.replace(tmp.name, final)
    except DownloadError:
        Path(tmp.name).unlink(missing_ok=True)
        raise
    except (OSError, ValueError, http.client.HTTPException) as exc:  # URLError, IncompleteRead...
        Path(tmp.name).unlink(missing_ok=True)
        http_error = isinstance(exc, urllib.error.HTTPError)  # its str() has the status code
        reason = exc.reason if isinstance(exc, urllib.error.URLError) and not http_error else exc
        raise DownloadError(f"{url}: download failed ({type(exc).__name__}: {reason}); "
                            "nothing was kept") from exc
    except BaseException:  # KeyboardInterrupt: leave nothing behind, then stop
        Path(tmp.name).unlink(missing_ok=True)
        raise
    return final


def unpack(archive: Path, target: Path, folder: str, names: tuple[str, ...]) -> Path:
    """Extract ``folder/<names>`` (regular files only) from a verified tar.gz into ``target``."""
    final = target / folder
    work = Path(tempfile.mkdtemp(dir=target, prefix=f".{folder}."))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                path = PurePosixPath(member.name)
                if member.isfile() and path.parent.name == folder and path.name in names:
                    with tar.extractfile(member) as src, open(work / path.name, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        missing = [n for n in names if not (work / n).is_file()]
        if missing:
            raise DownloadError(f"{archive}: lacks {', '.join(missing)} under {folder}/")
        if final.exists():
            shutil.rmtree(final)
        os.replace(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return final


def _verified(path: Path, file: RemoteFile) -> bool:
    return path.is_file() and _mismatch(file, *_digests(path)) is None


def download(name: str, data_dir: str | Path | None = None, *, base_url: str | None = None,
             report: Report | None = None, timeout: float = 60.0) -> Path:
    """Download dataset ``name`` into ``data_dir/name`` (default: the cache); return that folder.

    A file already there and matching its checksums is kept; anything else is (re)downloaded.
    """
    if name not in DATASETS:
        raise ValueError(f"Invalid dataset: {name!r} (allowed: {', '.join(DATASETS)})")
    spec = DATASETS[name]
    report = report or (lambda message: None)
    base_url = base_url or os.environ.get(BASE_URL_ENV) or None
    target = Path(data_dir if data_dir is not None else default_data_dir()) / name
    target.mkdir(parents=True, exist_ok=True)
    for file in spec.files:
        final = target / file.filename
        if _verified(final, file):
            report(f"{final}: already there, checksums match")
            continue
        url = base_url.rstrip("/") + "/" + file.filename if base_url else file.url
        report(f"downloading {url} ({file.size / 1e6:.1f} MB)")
        fetch(file, url, target, timeout)
        report(f"{final}: size, SHA-256 and MD5 match")
    if spec.unpack is not None:
        folder, names = spec.unpack
        if all((target / folder / n).is_file() for n in names):
            report(f"{target / folder}: already unpacked")
        else:
            report(f"unpacking {folder}/")
            unpack(target / spec.files[0].filename, target, folder, names)
    return target
