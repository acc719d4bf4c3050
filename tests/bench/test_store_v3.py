"""Store schema 3: the ``posthoc`` table (``polyak bench --posthoc``): a schema-2 file is migrated
in place, keeping its runs; post-hoc rows are written with their run, read back in order,
and cleared when the run is claimed again."""

import json
import sqlite3

from polyak.bench.store import METRICS, POSTHOC, SCHEMA_VERSION, RunKey, Store
from polyak.bench.train import RunResult

V2 = """
CREATE TABLE schema_version (version INTEGER NOT NULL, created_by TEXT NOT NULL);
CREATE TABLE runs (id INTEGER PRIMARY KEY, task TEXT NOT NULL, method TEXT NOT NULL,
    seed INTEGER NOT NULL, epochs INTEGER NOT NULL, config_hash TEXT NOT NULL,
    config TEXT NOT NULL, status TEXT NOT NULL, started REAL, finished REAL, wall_time REAL,
    version TEXT NOT NULL, error TEXT, torch_version TEXT, cpu_capability TEXT, resumed TEXT,
    owner TEXT, lease_until REAL, UNIQUE (task, method, seed, epochs, config_hash));
CREATE TABLE metrics (run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL, {}, PRIMARY KEY (run_id, epoch));
INSERT INTO schema_version VALUES (2, '0.2.0');
""".format(", ".join(f"{m} REAL" for m in METRICS))


def key(seed=0):
    return RunKey("task", "sgdm", seed, 2, json.dumps({"b": 1}))


def result(rows):
    records = [{"epoch": e, **{m: float(e) for m in METRICS}} for e in range(2)]
    return RunResult("complete", records, None, 1.0, posthoc=rows)


def rows(n):
    return [{"name": f"ema(h={i})", "family": "ema", "param": float(i), "width": 0.1 * i,
             "error": 0.0, "val_loss": 1.0 / (i + 1), "val_acc": 0.5, "test_loss": 2.0,
             "test_acc": 0.25} for i in range(n, 0, -1)]


def test_schema_2_store_is_migrated_and_keeps_its_runs(tmp_path):
    path = tmp_path / "v2.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(V2)
        db.execute("INSERT INTO runs (task, method, seed, epochs, config_hash, config, status, "
                   "version, torch_version) VALUES ('task', 'sgdm', 0, 2, ?, ?, 'complete', "
                   "'0.2.0', '2.13.0')", (key().hash, key().config))
    with Store(path) as store:
        (old,) = store.runs()
        assert (old["status"], old["torch_version"]) == ("complete", "2.13.0")
        assert store.posthoc(old["id"]) == []
        assert store.claim(key(1)) is not None
        assert store.finish(key(1), result(rows(3)))
        assert store.posthoc(store.run(key(1))["id"]) == rows(3)  # in the order given
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(3,)]
    assert SCHEMA_VERSION == 3 and len(POSTHOC) == 9


def test_posthoc_rows_are_replaced_with_their_run(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        store.claim(key())
        store.finish(key(), result(rows(2)))
        run_id = store.run(key())["id"]
        assert len(store.posthoc(run_id)) == 2
        store.db.execute("UPDATE runs SET status='failed' WHERE id=?", (run_id,))
        assert store.claim(key()) == run_id and store.posthoc(run_id) == []  # a rerun clears
        store.finish(key(), result([]))
        assert store.posthoc(run_id) == []
