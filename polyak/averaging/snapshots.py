"""Snapshots of the training trajectory, for choosing the average after training.

docs/posthoc.md. Every ``every`` optimizer steps (or at every epoch end) a snapshot file stores the
iterate ``theta_t`` (the raw parameters) and, with ``profiles=(sigma_rel_1, ...)``, the current
values of EDM2's power-function EMA profiles (Karras et al. 2024, Sec. 3: ``theta_hat <-
beta(t) theta_hat + (1 - beta(t)) theta_t`` with ``beta(t) = (1 - 1/t)^(gamma+1)`` after every
optimizer step ``t = 1, 2, ...``, ``gamma`` from ``sigma_rel``; :mod:`polyak.averaging.power_ema`).
:func:`polyak.averaging.reconstruct` turns them into any uniform window, EMA, PWA phase weighting
or latest-k average exactly, and the profiles into a power EMA of any width by least squares.

Stored dtype: at least float32 whatever the parameters' dtype (bf16/fp16 parameters give float32
files, float64 ones stay float64; ``dtype=torch.float32`` forces float32); the profiles are kept in
that dtype on the parameters' device during training (``len(profiles)`` extra model copies).

Disk cost per snapshot: ``P * itemsize * (1 + len(profiles))`` bytes for ``P`` parameter
entries, plus ``torch.save``'s records: about 0.2 KB per stored tensor (``1 + len(profiles)`` per
parameter tensor) and 1.5 KB per file. A 1.2 M-parameter float32 model takes 4.8 MB a snapshot
without profiles, 14.4 MB with two. ``bytes_per_snapshot`` gives the data part; the manifest
grows by about 40 bytes a snapshot and is rewritten (atomically) after each one.

Distributed: under DDP (replicated parameters) only rank 0 writes; under FSDP2 (``fully_shard``,
DTensor parameters on a 1-D mesh) every rank writes its own shard file and rank 0 the manifest;
the run id (and under FSDP2 the shard sizes) are exchanged at the first snapshot or load (a
collective every rank reaches at the same step): build it on every rank.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from polyak.averaging._tensors import is_sharded as _is_sharded
from polyak.averaging._tensors import local as _local
from polyak.averaging.base import check_epoch, check_every
from polyak.averaging.power_ema import power_ema_beta, sigma_rel_to_gamma
from polyak.averaging.snapshot_dir import (
    FILE_FORMAT,
    FORMAT,
    VERSION,
    SnapshotError,
    SnapshotInfo,
    atomic_write,
    read_manifest,
    snapshot_name,
    write_manifest,
)
from polyak.distributed import is_distributed, rank, world_size

__all__ = ["Snapshots"]

_FILE = re.compile(r"^snapshot-(\d+)(?:-rank(\d+))?\.pt$")


def _check_profiles(profiles: Sequence[float] | None) -> list[float]:
    if profiles is None:
        return []
    values = list(profiles) if isinstance(profiles, (list, tuple)) else None
    if not values:
        raise ValueError(f"Invalid profiles: {profiles!r} (None or a non-empty tuple of "
                         "sigma_rel values, e.g. (0.05, 0.10))")
    for v in values:
        sigma_rel_to_gamma(v)  # raises, naming the value and the allowed range
    return [float(v) for v in values]


def _snapshot_dtype(p: Tensor, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is not None:
        return dtype
    return torch.float64 if p.dtype == torch.float64 else torch.float32


def _compact(t: Tensor) -> Tensor:
    """``t`` on the CPU owning exactly its storage (torch.save writes whole storages)."""
    t = t.detach().to("cpu")
    whole = t.is_contiguous() and t.storage_offset() == 0 and \
        t.untyped_storage().nbytes() == t.numel() * t.element_size()
    return t if whole else t.clone()


class Snapshots:
    """Write snapshots of ``model``'s trajectory to ``directory`` (see the module docstring).

    Args:
        every: ``"epoch"`` (in :meth:`end_epoch`) or a number of optimizer steps (in :meth:`step`,
            at steps n, 2n, ... counted from creation), as the averages' ``every``.
        profiles: None, or the ``sigma_rel`` of each power-EMA profile to keep and store, e.g.
            ``(0.05, 0.10)`` as EDM2 (then :meth:`step` must follow every optimizer step).
        start_epoch: no snapshot during epochs before it (0-based); profiles still run.
        dtype: stored dtype (default: float64 for float64 parameters, else float32).
        meta: a JSON-serialisable dict stored in the manifest (task, recipe, seed, ...).
        overwrite: replace the snapshots of another run found in ``directory`` (else an error).

    With a :class:`~polyak.method.Method`: ``Method(..., observers=[snaps])`` or
    ``method.observe(snaps)``; the Method calls :meth:`step` after every optimizer step it takes
    (not a dropped one; once per SAM or accumulated step), :meth:`end_epoch` at every epoch end,
    before the averaging (so a PWA phase end stores the raw iterate), and carries
    :meth:`state_dict` in its own. In your own loop call them yourself::

        snaps = Snapshots(model, "run/snapshots", every=100, profiles=(0.05, 0.10))
        for epoch in range(epochs):
            for x, y in loader:
                loss_fn(model(x), y).backward(); opt.step(); opt.zero_grad()
                snaps.step()
            snaps.end_epoch(epoch)

    Resuming: :meth:`load_state_dict` makes the directory agree with the checkpoint: the
    manifest lists the checkpoint's snapshots and the later snapshot files (written after the
    checkpoint by the run that crashed) are deleted; numbering continues from there.
    """

    def __init__(
        self, model: nn.Module, directory: str | os.PathLike, *, every: str | int = "epoch",
        profiles: Sequence[float] | None = None, start_epoch: int = 0,
        dtype: torch.dtype | None = None, meta: dict[str, Any] | None = None,
        overwrite: bool = False,
    ) -> None:
        self.every = check_every(every)
        self.start_epoch = check_epoch(start_epoch, "start_epoch")
        self.sigma_rels = _check_profiles(profiles)
        self.gammas = [sigma_rel_to_gamma(s) for s in self.sigma_rels]
        if dtype not in (None, torch.float32, torch.float64):
            raise ValueError(f"Invalid dtype: {dtype!r} (None, torch.float32 or torch.float64)")
        try:
            json.dumps(meta or {})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"Invalid meta: {meta!r} (a JSON-serialisable dict: {exc})") from exc
        named = list(model.named_parameters())
        if not named:
            raise ValueError("Invalid model: it has no parameters to snapshot")
        self.model, self.directory = model, Path(directory)
        self.dtype, self.meta, self.overwrite = dtype, dict(meta or {}), bool(overwrite)
        params = [p for _, p in named]
        self._dtypes = [_snapshot_dtype(p, dtype) for p in params]
        self.sharded = any(_is_sharded(p) for p in params)
        self._parameters = self._describe(model, named)
        self._profiles = [[torch.zeros_like(_local(p), dtype=d) for p, d in
                           zip(params, self._dtypes)] for _ in self.gammas]
        self.run_id = uuid.uuid4().hex
        self.rank: int | None = None      # set by _setup, once the process group is up
        self.steps, self.epoch = 0, 0
        self.entries: list[SnapshotInfo] = []
        self._ready, self._synced, self._resumed, self._after_end = False, False, False, False

    # ------------------------------------------------------------------ description
    def _describe(self, model: nn.Module, named: list[tuple[str, Tensor]]) -> list[dict]:
        out = []
        for (name, p), d in zip(named, self._dtypes):
            out.append({"name": name, "shape": list(p.shape), "dtype": str(p.dtype)[6:],
                        "snapshot_dtype": str(d)[6:], "trainable": bool(p.requires_grad)})
        if self.sharded:
            self._shard_dims(out, [p for _, p in named])
        self._batchnorm = [n for n, m in model.named_modules() if isinstance(m, _BatchNorm)]
        return out

    def _shard_dims(self, out: list[dict], params: list[Tensor]) -> None:
        """``shard_dim`` of each parameter (FSDP2: ``Shard(0)`` on a 1-D mesh), None when
        replicated; the sizes of every rank's shard are gathered by :meth:`_setup`."""
        from torch.distributed.tensor import Replicate, Shard

        for desc, p in zip(out, params):
            placements = getattr(p, "placements", (Replicate(),))
            mesh = getattr(p, "device_mesh", None)
            ok = len(placements) == 1 and isinstance(placements[0], (Shard, Replicate))
            if not ok or (mesh is not None and mesh.size() != world_size()):
                raise ValueError(f"Invalid model: parameter {desc['name']!r} is laid out as "
                                 f"{placements} (Snapshots takes FSDP2's Shard(dim) or "
                                 "Replicate() on a 1-D mesh of every rank)")
            desc["shard_dim"] = placements[0].dim if isinstance(placements[0], Shard) else None

    def _setup(self) -> None:
        """What needs the process group, done once it is up (at the first write or load, which
        every rank reaches at the same step; Lightning starts the group after the model is
        built): this rank, rank 0's run id, every rank's shard sizes; then the directory."""
        if self._ready:
            return
        self.rank = rank() if is_distributed() else None
        if is_distributed():
            box = [self.run_id]
            torch.distributed.broadcast_object_list(box, src=0)
            self.run_id = box[0]
        if self.sharded:
            params = list(self.model.parameters())
            local = [None if d["shard_dim"] is None else _local(p).shape[d["shard_dim"]]
                     for d, p in zip(self._parameters, params)]
            gathered: list[Any] = [None] * world_size()
            torch.distributed.all_gather_object(gathered, local)
            for i, desc in enumerate(self._parameters):
                desc["shard_sizes"] = None if desc["shard_dim"] is None else \
                    [int(g[i]) for g in gathered]
        if self._writes:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._ready = True

    @property
    def _writes(self) -> bool:
        """Whether this process writes snapshot files (FSDP2: every rank; else rank 0)."""
        return self.sharded or self.rank in (None, 0)

    @property
    def bytes_per_snapshot(self) -> int:
        """Bytes of tensor data in one snapshot (all ranks' shards together)."""
        n = sum(torch.Size(p["shape"]).numel() * d.itemsize
                for p, d in zip(self._parameters, self._dtypes))
        return n * (1 + len(self.gammas))

    def _manifest(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION, "run_id": self.run_id,
            "parameters": self._parameters, "every": self.every,
            "start_epoch": self.start_epoch,
            "profiles": [{"sigma_rel": s, "gamma": g} for s, g in
                         zip(self.sigma_rels, self.gammas)],
            "batchnorm": self._batchnorm, "world_size": world_size(), "sharded": self.sharded,
            "bytes_per_snapshot": self.bytes_per_snapshot, "meta": self.meta,
            "snapshots": [e._asdict() for e in self.entries],
        }

    # ------------------------------------------------------------------ the directory
    def _file_rank(self) -> int | None:
        return (self.rank or 0) if self.sharded else None

    def _sync(self) -> None:
        """Make the directory agree with this object: refuse another run's snapshots (unless
        ``overwrite``), check this run's earlier files are there, delete later ones."""
        self._setup()
        if not self._writes:
            self._synced = True
            return
        existing = read_manifest(self.directory)
        other = existing is not None and existing.get("run_id") != self.run_id
        if self._resumed and self.entries and (existing is None or other):
            raise SnapshotError(
                f"Invalid directory {self.directory}: the checkpoint's {len(self.entries)} "
                f"snapshots (run {self.run_id}) are not in it; resume with the directory the "
                "run wrote to")
        if other and existing["snapshots"] and not self.overwrite:
            raise SnapshotError(
                f"Invalid directory {self.directory}: it holds {len(existing['snapshots'])} "
                f"snapshots of another run ({existing['run_id']}); pass overwrite=True to "
                "replace them, or load that run's checkpoint to continue it")
        me = self._file_rank()
        for i in range(len(self.entries)):
            if not (self.directory / snapshot_name(i, me)).exists():
                raise SnapshotError(f"Missing snapshot file {self.directory / snapshot_name(i, me)}"
                                    f" (snapshot {i} of the checkpoint being resumed)")
        for path in self.directory.iterdir():   # later ones: this rank's (one process: all)
            match = _FILE.match(path.name)
            mine = self.rank is None or (None if match is None or match[2] is None
                                         else int(match[2])) == me
            if match and mine and int(match[1]) >= len(self.entries):
                path.unlink()
        if self.rank in (None, 0):
            write_manifest(self.directory, self._manifest())
        self._synced = True

    @torch.no_grad()
    def _write(self, epoch: int) -> None:
        if self._profiles and self.steps == 0:
            raise ValueError("Snapshots(profiles=...) was told of no optimizer step before this "
                             "snapshot: call step() after every optimizer step (a Method does)")
        if not self._synced:
            self._sync()
        info = SnapshotInfo(len(self.entries), self.steps, epoch)
        if self._writes:
            params = [_local(p) for p in self.model.parameters()]
            payload = {
                "format": FILE_FORMAT, "version": VERSION, "run_id": self.run_id,
                **info._asdict(), "rank": self._file_rank(),
                "iterate": [_compact(p.to(dtype=d)) for p, d in zip(params, self._dtypes)],
                "profiles": [[_compact(t) for t in prof] for prof in self._profiles],
            }
            path = self.directory / snapshot_name(info.index, self._file_rank())
            # the directory is fsynced once, after the manifest's rename (or now, off rank 0)
            atomic_write(path, lambda f: torch.save(payload, f), sync_dir=self.rank not in
                         (None, 0))
        self.entries.append(info)
        if self.rank in (None, 0):
            write_manifest(self.directory, self._manifest())

    # ------------------------------------------------------------------ events
    @torch.no_grad()
    def step(self) -> None:
        """Call after every optimizer step: advances the profiles (step ``t = steps + 1``) and
        writes a snapshot when ``every`` steps are due."""
        t = self.steps + 1
        if self._profiles:
            src = [_local(p).detach() for p in self.model.parameters()]
            src = [s if s.dtype == d else s.to(d) for s, d in zip(src, self._dtypes)]
            for prof, gamma in zip(self._profiles, self.gammas):
                torch._foreach_lerp_(prof, src, 1.0 - power_ema_beta(t, gamma))
        self.steps = t
        self._after_end = False
        if self.every != "epoch" and t % self.every == 0 and self.epoch >= self.start_epoch:
            self._write(self.epoch)

    def end_epoch(self, epoch: int) -> None:
        """Call after epoch ``epoch`` (0-based, in order); writes a snapshot when
        ``every="epoch"``. Called again for the same epoch right after (a ``Method.end_epoch``
        that raised after this call and is retried), it rewrites that epoch's snapshot."""
        epoch = check_epoch(epoch)
        if self._after_end and epoch == self.epoch - 1:
            if self.entries and self.entries[-1].epoch == epoch and self.every == "epoch":
                self.entries.pop()
                self._write(epoch)
            return
        if epoch != self.epoch:
            raise ValueError(f"Invalid epoch: {epoch} (expected {self.epoch}: Snapshots takes "
                             "every epoch, 0-based and in order; to resume, load_state_dict() "
                             "a checkpoint first)")
        if self.every == "epoch" and epoch >= self.start_epoch:
            self._write(epoch)
        self.epoch = epoch + 1
        self._after_end = True

    # ------------------------------------------------------------------ checkpoints
    def _hyper(self) -> dict[str, Any]:
        return {"every": self.every, "start_epoch": self.start_epoch,
                "profiles": list(self.sigma_rels),
                "dtype": None if self.dtype is None else str(self.dtype)[6:]}

    def state_dict(self) -> dict[str, Any]:
        """Counters, the run id, the snapshots written so far and the profiles (references to
        its tensors, as torch's state dicts hold)."""
        return {"type": "Snapshots", "hyper": self._hyper(), "run_id": self.run_id,
                "steps": self.steps, "epoch": self.epoch,
                "entries": [list(e) for e in self.entries],
                "profiles": [list(p) for p in self._profiles]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` and make the directory agree with it (see the class
        docstring); ValueError if it is from other hyper-parameters or another model."""
        if state.get("type") != "Snapshots":
            raise ValueError(f"Invalid state_dict: it is from a {state.get('type')}, "
                             "not a Snapshots")
        if state.get("hyper") != self._hyper():
            raise ValueError(f"Invalid state_dict: it has {state.get('hyper')}, this Snapshots "
                             f"has {self._hyper()}")
        want = [[tuple(t.shape) for t in prof] for prof in self._profiles]
        if [[tuple(t.shape) for t in prof] for prof in state["profiles"]] != want:
            raise ValueError("Invalid state_dict: it is from a model with other parameters")
        with torch.no_grad():
            for prof, saved in zip(self._profiles, state["profiles"]):
                for t, s in zip(prof, saved):
                    t.copy_(_local(s))
        self.run_id = str(state["run_id"])
        self.steps, self.epoch = int(state["steps"]), int(state["epoch"])
        self.entries = [SnapshotInfo(*map(int, e)) for e in state["entries"]]
        self._resumed, self._after_end = True, False
        self._sync()

    def __repr__(self) -> str:
        return (f"Snapshots({str(self.directory)!r}, every={self.every!r}, "
                f"profiles={self.sigma_rels}, written={len(self.entries)})")
