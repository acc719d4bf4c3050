"""The run store: one SQLite file holding every benchmark run and its per-epoch metrics.

A run's identity is (task, method spec, seed, epochs, config hash); the config is the task's
:meth:`~polyak.bench.tasks.Task.config` plus the tuned overrides the bench applied, so
changing a task or its tuned learning rates makes new runs instead of mixing results.
Status: ``pending`` (planned), ``running`` (claimed by a bench under a lease, see below),
``complete``, ``diverged`` (a non-finite or exploded loss, :mod:`polyak.bench.divergence`;
deterministic, so final like ``complete``) and
``failed`` (an exception, stored with its text; retried by the next bench). A finished run and
all its metric rows are written in one transaction, so a kill never leaves a half-written run.
Each run also records the torch version and CPU capability
(``torch.backends.cpu.get_cpu_capability()``) it computed with, and the epochs it was resumed
at from a mid-run checkpoint.

Leases: a bench claims a run under its owner id with a lease (``lease_until``, default 60 s
ahead) that a heartbeat thread renews while the bench lives (:class:`Heartbeat`). A claim
succeeds only on a run that is pending, failed, or running under an expired lease (or the
claimer's own), in one ``BEGIN IMMEDIATE`` transaction, so two benches sharing one store never
train the same run at once; the runs of a bench that died are taken over once its leases
expire (and resume from its mid-run checkpoints). A result is written only by the lease owner.

Opening checks the file before writing anything: a file that is not SQLite, an SQLite file that
is not a polyak store, or a store of a newer schema version raises :class:`StoreError` (a
``ValueError``: the CLI prints one line and exits with 2) and leaves the file untouched. A store
of an older schema is migrated in one transaction (schema 1 -> 2 adds the machine, resume and
lease columns; old runs have them NULL; 2 -> 3 adds the ``posthoc`` table, empty for old runs).

Post-hoc averages (``polyak bench --posthoc``, :mod:`polyak.bench.posthoc`): table ``posthoc``
holds one row per (run, average): its ``name`` (e.g. ``ema(h=2)``), ``family``, ``param``,
``width`` (the landscape's axis), reconstruction ``error`` bound and the validation and test loss
and accuracy; written with the run, in the same transaction (:meth:`Store.posthoc` reads them).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polyak

__all__ = ["Store", "StoreError", "RunKey", "SCHEMA_VERSION", "config_hash", "FINAL", "METRICS",
           "POSTHOC", "Heartbeat", "DEFAULT_LEASE"]

SCHEMA_VERSION = 3
DEFAULT_LEASE = 60.0  # seconds a claim lives without a heartbeat
METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "lr", "time")
FINAL = ("complete", "diverged")  # statuses a rerun does not redo

_POSTHOC_TABLE = """
CREATE TABLE posthoc (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    name TEXT NOT NULL, family TEXT NOT NULL, param REAL, width REAL, error REAL,
    val_loss REAL, val_acc REAL, test_loss REAL, test_acc REAL,
    PRIMARY KEY (run_id, name)
)"""
_SCHEMA = f"""
CREATE TABLE schema_version (version INTEGER NOT NULL, created_by TEXT NOT NULL);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    task TEXT NOT NULL, method TEXT NOT NULL, seed INTEGER NOT NULL, epochs INTEGER NOT NULL,
    config_hash TEXT NOT NULL, config TEXT NOT NULL,
    status TEXT NOT NULL
        CHECK (status IN ('pending', 'running', 'complete', 'diverged', 'failed')),
    started REAL, finished REAL, wall_time REAL, version TEXT NOT NULL, error TEXT,
    torch_version TEXT, cpu_capability TEXT, resumed TEXT, owner TEXT, lease_until REAL,
    UNIQUE (task, method, seed, epochs, config_hash)
);
CREATE TABLE metrics (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    {", ".join(f"{m} REAL" for m in METRICS)},
    PRIMARY KEY (run_id, epoch)
);
{_POSTHOC_TABLE};
"""
POSTHOC = ("name", "family", "param", "width", "error", "val_loss", "val_acc", "test_loss",
           "test_acc")
_V2_COLUMNS = ("torch_version TEXT", "cpu_capability TEXT", "resumed TEXT", "owner TEXT",
               "lease_until REAL")


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
    if row is None or not isinstance(row[0], int) or not 1 <= row[0] <= SCHEMA_VERSION:
        raise StoreError(
            f"{path} is a run store of schema version {row[0] if row else '?'} "
            f"(written by polyak {row[1] if row else '?'}); this polyak "
            f"({polyak.__version__}) reads versions up to {SCHEMA_VERSION}: upgrade polyak to "
            "read it, or choose another --store")


class Store:
    """A polyak run store at ``path`` (created when missing)."""

    def __init__(self, path: str | os.PathLike, lease: float = DEFAULT_LEASE) -> None:
        self.path = Path(path)
        self.lease = float(lease)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
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
                else:
                    version = self.db.execute("SELECT version FROM schema_version").fetchone()[0]
                    if version < 2:
                        self._migrate_1_to_2()
                    if version < 3:
                        self._migrate_2_to_3()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot use the run store {self.path}: {exc}") from None

    def _create(self) -> None:
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                self.db.execute(statement)
        self.db.execute("INSERT INTO schema_version VALUES (?, ?)",
                        (SCHEMA_VERSION, polyak.__version__))

    def _migrate_1_to_2(self) -> None:
        for column in _V2_COLUMNS:
            self.db.execute(f"ALTER TABLE runs ADD COLUMN {column}")
        self.db.execute("UPDATE schema_version SET version = 2")

    def _migrate_2_to_3(self) -> None:
        self.db.execute(_POSTHOC_TABLE)
        self.db.execute("UPDATE schema_version SET version = 3")

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
        """Put runs this store's owner claimed but did not finish (an interrupt) back to
        ``pending``."""
        with self.transaction():
            for key in keys:
                self.db.execute(
                    "UPDATE runs SET status='pending', started=NULL, owner=NULL, "
                    "lease_until=NULL WHERE status='running' AND owner=? AND "
                    "task=? AND method=? AND seed=? AND epochs=? AND config_hash=?",
                    (self.owner, key.task, key.method, key.seed, key.epochs, key.hash))

    def claim(self, key: RunKey) -> int | None:
        """Claim ``key`` for this store's owner under a lease (inserting it, or taking a
        pending/failed row or a running one whose lease expired or whose bench, on this host,
        is gone); its id, or ``None`` when the run is finished or a live bench holds it."""
        now = time.time()
        with self.transaction():
            self.db.execute(
                "INSERT OR IGNORE INTO runs (task, method, seed, epochs, config_hash, config, "
                "status, version) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)",
                (key.task, key.method, key.seed, key.epochs, key.hash, key.config,
                 polyak.__version__))
            run_id = self._id(key)
            status, owner, until = self.db.execute(
                "SELECT status, owner, lease_until FROM runs WHERE id=?", (run_id,)).fetchone()
            held = status == "running" and owner not in (None, self.owner) and \
                until is not None and until >= now and _alive(owner)
            if status in FINAL or held:
                return None
            self.db.execute(
                "UPDATE runs SET status='running', started=?, finished=NULL, wall_time=NULL, "
                "error=NULL, version=?, owner=?, lease_until=? WHERE id=?",
                (now, polyak.__version__, self.owner, now + self.lease, run_id))
            self.db.execute("DELETE FROM metrics WHERE run_id = ?", (run_id,))
            self.db.execute("DELETE FROM posthoc WHERE run_id = ?", (run_id,))
        return run_id

    def heartbeat(self) -> int:
        """Renew the leases of every run this owner is running; how many."""
        with self.transaction():
            return self.db.execute(
                "UPDATE runs SET lease_until=? WHERE owner=? AND status='running'",
                (time.time() + self.lease, self.owner)).rowcount

    def finish(self, key: RunKey, result: Any) -> bool:
        """Store a finished run (a :class:`~polyak.bench.train.RunResult`) and its metric rows
        in one transaction, if this owner still holds its lease; whether it was written."""
        columns = ", ".join(("run_id", "epoch", *METRICS))
        marks = ", ".join("?" * (2 + len(METRICS)))
        machines = getattr(result, "machines", None) or []
        torch_version = " + ".join(dict.fromkeys(m.split(" ")[1] for m in machines)) or None
        capability = " + ".join(dict.fromkeys(m.split(" ")[2] for m in machines)) or None
        resumed = ",".join(str(e) for e in getattr(result, "resumed_from", []) or []) or None
        with self.transaction():
            run_id = self._id(key)
            owner = self.db.execute("SELECT owner, status FROM runs WHERE id=?",
                                    (run_id,)).fetchone()
            if owner[1] == "running" and owner[0] not in (None, self.owner):
                return False  # our lease expired and another bench took the run over
            self.db.execute("DELETE FROM metrics WHERE run_id = ?", (run_id,))
            self.db.executemany(
                f"INSERT INTO metrics ({columns}) VALUES ({marks})",
                [(run_id, r["epoch"], *(r[m] for m in METRICS)) for r in result.records])
            self.db.execute("DELETE FROM posthoc WHERE run_id = ?", (run_id,))
            self.db.executemany(
                f"INSERT INTO posthoc (run_id, {', '.join(POSTHOC)}) VALUES "
                f"({', '.join('?' * (1 + len(POSTHOC)))})",
                [(run_id, *(row[c] for c in POSTHOC))
                 for row in getattr(result, "posthoc", None) or []])
            self.db.execute(
                "UPDATE runs SET status=?, finished=?, wall_time=?, error=?, version=?, "
                "torch_version=?, cpu_capability=?, resumed=?, owner=NULL, lease_until=NULL "
                "WHERE id=?", (result.status, time.time(), result.wall_time, result.error,
                               polyak.__version__, torch_version, capability, resumed, run_id))
        return True

    def fail(self, key: RunKey, error: str) -> None:
        """Record that a run raised; the next bench retries it."""
        with self.transaction():
            self.db.execute(
                "UPDATE runs SET status='failed', finished=?, error=?, owner=NULL, "
                "lease_until=NULL WHERE id=? AND (owner IS NULL OR owner=?)",
                (time.time(), error, self._id(key), self.owner))

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

    def posthoc(self, run_id: int) -> list[dict[str, Any]]:
        """The post-hoc averages of a run (``polyak bench --posthoc``), in the order stored."""
        cursor = self.db.execute(
            f"SELECT {', '.join(POSTHOC)} FROM posthoc WHERE run_id=? ORDER BY rowid", (run_id,))
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    def tasks(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT DISTINCT task FROM runs ORDER BY task")]


def _alive(owner: str) -> bool:
    """Whether the bench ``owner`` ("host:pid:tag") may still live: ``False`` only for a process
    of this host that no longer exists (then its lease need not be waited out)."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


class Heartbeat:
    """While the block runs, a thread renews the leases of ``store``'s owner every
    ``lease / 4`` seconds on its own connection (SQLite connections are per thread)."""

    def __init__(self, store: Store) -> None:
        self.store, self._stop = store, threading.Event()
        self._thread = threading.Thread(target=self._beat, name="polyak-lease", daemon=True)

    def _beat(self) -> None:
        beat = Store.__new__(Store)
        beat.path, beat.owner, beat.lease = self.store.path, self.store.owner, self.store.lease
        beat.db = sqlite3.connect(self.store.path, timeout=30.0, isolation_level=None)
        try:
            while not self._stop.wait(self.store.lease / 4):
                try:
                    beat.heartbeat()
                except sqlite3.Error:
                    pass  # busy store: the next beat retries, well within the lease
        finally:
            beat.db.close()

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on an exception)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.db.execute("ROLLBACK" if exc_type is not None else "COMMIT")

