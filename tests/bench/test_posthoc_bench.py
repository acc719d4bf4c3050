"""``polyak bench --posthoc``, ``polyak posthoc DIR`` and ``polyak train --snapshots``: the
snapshots every run keeps, the post-hoc averages stored with it (checked against the online
averages the methods themselves report: FinalPhase's last-phase aggregate and SWA's uniform
average, recomputed from the files), the report's section, the CLI on a bench run's directory,
resume, and bad input (one line, exit 2)."""

from __future__ import annotations

import csv
import json
import math
import os

import pytest
from torch import nn

from polyak.averaging import SnapshotDir, Snapshots
from polyak.bench.posthoc import PosthocPolicy
from polyak.bench.posthoc_report import choose
from polyak.bench.resume import ResumePolicy, RunCheckpoint
from polyak.bench.runner import plan_grid, run_grid
from polyak.bench.store import Store
from polyak.bench.tasks import TASKS
from polyak.cli import main

METHODS = "sgdm@pwa,pwa-end-only,swa"
EPOCHS = 8
FAMILIES = {"latest", "ema", "uniform", "pwa", "power-ema"}


def cli(capsys, *argv):
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


@pytest.fixture(scope="module")
def benched(tiny_task, tmp_path_factory):
    """A --posthoc bench of the tiny task (the PWA pair shares a trajectory), the task kept
    registered as "tiny" for the module's CLI calls."""
    tmp = tmp_path_factory.mktemp("posthoc-bench")
    task = tiny_task.replace(name="tiny")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(TASKS, "tiny", task)
        with pytest.raises(SystemExit) as info:
            main(["bench", "--tasks", "tiny", "--methods", METHODS, "--seeds", "2", "--epochs",
                  str(EPOCHS), "--workers", "1", "--store", str(tmp / "s.sqlite"), "--out",
                  str(tmp / "report"), "--checkpoint-dir", str(tmp / "ck"), "--no-progress",
                  "--device", "cpu", "--posthoc"])
        assert info.value.code == 0
        yield tmp, task


def runs(tmp):
    with Store(tmp / "s.sqlite") as store:
        return {(r["method"], r["seed"]): (r, store.metrics(r["id"])[-1], store.posthoc(r["id"]))
                for r in store.runs()}


def snapshot_dir(tmp, method, seed=0):
    (found,) = (tmp / "ck" / "tiny" / method.replace("@", "_") / f"seed{seed}").glob(
        "snapshots-*")
    return found


def test_every_run_stores_its_post_hoc_averages(benched):
    tmp, _ = benched
    found = runs(tmp)
    assert len(found) == 6
    for (method, _), (run, _, rows) in found.items():
        assert run["status"] == "complete"
        assert {r["family"] for r in rows} == FAMILIES, method
        assert all(0.0 <= r["width"] < 0.4 and 0.0 <= r["val_acc"] <= 1.0 for r in rows)
    for seed in (0, 1):  # one trajectory, one set of averages; SWA's trajectory is another
        assert found[("sgdm@pwa", seed)][2] == found[("pwa-end-only", seed)][2]
        assert found[("swa", seed)][2] != found[("sgdm@pwa", seed)][2]


@pytest.mark.parametrize("method,average", [("pwa-end-only", "pwa[6:]"),  # phases 4/2/2
                                            ("swa", "uniform[4:]")])  # avg_start 161/300 of 8
def test_the_methods_own_average_is_among_them(benched, method, average):
    """The online FinalPhase / Uniform the method reports equals the post-hoc average of the
    same window recomputed from the snapshot files (float32: rounding only)."""
    tmp, task = benched
    for seed in (0, 1):
        _, last, rows = runs(tmp)[(method, seed)]
        (row,) = [r for r in rows if r["name"] == average]
        for split in ("val", "test"):
            assert math.isclose(row[f"{split}_loss"], last[f"{split}_loss"], rel_tol=1e-4)
            assert abs(row[f"{split}_acc"] - last[f"{split}_acc"]) <= 1 / 100  # one example


def test_snapshots_and_their_meta(benched):
    tmp, task = benched
    first, linked = snapshot_dir(tmp, "sgdm@pwa"), snapshot_dir(tmp, "pwa-end-only")
    assert linked.is_symlink() and linked.resolve() == first.resolve()
    snaps = SnapshotDir(first)
    assert len(snaps) == EPOCHS and [e.epoch for e in snaps.entries] == list(range(EPOCHS))
    assert snaps.sigma_rels == [0.05, 0.10] and snaps.every == "epoch"
    meta = snaps.meta
    assert (meta["task"], meta["methods"], meta["seed"], meta["epochs"]) == \
        ("tiny", ["sgdm@pwa", "pwa-end-only"], 0, EPOCHS)
    assert meta["last_phase"] == 6 and meta["task_config"] == task.config()
    stored = {m: r["config_hash"] for (m, s), (r, _, _) in runs(tmp).items() if s == 0}
    assert {m: run["config_hash"] for m, run in meta["runs"].items()} == \
        {m: stored[m] for m in ("sgdm@pwa", "pwa-end-only")}
    per_snapshot = snaps.disk_bytes() / len(snaps)
    data = sum(math.prod(shape) for shape in snaps.shapes) * 4 * 3  # iterate + two profiles
    assert data < per_snapshot < data + 30_000  # float32, and torch.save's records


def test_report_pairs_the_choice_on_validation_with_the_methods_own_weights(benched):
    tmp, _ = benched
    text = (tmp / "report" / "report.md").read_text()
    assert "## Post-hoc averages" in text and (tmp / "report" /
                                              "tiny-posthoc-landscape.png").stat().st_size > 0
    found = runs(tmp)
    for method in METHODS.split(","):
        gains = []
        for seed in (0, 1):
            _, last, rows = found[(method, seed)]
            best = max(rows, key=lambda r: (r["val_acc"], -r["val_loss"]))  # validation only
            gains.append(100 * (best["test_acc"] - last["test_acc"]))
        (line,) = [ln for ln in text.splitlines() if ln.startswith(f"| {method} |")
                   and "chosen" not in ln and ln.count("|") == 7]
        assert f"| {sum(gains) / 2:+.2f} " in line, line


def test_cli_on_a_bench_runs_directory(benched, capsys):
    tmp, _ = benched
    out = tmp / "posthoc-cli"
    code, stdout, err = cli(capsys, "posthoc", str(snapshot_dir(tmp, "pwa-end-only")), "--out",
                            str(out), "--device", "cpu")
    assert code == 0, err
    with open(out / "posthoc.csv") as handle:
        rows = list(csv.DictReader(handle))
    _, _, stored = runs(tmp)[("pwa-end-only", 0)]
    assert [r["name"] for r in rows] == [r["name"] for r in stored]
    for mine, theirs in zip(rows, stored):  # the bench's evaluation, number for number
        assert all(float(mine[k]) == theirs[k] for k in ("width", "val_acc", "test_loss"))
    best = max(stored, key=lambda r: (r["val_acc"], -r["val_loss"]))
    assert choose(stored)["name"] == best["name"]
    assert f"chosen on validation: {best['name']} " in stdout
    assert f"test accuracy {100 * best['test_acc']:.2f} %" in stdout
    assert json.loads((out / "posthoc.json").read_text())["chosen"] == best["name"]
    assert (out / "landscape.png").stat().st_size > 0 and (out / "posthoc.md").exists()


def test_cli_family_options_and_choice_on_test(benched, capsys):
    tmp, _ = benched
    out = tmp / "posthoc-test"
    code, stdout, err = cli(capsys, "posthoc", str(snapshot_dir(tmp, "swa", 1)), "--out",
                            str(out), "--device", "cpu", "--windows", "0.5", "--half-lives", "1",
                            "--latest", "1,3", "--sigma-rels", "0.05", "--no-pwa",
                            "--choose-on", "test")
    assert code == 0, err
    rows = json.loads((out / "posthoc.json").read_text())["averages"]
    assert [r["name"] for r in rows] == ["latest(1)", "latest(3)", "ema(h=1)", "uniform[4:]",
                                         "power-ema(0.05)"]
    best = max(rows, key=lambda r: (r["test_acc"], -r["test_loss"]))
    assert f"chosen on test: {best['name']} " in stdout and "optimistic" in err


def test_polyak_train_keeps_snapshots_for_posthoc(benched, capsys):
    tmp, _ = benched
    where = tmp / "train-snapshots"
    code, stdout, err = cli(capsys, "train", "--task", "tiny", "--method", "sgdm", "--epochs",
                            "3", "--device", "cpu", "--snapshots", str(where))
    assert code == 0 and json.loads(stdout.splitlines()[-1])["status"] == "complete", err
    snaps = SnapshotDir(where)
    assert len(snaps) == 3 and snaps.meta["methods"] == ["sgdm"]
    code, stdout, err = cli(capsys, "posthoc", str(where), "--out", str(tmp / "o3"),
                            "--device", "cpu")
    assert code == 0 and "chosen on validation" in stdout, err


def test_posthoc_snapshots_resume_with_the_group(tiny_task, tmp_path, monkeypatch):
    """Interrupted after epoch 3 and rerun, the group's snapshots continue from its
    checkpoint: the stored averages equal an uninterrupted bench's, bit for bit."""
    methods = ["sgdm@pwa", "pwa-end-only"]

    def grid(root):
        return plan_grid([tiny_task], methods, seeds=1, epochs=6,
                         resume=ResumePolicy(root, every=1), posthoc=PosthocPolicy(root))

    def stored(path):
        with Store(path) as store:
            return {r["method"]: (r["resumed"], store.posthoc(r["id"])) for r in store.runs()}

    real, saves = RunCheckpoint.save, []

    def save(self, state):
        real(self, state)
        saves.append(state["epoch"])
        if len(saves) == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(RunCheckpoint, "save", save)
    with Store(tmp_path / "s.sqlite") as store:
        assert run_grid(store, grid(tmp_path / "ck"), workers=1, show_progress=False).interrupted
    assert len(SnapshotDir(snapshot_of(tmp_path / "ck"))) == 4
    monkeypatch.setattr(RunCheckpoint, "save", real)
    with Store(tmp_path / "s.sqlite") as store:
        assert run_grid(store, grid(tmp_path / "ck"), workers=1, show_progress=False).complete
    with Store(tmp_path / "ref.sqlite") as store:
        run_grid(store, grid(tmp_path / "ref-ck"), workers=1, show_progress=False)
    got, want = stored(tmp_path / "s.sqlite"), stored(tmp_path / "ref.sqlite")
    assert {m: r for m, (r, _) in got.items()} == {m: "4" for m in methods}
    assert {m: rows for m, (_, rows) in got.items()} == {m: rows for m, (_, rows) in want.items()}
    assert len(SnapshotDir(snapshot_of(tmp_path / "ck"))) == 6


def snapshot_of(root):
    (found,) = [p for p in root.rglob("snapshots-*") if not p.is_symlink()]
    return found


def _user_snapshots(path):
    model = nn.Linear(2, 2)
    snaps = Snapshots(model, path)
    snaps.end_epoch(0)


@pytest.mark.parametrize("case,args,needle", [
    ("missing", [], "is not a directory"),
    ("empty", [], "has no manifest.json"),
    ("garbage", [], "Invalid snapshot manifest"),
    ("user", [], "names no benchmark task"),
    ("changed", [], "not configured as when the run trained"),
    ("lost", [], "Missing snapshot file"),
    ("ok", ["--windows", "a"], "Invalid windows"),
    ("ok", ["--windows", "1.5"], "Invalid windows"),
    ("ok", ["--latest", "0"], "Invalid latest"),
    ("ok", ["--half-lives", "-1"], "Invalid half-lives"),
    ("ok", ["--sigma-rels", "0.5"], "Invalid sigma-rels"),
    ("ok", ["--choose-on", "train"], "Invalid choose-on"),
])
def test_bad_input_is_one_line(benched, capsys, tmp_path, case, args, needle):
    tmp, _ = benched
    target = tmp_path / "snaps"
    if case in ("empty", "garbage", "user"):
        target.mkdir()
        if case == "garbage":
            (target / "manifest.json").write_text("{not json")
        if case == "user":
            _user_snapshots(target)
    elif case in ("ok", "changed", "lost"):
        os.symlink(snapshot_dir(tmp, "swa"), target) if case == "ok" else \
            _copy(snapshot_dir(tmp, "swa"), target)
        if case == "changed":
            manifest = json.loads((target / "manifest.json").read_text())
            manifest["meta"]["task_config"]["batch_size"] = 3
            (target / "manifest.json").write_text(json.dumps(manifest))
        if case == "lost":
            (target / "snapshot-000005.pt").unlink()
    code, stdout, err = cli(capsys, "posthoc", str(target), "--out", str(tmp_path / "o"),
                            "--device", "cpu", *args)
    lines = [ln for ln in err.splitlines() if ln.startswith("polyak: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert needle in lines[0], lines[0]
    assert not (tmp_path / "o" / "posthoc.csv").exists()


def _copy(source, target):
    import shutil

    shutil.copytree(source, target)
