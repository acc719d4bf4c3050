"""The run store: one SQLite file holding every benchmark run and its per-epoch metrics.

A run's identity is (task, method spec, seed, epochs, config hash); the config is the task's
:meth:`~polyak.bench.tasks.Task.config` plus the learning-rate override the bench applied, so
changing a task or its tuned learning rates makes new runs instead of mixing results.
Status: ``pending`` (planned), ``running`` (handed to a worker; a killed bench leaves it so and
the next bench runs it again), ``complete``, ``diverged`` (a non-finite loss; deterministic, so
final like ``complete``) and ``failed`` (an exception, stored with its text; retried by the next
bench). A finished run and all its metric rows are written in one transaction, so a kill never
leaves a half-written run. One bench at a time per store: two benches on the same file would
both run the runs neither has finished.

Opening checks the file before writing anything: a file that is not SQLite, an SQLite file that
is not a polyak store, or a store of another schema version raises :class:`StoreError` (a
``ValueError``: the CLI prints one line and exits with 2) and leaves the file untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polyak

__all__ = ["Store", "StoreError", "RunKey", "SCHEMA_VERSION", "config_hash", "FINAL", "METRICS"]

SCHEMA_VERSION = 1
METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "lr", "time")
FINAL = ("complete", "diverged")  # statuses a rerun does not redo

_SCHEMA = f"""
CREATE TABLE schema_version (version INTEGER NOT NULL, created_by TEXT NOT NULL);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    task TEXT NOT NULL, method TEXT NOT NULL, seed INTEGER NOT NULL, epochs INTEGER NOT NULL,
    config_hash TEXT NOT NULL, config TEXT NOT NULL,
    status TEXT NOT NULL
        CHECK (status IN ('pending', 'running', 'complete', 'diverged', 'failed')),
    started REAL, finished REAL, wall_time REAL, version TEXT NOT NULL, error TEXT,
    UNIQUE (task, method, seed, epochs, config_hash)
);
CREATE TABLE metrics (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    {", ".join(f"{m} REAL" for m in METRICS)},
    PRIMARY KEY (run_id, epoch)
);
"""


class StoreError(ValueError):
    """The store file cannot be used (not SQLite, not a polyak store, other schema, unwritable)."""


def config_hash(config: dict[str, Any]) -> str:
    """A short stable hash of a JSON-serialisable config."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunKey:
    """The identity of a run in the store."""

    task: str
    method: str
    seed: int
    epochs: int
    config: str  # canonical JSON of the config dict

    @property
    def hash(self) -> str:
        return config_hash(json.loads(self.config))


def _check_existing(path: Path) -> None:
    """Raise StoreError unless ``path`` is an empty SQLite file or a store of our schema."""
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not tables:
                return
            if "schema_version" not in tables:
                raise StoreError(f"{path} is an SQLite file but not a polyak run store")
            row = db.execute("SELECT version, created_by FROM schema_version").fetchone()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} is not a polyak run store ({exc})") from None
    if row is None or row[0] != SCHEMA_VERSION:
        raise StoreError(
            f"{path} is a run store of schema version {row[0] if row else '?'} "
            f"(written by polyak {row[1] if row else '?'}); this polyak reads version "
            f"{SCHEMA_VERSION}: choose another --store")


class Store:
    """A polyak run store at ``path`` (created when missing)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise StoreError(f"{self.path} is a directory, not a run store file")
        if self.path.exists():
            if not os.access(self.path, os.R_OK | os.W_OK):
                raise StoreError(f"{self.path} is not readable and writable")
            _check_existing(self.path)
        elif not os.access(self.path.parent, os.W_OK):
            raise StoreError(f"cannot create the run store {self.path}: "
                             f"{self.path.parent} is not a writable directory")
        try:
            self.db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            self.db.execute("PRAGMA foreign_keys = ON")
            with self.transaction():
                if not self.db.execute("SELECT name FROM sqlite_master").fetchall():
                    self._create()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot use the run store {self.path}: {exc}") from None

    def _create(self) -> None:
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                self.db.execute(statement)
        self.db.execute("INSERT INTO schema_version VALUES (?, ?)",
                        (SCHEMA_VERSION, polyak.__version__))

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def transaction(self) -> _Transaction:
        return _Transaction(self.db)

    # -- writing ----------------------------------------------------------------------------

    def plan(self, keys: list[RunKey]) -> None:
        """Insert the runs of a grid that the store does not hold yet, as ``pending``."""
        with self.transaction():
            self.db.executemany(
                "INSERT OR IGNORE INTO runs (task, method, seed, epochs, config_hash, config, "
                "status, version) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)",
                [(k.task, k.method, k.seed, k.epochs, k.hash, k.config, polyak.__version__)
                 for k in keys])

    def release(self, keys: list[RunKey]) -> None:
        """Put runs that were handed out but not finished (an interrupt) back to ``pending``."""
        with self.transaction():
            for key in keys:
                self.db.execute(
                    "UPDATE runs SET status='pending', started=NULL WHERE status='running' AND "
                    "task=? AND method=? AND seed=? AND epochs=? AND config_hash=?",
                    (key.task, key.method, key.seed, key.epochs, key.hash))

    def claim(self, key: RunKey) -> int:
        """Mark ``key`` as running (inserting it or resetting a failed/stale row); its id."""
        with self.transaction():
            self.db.execute(
                "INSERT INTO runs (task, method, seed, epochs, config_hash, config, status, "
                "started, version) VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?) "
                "ON CONFLICT (task, method, seed, epochs, config_hash) DO UPDATE SET "
                "status='running', started=excluded.started, finished=NULL, wall_time=NULL, "
                "error=NULL, version=excluded.version",
                (key.task, key.method, key.seed, key.epochs, key.hash, key.config, time.time(),
                 polyak.__version__))
            run_id = self._id(key)
            self.db.execute("DELETE FROM metrics WHERE run_id = ?", (run_id,))
        return run_id

    def finish(self, key: RunKey, result: Any) -> None:
        """Store a finished run (a :class:`~polyak.bench.train.RunResult`) and its metric rows
        in one transaction."""
        columns = ", ".join(("run_id", "epoch", *METRICS))
        marks = ", ".join("?" * (2 + len(METRICS)))
        with self.transaction():
            run_id = self._id(key)
            self.db.execute("DELETE FROM metrics WHERE run_id = ?", (run_id,))
            self.db.executemany(
                f"INSERT INTO metrics ({columns}) VALUES ({marks})",
                [(run_id, r["epoch"], *(r[m] for m in METRICS)) for r in result.records])
            self.db.execute(
                "UPDATE runs SET status=?, finished=?, wall_time=?, error=?, version=? "
                "WHERE id=?", (result.status, time.time(), result.wall_time, result.error,
                               polyak.__version__, run_id))

    def fail(self, key: RunKey, error: str) -> None:
        """Record that a run raised; the next bench retries it."""
        with self.transaction():
            self.db.execute(
                "UPDATE runs SET status='failed', finished=?, error=? WHERE id=?",
                (time.time(), error, self._id(key)))

    # -- reading ----------------------------------------------------------------------------

    def _id(self, key: RunKey) -> int:
        row = self.db.execute(
            "SELECT id FROM runs WHERE task=? AND method=? AND seed=? AND epochs=? "
            "AND config_hash=?", (key.task, key.method, key.seed, key.epochs, key.hash)
        ).fetchone()
        if row is None:
            raise KeyError(key)
        return int(row[0])

    def status(self, key: RunKey) -> str | None:
        try:
            run_id = self._id(key)
        except KeyError:
            return None
        return self.db.execute("SELECT status FROM runs WHERE id=?", (run_id,)).fetchone()[0]

    def run(self, key: RunKey) -> dict[str, Any] | None:
        """The row of run ``key`` (a dict of the runs table's columns), or ``None``."""
        cursor = self.db.execute(
            "SELECT * FROM runs WHERE task=? AND method=? AND seed=? AND epochs=? "
            "AND config_hash=?", (key.task, key.method, key.seed, key.epochs, key.hash))
        row = cursor.fetchone()
        return None if row is None else dict(zip([c[0] for c in cursor.description], row))

    def runs(self, task: str | None = None) -> list[dict[str, Any]]:
        """All runs (of ``task``), as dicts with the columns of the runs table."""
        query = "SELECT * FROM runs" + (" WHERE task = ?" if task else "") + " ORDER BY id"
        cursor = self.db.execute(query, (task,) if task else ())
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    def metrics(self, run_id: int) -> list[dict[str, float]]:
        """The per-epoch metric rows of a run, in epoch order."""
        cursor = self.db.execute(
            f"SELECT epoch, {', '.join(METRICS)} FROM metrics WHERE run_id=? ORDER BY epoch",
            (run_id,))
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    def tasks(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT DISTINCT task FROM runs ORDER BY task")]


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on an exception)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.db.execute("ROLLBACK" if exc_type is not None else "COMMIT")

