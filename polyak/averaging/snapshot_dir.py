"""A directory of training snapshots: its format, atomic writes, and :class:`SnapshotDir`.

Written by :class:`polyak.averaging.Snapshots`, read by :func:`polyak.averaging.reconstruct`.
The directory describes itself:

- ``manifest.json``: ``format``/``version``; ``run_id`` (a random id of the run that wrote it);
  ``parameters`` (each parameter's ``name``, global ``shape``, training ``dtype``, stored
  ``snapshot_dtype``, ``trainable`` and, under FSDP2, ``shard_dim``/``shard_sizes``);
  ``every`` and ``start_epoch``; ``profiles`` (each stored power-EMA profile's ``sigma_rel`` and
  ``gamma``); ``batchnorm`` (names of the BatchNorm modules whose statistics a reconstruction
  should recompute); ``world_size``/``sharded``; ``meta`` (whatever the user passed: task, recipe,
  seed, ...); ``snapshots``: ``{"index", "step", "epoch"}`` of every snapshot, in order.
- one file per snapshot, ``snapshot-000042.pt`` (``snapshot-000042-rank1.pt``: rank 1's shard
  under FSDP2), a ``torch.save`` dict readable with ``torch.load(weights_only=True)``: the same
  ``run_id``, ``index``, ``step``, ``epoch``, ``rank``, ``iterate`` (one tensor per parameter, in
  the manifest's order) and ``profiles`` (per profile, one tensor per parameter).

``step`` is the number of optimizer steps taken when the snapshot was written; ``epoch`` the
0-based epoch whose training produced the iterate. Every file is written to a temporary name,
fsynced and renamed, so a crash leaves either the old file or the new one.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch

__all__ = ["SnapshotDir", "SnapshotInfo", "SnapshotError", "MANIFEST"]

MANIFEST = "manifest.json"
FORMAT, FILE_FORMAT, VERSION = "polyak-snapshots", "polyak-snapshot", 1


class SnapshotError(ValueError):
    """A snapshot directory or file that is missing, unreadable, or not what its manifest says."""


class SnapshotInfo(NamedTuple):
    """One snapshot: its 0-based ``index``, the optimizer ``step`` count when it was taken and
    the 0-based ``epoch`` whose training produced it."""

    index: int
    step: int
    epoch: int


def snapshot_name(index: int, rank: int | None = None) -> str:
    return f"snapshot-{index:06d}.pt" if rank is None else f"snapshot-{index:06d}-rank{rank}.pt"


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not possible on every platform (e.g. Windows)
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, write: Any, sync_dir: bool = True) -> None:
    """``write(file)`` into a temporary file beside ``path``, fsync it, rename it to ``path``
    (and fsync the directory, making the rename durable, unless ``sync_dir=False``)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    if sync_dir:
        _fsync_dir(path.parent)


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    text = json.dumps(manifest, indent=1).encode()
    atomic_write(directory / MANIFEST, lambda f: f.write(text))


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of ``directory``, None when there is none; SnapshotError when unreadable."""
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SnapshotError(f"Invalid snapshot manifest {path}: cannot be read ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else None
        raise SnapshotError(f"Invalid snapshot manifest {path}: not a polyak snapshot "
                            f"directory (format {got!r}, expected {FORMAT!r})")
    if manifest.get("version") != VERSION:
        raise SnapshotError(f"Invalid snapshot manifest {path}: version "
                            f"{manifest.get('version')!r}, this polyak reads version {VERSION}")
    return manifest


def local_shapes(manifest: dict[str, Any], rank: int | None) -> list[tuple[int, ...]]:
    """The shapes of the tensors in ``rank``'s file (the global ones when not sharded)."""
    shapes = []
    for p in manifest["parameters"]:
        shape = list(p["shape"])
        if rank is not None and p.get("shard_dim") is not None:
            shape[p["shard_dim"]] = p["shard_sizes"][rank]
        shapes.append(tuple(shape))
    return shapes


def load_file(path: Path, manifest: dict[str, Any], index: int, rank: int | None
              ) -> dict[str, Any]:
    """Snapshot ``index`` (``rank``'s shard), checked against the manifest: SnapshotError naming
    the file when it is missing, unreadable, foreign or of other shapes."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise SnapshotError(f"Missing snapshot file {path} (snapshot {index} of the manifest "
                            f"{path.parent / MANIFEST})") from exc
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise SnapshotError(f"Invalid snapshot file {path}: cannot be read "
                            f"({type(exc).__name__}: {first})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FILE_FORMAT:
        raise SnapshotError(f"Invalid snapshot file {path}: not a polyak snapshot "
                            f"(a {type(payload).__name__} without format {FILE_FORMAT!r})")
    if payload.get("run_id") != manifest["run_id"] or payload.get("index") != index:
        raise SnapshotError(
            f"Invalid snapshot file {path}: it is snapshot {payload.get('index')} of run "
            f"{payload.get('run_id')}, the manifest expects snapshot {index} of run "
            f"{manifest['run_id']}")
    want = local_shapes(manifest, rank)
    parts = [payload.get("iterate"), *(payload.get("profiles") or [])]
    if len(parts) != 1 + len(manifest["profiles"]) or any(
            not isinstance(ts, list) or [tuple(t.shape) for t in ts] != want for ts in parts):
        raise SnapshotError(f"Invalid snapshot file {path}: its tensors are not those of the "
                            f"manifest ({len(want)} parameters and {len(manifest['profiles'])} "
                            "profiles of the recorded shapes)")
    return payload


class SnapshotDir:
    """A snapshot directory opened for reading (see the module docstring for its contents).

    Attributes: ``directory``, ``manifest`` (the parsed JSON), ``entries`` (a
    :class:`SnapshotInfo` per snapshot, in order), ``names``/``shapes`` (of the parameters),
    ``sigma_rels``/``gammas`` (of the stored power-EMA profiles), ``batchnorm`` (BatchNorm module
    names), ``meta``, ``every``, ``sharded``, ``world_size``.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        manifest = read_manifest(self.directory)
        if manifest is None:
            raise SnapshotError(f"Invalid snapshot directory {self.directory}: it has no "
                                f"{MANIFEST} (write one with polyak.averaging.Snapshots)")
        self.manifest = manifest
        self.entries = [SnapshotInfo(int(e["index"]), int(e["step"]), int(e["epoch"]))
                        for e in manifest["snapshots"]]
        if [e.index for e in self.entries] != list(range(len(self.entries))):
            raise SnapshotError(f"Invalid snapshot manifest {self.directory / MANIFEST}: the "
                                "snapshots are not numbered 0, 1, 2, ...")
        params = manifest["parameters"]
        self.names = [p["name"] for p in params]
        self.shapes = [tuple(p["shape"]) for p in params]
        self.sigma_rels = [float(p["sigma_rel"]) for p in manifest["profiles"]]
        self.gammas = [float(p["gamma"]) for p in manifest["profiles"]]
        self.batchnorm = list(manifest["batchnorm"])
        self.meta = manifest.get("meta", {})
        self.every = manifest["every"]
        self.sharded = bool(manifest["sharded"])
        self.world_size = int(manifest["world_size"])

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return (f"SnapshotDir({str(self.directory)!r}: {len(self)} snapshots, every="
                f"{self.every!r}, profiles={self.sigma_rels})")

    def ranks(self) -> list[int | None]:
        """The rank of each file of one snapshot (``[None]``: one file, not sharded)."""
        return list(range(self.world_size)) if self.sharded else [None]

    def path(self, index: int, rank: int | None = None) -> Path:
        return self.directory / snapshot_name(index, rank)

    def load(self, index: int, rank: int | None = None) -> dict[str, Any]:
        """The payload of snapshot ``index`` (``rank``'s file when sharded; ``rank`` is ignored
        otherwise), checked against the manifest."""
        if not 0 <= index < len(self):
            raise IndexError(f"snapshot {index} out of range (0..{len(self) - 1})")
        if not self.sharded:
            rank = None
        elif rank is None:
            raise ValueError("Invalid rank: None (the snapshots are sharded: one file per rank "
                             f"0..{self.world_size - 1})")
        return load_file(self.path(index, rank), self.manifest, index, rank)

    def placements(self, rank: int | None) -> list[tuple[int, int, int] | None]:
        """Where each tensor of ``rank``'s file goes in the full parameter: ``(dim, offset,
        length)``, ``(-1, 0, 0)`` for a whole tensor, None for a replicated one held by rank 0."""
        out: list[tuple[int, int, int] | None] = []
        for p in self.manifest["parameters"]:
            dim = p.get("shard_dim")
            if rank is None or dim is None:
                out.append((-1, 0, 0) if rank in (None, 0) else None)
            else:
                sizes = p["shard_sizes"]
                out.append((dim, sum(sizes[:rank]), sizes[rank]))
        return out

    def disk_bytes(self) -> int:
        """Bytes the snapshot files of this directory take on disk (manifest excluded)."""
        return sum(f.stat().st_size for f in self._files())

    def _files(self) -> Iterator[Path]:
        for e in self.entries:
            for r in self.ranks():
                path = self.path(e.index, r)
                if path.exists():
                    yield path
