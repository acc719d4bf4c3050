"""Store schema 2: migration of a schema-1 file, torch version and CPU capability per run, the
report's warning on runs from mixed machines, a store from a newer polyak refused, and leases
(two Store objects sharing one file with a short lease; a second process)."""

import json
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from polyak.bench.report import machine_notes
from polyak.bench.store import METRICS, SCHEMA_VERSION, RunKey, Store, StoreError
from polyak.bench.train import RunResult

V1 = """
CREATE TABLE schema_version (version INTEGER NOT NULL, created_by TEXT NOT NULL);
CREATE TABLE runs (id INTEGER PRIMARY KEY, task TEXT NOT NULL, method TEXT NOT NULL,
    seed INTEGER NOT NULL, epochs INTEGER NOT NULL, config_hash TEXT NOT NULL,
    config TEXT NOT NULL, status TEXT NOT NULL, started REAL, finished REAL, wall_time REAL,
    version TEXT NOT NULL, error TEXT, UNIQUE (task, method, seed, epochs, config_hash));
CREATE TABLE metrics (run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL, {}, PRIMARY KEY (run_id, epoch));
INSERT INTO schema_version VALUES (1, '0.1.0');
""".format(", ".join(f"{m} REAL" for m in METRICS))


def key(seed=0):
    return RunKey("task", "sgdm", seed, 2, json.dumps({"b": 1}))


def records(n):
    return [{"epoch": e, **{m: float(e) for m in METRICS}} for e in range(n)]


def test_schema_1_store_is_migrated_and_keeps_its_runs(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(V1)
        db.execute("INSERT INTO runs (task, method, seed, epochs, config_hash, config, status, "
                   "version) VALUES ('task', 'sgdm', 0, 2, ?, ?, 'complete', '0.1.0')",
                   (key().hash, key().config))
    with Store(path) as store:
        (run,) = store.runs()
        assert run["status"] == "complete" and run["torch_version"] is None
        assert store.claim(key(1)) is not None
        store.finish(key(1), RunResult("complete", records(2), None, 1.0,
                                       machines=["torch 2.13.0+cpu AVX2"]))
        new = store.run(key(1))
        assert (new["torch_version"], new["cpu_capability"]) == ("2.13.0+cpu", "AVX2")
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


def test_store_of_a_newer_polyak_is_refused_untouched(tmp_path):
    path = tmp_path / "new.sqlite"
    Store(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE schema_version SET version = 99, created_by = '9.0'")
    before = path.read_bytes()
    with pytest.raises(StoreError, match=r"schema version 99 \(written by polyak 9.0\).*upgrade"):
        Store(path)
    assert path.read_bytes() == before


def test_runs_record_this_machine(tmp_path, tiny_task):
    from polyak.bench.runner import plan_grid, run_grid

    with Store(tmp_path / "s.sqlite") as store:
        run_grid(store, plan_grid([tiny_task], ["sgd"], seeds=1, epochs=1), workers=1,
                 show_progress=False)
        (run,) = store.runs()
    assert run["torch_version"] == torch.__version__
    assert run["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_report_flags_runs_from_mixed_machines():
    def run(t, c):
        return {"status": "complete", "torch_version": t, "cpu_capability": c}

    same = {"task": {"sgd": [run("2.13", "AVX2"), run("2.13", "AVX2")]}}
    assert machine_notes(same) == []
    mixed = {"task": {"sgd": [run("2.13", "AVX2")], "swa": [run("2.13", "AVX512")]}}
    (note,) = machine_notes(mixed)
    assert "different machines" in note and "AVX2" in note and "AVX512" in note


def test_two_stores_never_hold_one_run_and_an_expired_lease_is_taken_over(tmp_path):
    path = tmp_path / "s.sqlite"
    a, b = Store(path, lease=0.5), Store(path, lease=0.5)
    try:
        assert a.claim(key()) is not None
        assert b.claim(key()) is None          # a holds a live lease
        assert a.heartbeat() == 1
        assert b.claim(key()) is None
        time.sleep(0.7)                        # a stops beating: its lease expires
        assert b.claim(key()) is not None      # taken over
        assert a.claim(key()) is None          # and now b holds it
        assert not a.finish(key(), RunResult("complete", records(2), None, 1.0))
        assert b.finish(key(), RunResult("complete", records(2), None, 1.0))
        assert a.claim(key()) is None and b.claim(key()) is None  # finished: nobody claims it
        assert len(a.metrics(a.run(key())["id"])) == 2
    finally:
        a.close()
        b.close()


HOLDER = textwrap.dedent("""
    import json, sys, time
    from polyak.bench.store import Heartbeat, RunKey, Store
    store = Store(sys.argv[1], lease=float(sys.argv[2]))
    key = RunKey("task", "sgdm", 0, 2, json.dumps({"b": 1}))
    assert store.claim(key) is not None
    with Heartbeat(store):
        print("claimed", flush=True)
        time.sleep(float(sys.argv[3]))
""")


def test_a_live_bench_keeps_its_run_by_heartbeat_and_a_dead_one_loses_it(tmp_path):
    path = tmp_path / "s.sqlite"
    Store(path).close()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), "0.4", "60"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "claimed"
        with Store(path, lease=0.4) as other:
            time.sleep(1.2)  # three lease lengths: only the heartbeat keeps the claim alive
            assert other.claim(key()) is None
            holder.kill()
            holder.wait()
            assert other.claim(key()) is not None  # its process is gone: taken over at once
    finally:
        holder.kill()
