"""A run whose loss becomes non-finite is recorded as `diverged` at that epoch (not failed, not
retried) and the report says so."""

import sqlite3

import pytest

import polyak.cli.bench  # noqa: F401
from polyak.bench.tasks import TASKS
from polyak.cli import main


@pytest.mark.slow
def test_diverging_runs_are_recorded_and_reported(tmp_path, tiny_mlp_task, monkeypatch):
    monkeypatch.setitem(TASKS, "tiny-mlp", tiny_mlp_task.replace(name="tiny-mlp"))
    store, out = tmp_path / "s.sqlite", tmp_path / "report"
    with pytest.raises(SystemExit) as info:
        main(["bench", "--tasks", "tiny-mlp", "--methods", "sgd,sgd:lr=1e30,swa:lr=1e30",
              "--seeds", "1", "--epochs", "3", "--workers", "1", "--store", str(store),
              "--out", str(out), "--no-progress", "--device", "cpu",
              "--checkpoint-dir", str(tmp_path / "ck")])
    assert info.value.code == 0
    with sqlite3.connect(store) as db:
        rows = dict(db.execute("SELECT method, status FROM runs").fetchall())
        errors = [e for (e,) in db.execute("SELECT error FROM runs WHERE status='diverged'")]
        epochs = dict(db.execute("SELECT r.method, COUNT(m.epoch) FROM runs r LEFT JOIN "
                                 "metrics m ON m.run_id = r.id GROUP BY r.id").fetchall())
    assert rows == {"sgd": "complete", "sgd:lr=1e30": "diverged", "swa:lr=1e30": "diverged"}
    assert all("non-finite" in e and "epoch 0" in e for e in errors), errors
    assert epochs["sgd"] == 3 and epochs["sgd:lr=1e30"] == 0  # diverged in its first epoch
    report = (out / "report.md").read_text()
    assert "diverged" in report
