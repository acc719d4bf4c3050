"""``polyak bench | report | tune``: exit codes, one-line errors, files left untouched."""

import json
import sqlite3

import pytest
from cli_run import run

import polyak.cli.bench  # noqa: F401  (registers the commands until polyak.cli imports it)
from polyak.bench.store import SCHEMA_VERSION, Store
from polyak.bench.tasks import TASKS
from polyak.cli.bench import split_specs


@pytest.fixture
def tiny(tiny_task, monkeypatch):
    task = tiny_task.replace(name="tiny")
    monkeypatch.setitem(TASKS, "tiny", task)
    return task


def assert_one_line_error(code, err, needle):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("polyak: error:") and needle in lines[0], err


@pytest.mark.parametrize("args,needle", [
    (["--tasks", "imagenet"], "Unknown task"),
    (["--methods", "sgdm,no-such-method"], "no-such-method"),
    (["--methods", "sgdm:bogus_key=1"], "bogus_key"),
    (["--seeds", "0"], "Invalid seeds"),
    (["--epochs", "-1"], "Invalid epochs"),
    (["--workers", "0"], "Invalid workers"),
])
def test_bad_bench_input(capsys, tmp_path, tiny, args, needle):
    store = tmp_path / "runs.sqlite"
    base = ["--tasks", "tiny"] if "--tasks" not in args else []
    code, _, err = run(capsys, "bench", *base, *args, "--store", str(store), "--no-progress")
    assert_one_line_error(code, err, needle)
    assert not store.exists()  # nothing written


def test_corrupt_store_is_refused_and_untouched(capsys, tmp_path, tiny):
    store = tmp_path / "runs.sqlite"
    store.write_bytes(b"\x00garbage" * 500)
    for command in (["bench", "--tasks", "tiny", "--methods", "sgd"], ["report"]):
        code, _, err = run(capsys, *command, "--store", str(store))
        assert_one_line_error(code, err, "not a polyak run store")
        assert store.read_bytes() == b"\x00garbage" * 500


def test_store_of_another_version_is_refused(capsys, tmp_path, tiny):
    store = tmp_path / "runs.sqlite"
    Store(store).close()
    with sqlite3.connect(store) as db:
        db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 7,))
    before = store.read_bytes()
    code, _, err = run(capsys, "bench", "--tasks", "tiny", "--methods", "sgd", "--store",
                       str(store))
    assert_one_line_error(code, err, "schema version")
    assert store.read_bytes() == before


def test_unwritable_store_location(capsys, tmp_path, tiny):
    store = tmp_path / "no-such-dir" / "runs.sqlite"
    code, _, err = run(capsys, "bench", "--tasks", "tiny", "--methods", "sgd", "--store",
                       str(store))
    assert_one_line_error(code, err, "not a writable directory")


def test_report_without_store(capsys, tmp_path):
    code, _, err = run(capsys, "report", "--store", str(tmp_path / "none.sqlite"))
    assert_one_line_error(code, err, "No run store")
    assert not (tmp_path / "none.sqlite").exists()


def test_bench_then_rerun_then_report(capsys, tmp_path, tiny):
    store, out = tmp_path / "runs.sqlite", tmp_path / "report"
    args = ["bench", "--tasks", "tiny", "--methods", "sgd,sgdm", "--seeds", "2",
            "--epochs", "1", "--workers", "1", "--store", str(store), "--out", str(out),
            "--no-progress"]
    code, stdout, err = run(capsys, *args)
    assert code == 0, err
    assert "| sgdm |" in stdout and "Paper claims" in stdout
    assert "4 run(s) executed, 0 already" in err
    assert (out / "report.md").exists() and (out / "tiny-test-error.png").exists()
    code, _, err = run(capsys, *args)
    assert code == 0 and "0 run(s) executed, 4 already" in err
    code, stdout, err = run(capsys, "report", "--tasks", "tiny", "--epochs", "1", "--store",
                            str(store), "--out", str(out))
    assert code == 0, err
    assert "| sgd |" in stdout and "2 |" in stdout


def test_tune_writes_the_json_and_bench_reads_it(capsys, tmp_path, tiny):
    out = tmp_path / "tuned.json"
    code, stdout, err = run(capsys, "tune", "--task", "tiny", "--methods", "sgd,swa",
                            "--trials", "2", "--epochs", "1", "--workers", "1", "--store",
                            str(tmp_path / "t.sqlite"), "--out", str(out), "--no-progress")
    assert code == 0, err
    data = json.loads(out.read_text())
    # swa is the Gadam protocol's arm: it reuses sgdm@gadam's lr then weight decay
    assert set(data["tuned"]) == {"sgd", "sgdm@gadam", "swa"}
    assert data["shared"] == {"swa": "sgdm@gadam"}
    assert data["commands"][0].startswith("polyak tune") and len(data["scores"]["sgd"]) == 2
    assert [s["stage"] for s in data["scores"]["sgdm@gadam"]] == [0, 0, 1, 1]
    assert set(data["tuned"]["sgdm@gadam"]) == {"lr", "weight_decay"}
    assert "sgd: lr=" in stdout and "(from sgdm@gadam)" in stdout
    # an arm whose paper fixed every value is listed, not tuned (it crashed the command)
    code, stdout, err = run(capsys, "tune", "--task", "tiny", "--methods", "sgdm@pwa,sgd",
                            "--trials", "1", "--epochs", "1", "--workers", "1", "--store",
                            str(tmp_path / "t.sqlite"), "--out", str(tmp_path / "t2.json"),
                            "--no-progress")
    assert code == 0, err
    assert "sgdm@pwa: not tuned (its paper's settings)" in stdout
    code, stdout, err = run(capsys, "bench", "--tasks", "tiny", "--methods", "swa", "--seeds",
                            "1", "--epochs", "1", "--workers", "1", "--tuned", str(out),
                            "--store", str(tmp_path / "b.sqlite"), "--out",
                            str(tmp_path / "rep"), "--no-progress")
    assert code == 0, err
    with Store(tmp_path / "b.sqlite") as store:
        (row,) = store.runs()
        assert json.loads(row["config"])["overrides"] == data["tuned"]["swa"]


def test_bench_and_report_take_one_tuned_file_per_task(capsys, tmp_path, tiny, monkeypatch):
    """Comma-separated --tuned files: each goes to the task it names; one report, both tasks,
    with the claims of both side by side."""
    other = tiny.replace(name="tiny2")
    monkeypatch.setitem(TASKS, "tiny2", other)
    files = {}
    for name, lr in (("tiny", 0.05), ("tiny2", 0.2)):
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps({"task": name, "epochs": 1,
                                           "tuned": {"sgdm@gadam": {"lr": lr}}}))
    tuned = f"{files['tiny']},{files['tiny2']}"
    args = ("--methods", "sgdm@gadam,swa", "--seeds", "2", "--epochs", "1", "--workers", "1",
            "--store", str(tmp_path / "b.sqlite"))
    code, _, err = run(capsys, "bench", "--tasks", "tiny,tiny2", *args, "--tuned", tuned,
                       "--out", str(tmp_path / "rep"), "--no-progress")
    assert code == 0, err
    with Store(tmp_path / "b.sqlite") as store:
        lrs = {(r["task"], r["method"]): json.loads(r["config"])["overrides"]["lr"]
               for r in store.runs()}
    assert lrs == {("tiny", "sgdm@gadam"): 0.05, ("tiny", "swa"): 0.05,
                   ("tiny2", "sgdm@gadam"): 0.2, ("tiny2", "swa"): 0.2}
    code, _, err = run(capsys, "report", "--store", str(tmp_path / "b.sqlite"), "--tuned", tuned,
                       "--out", str(tmp_path / "rep2"))
    assert code == 0, err
    text = (tmp_path / "rep2" / "report.md").read_text()
    assert "## Paper claims across tasks" in text
    row = next(line for line in text.splitlines()
               if line.startswith("| SWA beats momentum SGD |"))
    verdicts = ("inconclusive", "supported", "contradicted", "unstable")
    assert sum(row.count(f"| {v}") for v in verdicts) == 2
    # the same file twice, a file naming no task, a task not run: one line each
    code, _, err = run(capsys, "bench", "--tasks", "tiny,tiny2", *args, "--tuned",
                       f"{files['tiny']},{files['tiny']}")
    assert_one_line_error(code, err, "both tuned for tiny")
    anonymous = tmp_path / "anon.json"
    anonymous.write_text(json.dumps({"tuned": {}}))
    code, _, err = run(capsys, "bench", "--tasks", "tiny,tiny2", *args, "--tuned",
                       f"{files['tiny']},{anonymous}")
    assert_one_line_error(code, err, "names no task")
    code, _, err = run(capsys, "bench", "--tasks", "tiny", *args, "--tuned", tuned)
    assert_one_line_error(code, err, "which this command does not run")


def test_tune_never_writes_into_the_package_and_bench_needs_the_tuned_file(capsys, tmp_path,
                                                                          tiny):
    from polyak.bench.tasks import TUNED_DIR

    code, _, err = run(capsys, "tune", "--task", "tiny", "--methods", "sgd", "--out",
                       str(TUNED_DIR / "x.json"), "--store", str(tmp_path / "t.sqlite"))
    assert_one_line_error(code, err, "Invalid out")
    code, _, err = run(capsys, "bench", "--tasks", "tiny", "--tuned", str(tmp_path / "none"))
    assert_one_line_error(code, err, "Invalid tuned")


def test_split_specs_keeps_overrides_together():
    assert split_specs("sgdm, gadamx:lr=0.05,avg_start=20,swa") == [
        "sgdm", "gadamx:lr=0.05,avg_start=20", "swa"]


def test_report_after_a_shorter_bench_finds_its_budget_and_takes_a_baseline(capsys, tmp_path,
                                                                            tiny):
    """Issue 14: after `polyak bench --epochs 3` a plain `polyak report` said "No finished runs"
    without naming --epochs; with the methods' baselines not run there was nothing to compare."""
    store, out = tmp_path / "runs.sqlite", tmp_path / "report"
    code, _, err = run(capsys, "bench", "--tasks", "tiny", "--methods", "sgdl,asgd", "--seeds",
                       "2", "--epochs", "1", "--workers", "1", "--store", str(store), "--out",
                       str(out), "--no-progress")
    assert code == 0, err
    code, stdout, err = run(capsys, "report", "--store", str(store), "--out", str(out))
    assert code == 0, err
    assert "## tiny (1 epochs)" in stdout and "| sgdl |" in stdout
    assert "sgdm@sgdl (not run)" in stdout and "--baseline NAME" in stdout
    code, stdout, err = run(capsys, "report", "--store", str(store), "--out", str(out),
                            "--baseline", "sgdl")
    assert code == 0, err
    row = next(line for line in stdout.splitlines() if line.startswith("| ") and "| asgd |" in line)
    assert "| sgdl |" in row and "(not run)" not in row
    code, _, err = run(capsys, "report", "--store", str(store), "--epochs", "3")
    assert_one_line_error(code, err, "the store has tiny: 1 epochs: pass --epochs N")
    code, _, err = run(capsys, "report", "--store", str(store), "--baseline", "sgdm")
    assert_one_line_error(code, err, "Invalid baseline: 'sgdm'")


def test_bench_announces_where_a_run_resumed(capsys, tmp_path, tiny):
    """Issue 21: the store said a run resumed at epoch 2, the console only "done"."""
    from polyak.bench.resume import ResumePolicy
    from polyak.bench.train import run_identity, train_run

    class Killed(Exception):
        pass

    ckpt = ResumePolicy((tmp_path / "ck").resolve()).for_run(run_identity(tiny, "sgdm", 0, 3))
    saves = []

    class DiesAfterTwoSaves(type(ckpt)):
        def save(self, state):
            super().save(state)
            saves.append(state["epoch"])
            if len(saves) == 2:
                raise Killed

    with pytest.raises(Killed):  # a run killed after epochs 1 and 2 were saved
        train_run(tiny, "sgdm", 0, 3, resume=DiesAfterTwoSaves(ckpt.path, ckpt.identity))
    store = tmp_path / "runs.sqlite"
    code, _, err = run(capsys, "bench", "--tasks", "tiny", "--methods", "sgd,sgdm", "--seeds",
                       "1", "--epochs", "3", "--workers", "1", "--store", str(store),
                       "--checkpoint-dir", str(tmp_path / "ck"), "--out",
                       str(tmp_path / "report"), "--no-progress")
    assert code == 0, err
    lines = {line.split(":")[0] for line in err.splitlines() if line.startswith("done ")}
    assert lines == {"done tiny sgd seed 0", "done tiny sgdm seed 0 (resumed after epoch 2)"}
    with Store(store) as runs:
        assert {r["method"]: r["resumed"] for r in runs.runs()} == {"sgd": None, "sgdm": "2"}


def test_report_describes_the_budget_the_bench_ran(capsys, tmp_path, tiny):
    """Issue 21: `polyak bench --epochs 5` headed "(5 epochs)" and then described the task's
    default budget ("40 epochs of batch 128 ... at 10 evenly spaced epochs; ~6 s/run")."""
    out = tmp_path / "report"
    code, _, err = run(capsys, "bench", "--tasks", "tiny", "--methods", "sgd", "--seeds", "1",
                       "--epochs", "1", "--workers", "1", "--store", str(tmp_path / "s.sqlite"),
                       "--out", str(out), "--no-progress")
    assert code == 0, err
    text = (out / "report.md").read_text()
    heading = text.index("## tiny (1 epochs)")
    description = text[heading:].splitlines()[2]
    assert f"1 epoch (default {tiny.epochs}) of batch" in description, description
    assert f"{tiny.epochs} epochs of batch" not in description
    assert "at every epoch" in description and "evenly spaced" not in description
    assert "(full test set, BatchNorm recalibrated): every epoch." in text
