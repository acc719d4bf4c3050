"""Checkpoints a benchmark run keeps for the analysis tools (``--keep-checkpoints``).

``polyak bench --keep-checkpoints epochs=0,10,39`` (or ``every=5``, or ``all``) saves, at the end of
each chosen epoch, the LIVE model's ``state_dict`` (weights and BatchNorm buffers: the iterate
itself, which is what segment probes, two-point averages, stability and diversity measure) as

    <dir>/<task>/<method>/seed<k>/epoch<e>.pt

with the epoch, the learning rate of that epoch and the run's identity. Files are written to a
temporary name and renamed, so a killed run never leaves a half-written checkpoint, and are read
back with ``torch.load(weights_only=True)``: loading a checkpoint runs no pickled code.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["KeepEpochs", "CheckpointPolicy", "checkpoint_dir", "save_checkpoint",
           "load_checkpoint", "list_checkpoints"]

_FILE = re.compile(r"^epoch(\d+)\.pt$")


@dataclass(frozen=True)
class KeepEpochs:
    """Which 0-based epochs to keep: an explicit set, every n-th (and the last), or all."""

    epochs: frozenset[int] = frozenset()
    every: int | None = None

    @classmethod
    def parse(cls, text: str) -> KeepEpochs:
        """``"epochs=0,10,39"``, ``"every=5"`` or ``"all"``."""
        text = text.strip()
        if text == "all":
            return cls(every=1)
        key, eq, value = text.partition("=")
        try:
            if eq and key.strip() == "epochs":
                epochs = frozenset(int(v) for v in value.split(",") if v.strip())
                if epochs and min(epochs) >= 0:
                    return cls(epochs=epochs)
            elif eq and key.strip() == "every" and int(value) >= 1:
                return cls(every=int(value))
        except ValueError:
            pass
        raise ValueError(f"Invalid keep-checkpoints: {text!r} (allowed: 'epochs=0,10,39' with "
                         "epochs >= 0, 'every=N' with N >= 1, or 'all')")

    def wants(self, epoch: int, epochs: int) -> bool:
        """Whether epoch ``epoch`` of a run of ``epochs`` epochs is kept."""
        if self.every is not None:
            return (epoch + 1) % self.every == 0 or epoch == 0 or epoch == epochs - 1
        return epoch in self.epochs


@dataclass(frozen=True)
class CheckpointPolicy:
    """Where (``root``) and when (``keep``) a run saves its live model."""

    root: Path
    keep: KeepEpochs

    def maybe_save(self, model: nn.Module, *, task: str, method: str, seed: int, epoch: int,
                   epochs: int, lr: float) -> Path | None:
        """Save epoch ``epoch`` of the run if the policy keeps it; returns the file or None."""
        if not self.keep.wants(epoch, epochs):
            return None
        import polyak
        from polyak.bench.device import OnDevice

        net = model.net if isinstance(model, OnDevice) else model  # the CUDA wrapper's model
        return save_checkpoint(checkpoint_dir(self.root, task, method, seed), net, epoch=epoch,
                               lr=lr, meta={"task": task, "method": method, "seed": int(seed),
                                            "polyak_version": polyak.__version__})


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+=,-]", "_", name)


def checkpoint_dir(root: str | Path, task: str, method: str, seed: int) -> Path:
    """Where the checkpoints of one run live."""
    return Path(root) / _safe(task) / _safe(method) / f"seed{int(seed)}"


def save_checkpoint(directory: str | Path, model: nn.Module, *, epoch: int, lr: float,
                    meta: dict[str, Any]) -> Path:
    """Write the live model of ``epoch`` atomically; returns the file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"epoch{int(epoch)}.pt"
    tmp = directory / f".epoch{int(epoch)}.pt.tmp{os.getpid()}"
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    torch.save({"model": state, "epoch": int(epoch), "lr": float(lr), **meta}, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's contents (``"model"``: the state dict, ``"epoch"``, ``"lr"``, ...)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which, not a traceback
        raise ValueError(f"Cannot read checkpoint {path}: {exc}") from None
    if not isinstance(data, dict) or "model" not in data:
        data = {"model": data, "epoch": None, "lr": None}
    return data


def list_checkpoints(directory: str | Path) -> list[Path]:
    """The ``epoch<e>.pt`` files of a run directory, in epoch order."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"No checkpoint directory {directory}")
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _FILE.match(p.name))]
    if not found:
        raise FileNotFoundError(f"No epoch<e>.pt checkpoints in {directory}")
    return [p for _, p in sorted(found)]
