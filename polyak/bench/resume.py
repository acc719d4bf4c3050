"""Mid-run checkpoints of a benchmark run and exact resume from them.

A run saves its complete state at the end of every ``every``-th epoch (and/or when ``seconds``
have passed since the last save): the model's ``state_dict`` (weights and buffers),
``Method.state_dict()`` (optimizer, averages, triggers, switches, K-FAC factors, schedule-free
state), every random generator the run draws from (torch CPU and CUDA, numpy, Python, the
batch-order and augmentation ``torch.Generator``\\ s), the epoch reached, the metrics recorded so
far and the epochs it was resumed at, as

    <root>/<task>/<method>/seed<k>/resume-<epochs>ep-<config hash>.pt

The file is written to a temporary name in the same directory, flushed to disk (``fsync``) and
renamed over the previous one (then the directory is synced), so a kill at any moment leaves
either the old checkpoint or the new one, never a mix. It is read with
``torch.load(weights_only=True)``: loading runs no pickled code (RNG states are stored as
tensors and lists of ints for that reason). A checkpoint whose identity (task, spec, seed,
epochs, config hash, polyak version) differs from the run's is refused with a
:class:`CheckpointError` naming the file and what to do; it is never silently used. The
checkpoint of a finished run is removed by the runner once the run is in the store.

On the CPU with one thread, a run continued from a checkpoint is bit for bit the uninterrupted
run (same kernels in the same order from the same state). On CUDA the state is restored the
same way, but cuDNN's kernel choice is not deterministic: the continued run is a valid
continuation, not a bitwise copy.
"""

from __future__ import annotations

import errno
import os
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["CheckpointError", "ResumePolicy", "RunCheckpoint", "capture_rngs", "restore_rngs",
           "parse_every", "SLEEP_ENV"]

#: test hook: seconds to sleep between writing the temporary file and renaming it.
SLEEP_ENV = "POLYAK_TEST_CHECKPOINT_SLEEP"
FORMAT = 1


class CheckpointError(ValueError):
    """A run checkpoint cannot be used (unreadable, or another run's); the message names the
    file and what to do. A ``ValueError``: the CLI prints it as one line and exits with 2."""


def parse_every(text: str) -> tuple[int | None, float | None]:
    """``"3"`` -> every 3 epochs; ``"10m"``, ``"90s"``, ``"1h"`` -> by time; ``"off"`` -> never.
    Returns ``(epochs, seconds)``."""
    value = str(text).strip().lower()
    if value in ("off", "0", "never"):
        return None, None
    units = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
    for unit in sorted(units, key=len, reverse=True):
        if value.endswith(unit):
            try:
                seconds = float(value[: -len(unit)]) * units[unit]
            except ValueError:
                break
            if seconds > 0:
                return None, seconds
            break
    else:
        if value.isdigit() and int(value) >= 1:
            return int(value), None
    raise ValueError(f"Invalid checkpoint-every: {text!r} (allowed: a number of epochs >= 1, "
                     "a time such as 90s, 10m or 1h, or off)")


def capture_rngs(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """Every RNG state a run draws from, in types ``torch.load(weights_only=True)`` reads."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": py_gauss},
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rngs(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    """Set every RNG back to ``state`` (from :func:`capture_rngs`)."""
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["gauss"]))
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    if set(state["generators"]) != set(generators):
        raise CheckpointError(f"checkpoint has generators {sorted(state['generators'])}, the "
                              f"run draws from {sorted(generators)}")
    for name, g in generators.items():
        g.set_state(state["generators"][name])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in ``path``'s directory, fsync, rename over ``path``.
    On any error the temporary file is removed and ``path`` is left as it was."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        pause = os.environ.get(SLEEP_ENV)
        if pause:
            time.sleep(float(pause))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _reason(exc: BaseException) -> str:
    """Why a file could not be read, on one line: the exception's type and the first sentence
    of its message, whole (torch's messages run on for several sentences and lines)."""
    text = " ".join(str(exc).split())
    match = re.match(r".*?[.!?](?=\s|$)", text)
    sentence = match.group(0) if match else text
    return f"{type(exc).__name__}: {sentence}" if sentence else type(exc).__name__


@dataclass(frozen=True)
class RunCheckpoint:
    """The resume checkpoint of one run: its file, the run's identity and when to save."""

    path: Path
    identity: dict[str, Any]
    every: int | None = 1
    seconds: float | None = None

    def due(self, epoch: int, since_last_save: float) -> bool:
        """Whether to save after epoch ``epoch`` (0-based)."""
        by_epochs = self.every is not None and (epoch + 1) % self.every == 0
        by_time = self.seconds is not None and since_last_save >= self.seconds
        return by_epochs or by_time

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` (with the run's identity) atomically; ``CheckpointError`` naming the
        file when the disk refuses (full, read-only): the previous checkpoint stays intact."""
        data = {"format": FORMAT, "identity": dict(self.identity), **state}
        try:
            for attempt in range(3):
                self.path.parent.mkdir(parents=True, exist_ok=True)
                try:
                    atomic_save(data, self.path)
                    break
                except FileNotFoundError:  # the driver removed the (empty) directories just
                    if attempt == 2:       # then, finishing another run (see remove): again
                        raise
        except OSError as exc:
            why = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
            raise CheckpointError(
                f"cannot write checkpoint {self.path}: {why}; free space or choose another "
                "--checkpoint-dir (the previous checkpoint is intact)") from None

    def load(self) -> dict[str, Any] | None:
        """The saved state, ``None`` when there is no checkpoint; ``CheckpointError`` for an
        unreadable file or another run's checkpoint."""
        if not self.path.exists():
            return None
        remedy = "delete it to restart the run from epoch 0"
        try:
            data = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated, corrupt, or not a checkpoint at all
            raise CheckpointError(f"cannot read checkpoint {self.path} ({_reason(exc)}); "
                                  f"{remedy}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CheckpointError(f"{self.path} is not a polyak run checkpoint of format "
                                  f"{FORMAT}; {remedy}")
        theirs = data.get("identity")
        if theirs != self.identity:
            diff = sorted(k for k in set(self.identity) | set(theirs or {})
                          if (theirs or {}).get(k) != self.identity.get(k))
            shown = ", ".join(f"{k} {(theirs or {}).get(k)!r} (run: {self.identity.get(k)!r})"
                              for k in diff)
            raise CheckpointError(f"checkpoint {self.path} belongs to another run ({shown}); "
                                  f"{remedy}, or use the polyak that wrote it")
        return data

    def remove(self) -> None:
        """Delete the checkpoint (and the directories it leaves empty, up to the root)."""
        self.path.unlink(missing_ok=True)
        for stale in self.path.parent.glob(f".{self.path.name}.tmp*"):
            stale.unlink(missing_ok=True)
        directory = self.path.parent
        for _ in range(4):  # seed<k>/, <method>/, <task>/, the root when empty
            try:
                directory.rmdir()
            except OSError:
                break
            directory = directory.parent


@dataclass(frozen=True)
class ResumePolicy:
    """Where (``root``) and how often the runs of a grid save their resume checkpoints."""

    root: Path
    every: int | None = 1
    seconds: float | None = None

    def for_run(self, identity: dict[str, Any]) -> RunCheckpoint:
        from polyak.bench.checkpoints import checkpoint_dir

        directory = checkpoint_dir(self.root, identity["task"], identity["method"],
                                   identity["seed"])
        name = f"resume-{identity['epochs']}ep-{identity['config_hash']}.pt"
        return RunCheckpoint(directory / name, identity, self.every, self.seconds)

    @property
    def enabled(self) -> bool:
        return self.every is not None or self.seconds is not None
