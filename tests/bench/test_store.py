"""The SQLite run store: identity, statuses, atomic writes and refusing foreign files."""

import json
import sqlite3

import pytest

from polyak.bench.store import METRICS, SCHEMA_VERSION, RunKey, Store, StoreError, config_hash
from polyak.bench.train import RunResult


def key(method="sgdm", seed=0, epochs=3, config=None):
    text = json.dumps(config or {"batch_size": 128}, sort_keys=True)
    return RunKey("task", method, seed, epochs, text)


def records(n, offset=0.0):
    return [{"epoch": e, **{m: offset + e + i / 10 for i, m in enumerate(METRICS)}}
            for e in range(n)]


def raw_rows(path, query):
    with sqlite3.connect(path) as db:
        return db.execute(query).fetchall()


def test_new_store_has_the_schema_version(tmp_path):
    path = tmp_path / "runs.sqlite"
    Store(path).close()
    assert raw_rows(path, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]


def test_run_lifecycle_and_metrics_round_trip(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        k = key()
        assert store.status(k) is None
        store.plan([k, key(seed=1)])
        assert store.status(k) == "pending"
        store.claim(k)
        assert store.status(k) == "running"
        store.finish(k, RunResult("complete", records(3), None, 1.5))
        assert store.status(k) == "complete" and store.status(key(seed=1)) == "pending"
        row = store.run(k)
        assert row["wall_time"] == 1.5 and row["config_hash"] == config_hash({"batch_size": 128})
        assert store.metrics(row["id"]) == records(3)


def test_identity_includes_epochs_and_config(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        keys = [key(), key(epochs=4), key(config={"batch_size": 64}), key(seed=2),
                key(method="swa")]
        store.plan(keys)
        store.plan(keys)  # idempotent
        assert len(store.runs()) == 5


def test_failed_run_keeps_its_error_and_can_be_claimed_again(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        k = key()
        store.plan([k])
        store.claim(k)
        store.fail(k, "RuntimeError: boom")
        assert store.status(k) == "failed" and store.run(k)["error"] == "RuntimeError: boom"
        store.claim(k)
        assert store.status(k) == "running" and store.run(k)["error"] is None
        store.release([k])
        assert store.status(k) == "pending"


def test_a_failing_write_leaves_nothing_half_written(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        k = key()
        store.plan([k])
        store.claim(k)
        broken = records(3)
        del broken[2]["test_acc"]  # the third metric row cannot be written
        with pytest.raises(KeyError):
            store.finish(k, RunResult("complete", broken, None, 1.0))
        assert store.status(k) == "running"
        assert store.metrics(store.run(k)["id"]) == []


def test_reopening_keeps_the_runs(tmp_path):
    path = tmp_path / "s.sqlite"
    with Store(path) as store:
        store.plan([key()])
        store.claim(key())
        store.finish(key(), RunResult("diverged", records(1), "nan", 0.1))
    with Store(path) as store:
        assert store.status(key()) == "diverged" and store.tasks() == ["task"]


def _assert_refused(path, match):
    before = path.read_bytes()
    with pytest.raises(StoreError, match=match):
        Store(path)
    assert path.read_bytes() == before


def test_garbage_file_is_refused_untouched(tmp_path):
    path = tmp_path / "garbage.sqlite"
    path.write_bytes(b"this is not a database at all" * 100)
    _assert_refused(path, "not a polyak run store")


def test_foreign_sqlite_file_is_refused_untouched(tmp_path):
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE songs (title TEXT)")
    _assert_refused(path, "not a polyak run store")


def test_store_of_another_schema_version_is_refused_untouched(tmp_path):
    path = tmp_path / "old.sqlite"
    Store(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    _assert_refused(path, f"schema version {SCHEMA_VERSION + 1}")


def test_unusable_paths(tmp_path):
    with pytest.raises(StoreError, match="directory"):
        Store(tmp_path)
    with pytest.raises(StoreError, match="not a writable directory"):
        Store(tmp_path / "missing" / "runs.sqlite")
    assert not (tmp_path / "missing").exists()


def test_empty_file_becomes_a_store(tmp_path):
    path = tmp_path / "empty.sqlite"
    path.write_bytes(b"")
    Store(path).close()
    assert raw_rows(path, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
