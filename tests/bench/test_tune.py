"""Tuning: the papers' grids through Optuna's GridSampler on polyak's runner, shared and relative
tunings, selection on validation only, resuming, the winners' file and ``polyak bench --tuned``."""

import json
import math

import pytest

from polyak.bench.runner import Job
from polyak.bench.store import Store
from polyak.bench.train import resolve_overrides
from polyak.bench.tune import (
    Trial,
    edges_of,
    grid_of,
    pick_best,
    plan_methods,
    tune,
    write_tuned,
)


def test_pick_best_prefers_accuracy_then_loss():
    trials = [Trial("m", {"lr": lr}, [], acc, loss)
              for lr, acc, loss in [(0.1, 0.90, 0.3), (0.3, 0.92, 0.5), (1.0, 0.92, 0.1),
                                    (3.0, 0.0, math.inf)]]
    assert pick_best(trials).params == {"lr": 1.0}


def test_plan_puts_each_method_after_the_one_it_shares_its_tuning_with():
    order = plan_methods(["gadam", "sgdl", "asgd", "adabound"])
    assert set(order) == {"gadam", "adamw@gadam", "sgdl", "sgdm@sgdl", "asgd", "sgdm@gadam",
                          "adabound"}
    for method, source in (("gadam", "adamw@gadam"), ("sgdl", "sgdm@sgdl"),
                           ("asgd", "sgdm@gadam")):
        assert order.index(source) < order.index(method)
    with pytest.raises(ValueError, match="method names"):
        plan_methods(["sgdm:lr=0.1"])


def test_grids_are_the_papers_scaled_to_the_budget():
    assert grid_of("sgd", 40, 32) == {"lr": [1e-3, 1e-2, 5e-2, 1e-1]}
    assert grid_of("sgd@tso-alra", 40, 32) == {"lr": [1e-1, 1e-2, 1e-3, 1e-4]}
    tso = grid_of("tso-alra", 40, 32)  # switch epochs 5, 10, ..., 75 of 164, scaled to 40
    expected = list(dict.fromkeys(max(1, round(k * 40 / 164)) for k in range(5, 80, 5)))
    assert tso == {"lr": [0.1, 0.01, 0.001], "switch_epoch": expected}
    assert expected[:3] == [1, 2, 4] and expected[-1] == 18 and len(expected) == 15
    assert grid_of("tso-alra", 164, 391)["switch_epoch"] == list(range(5, 80, 5))
    # Gadam App. B.2: the lr first, then the weight decay in [1e-4, 1e-3] (decoupled: per unit
    # of the initial lr, AdamW's fixed 1e-3, Padam's the lr SGD was tuned to)
    assert grid_of("sgdm@gadam", 40, 32) == {"lr": [1e-3, 1e-2, 1e-1]}
    assert grid_of("sgdm@gadam", 40, 32, stage=1, values={"lr": 0.1}) == {
        "weight_decay": [1e-4, 2.5e-4, 5e-4, 1e-3]}
    assert grid_of("adamw@gadam", 40, 32) == {"weight_decay": [0.1, 0.25, 0.5, 1.0]}
    assert grid_of("padam@gadam", 40, 32, values={"lr": 0.1}, shared={"lr": 0.1}) == {
        "weight_decay": [1e-3, 2.5e-3, 5e-3, 1e-2]}
    # SGDL: >= 10x momentum SGD's lr: the paper's 1.0..1.3 and 10, 12, 15x it
    assert grid_of("sgdl", 40, 32, shared={"lr": 0.1}) == {"lr": [1.0, 1.1, 1.2, 1.3, 1.5]}
    assert grid_of("sgdl", 40, 32, shared={"lr": 0.05}) == {
        "lr": [0.5, 0.6, 0.75, 1.0, 1.1, 1.2, 1.3]}
    assert grid_of("sgdl", 40, 32, shared={"lr": 0.01})["lr"][:3] == [0.1, 0.12, 0.15]
    # averaged SGD's larger step: 2x or 4x the tuned s
    assert grid_of("asgd", 40, 32, shared={"lr": 0.05, "weight_decay": 5e-4}) == {
        "lr": [0.1, 0.2]}
    with pytest.raises(ValueError, match="tuned values"):
        grid_of("sgdl", 40, 32)


def test_tune_runs_equal_budgets_selects_on_validation_and_resumes(tiny_task, tmp_path):
    methods = ["sgd@sgdl", "swa", "sgdl", "padam@gadam"]
    with Store(tmp_path / "tune.sqlite") as store:
        result = tune(store, tiny_task, methods, epochs=1, trials=2, workers=1,
                      show_progress=False)
        stages = {m: sorted(t.stage for t in ts) for m, ts in result.trials.items()}
        assert stages == {"sgd@sgdl": [0, 0], "sgdm@sgdl": [0, 0], "sgdl": [0, 0],
                          "sgdm@gadam": [0, 0, 1, 1], "padam@gadam": [0, 0]}
        for method, trials in result.trials.items():
            for trial in trials:  # the score is the run's final validation accuracy
                run = store.run(trial.jobs[0].key)
                assert trial.val_acc == store.metrics(run["id"])[-1]["val_acc"]
            for stage in {t.stage for t in trials}:
                best = pick_best([t for t in trials if t.stage == stage]).params
                assert all(result.tuned[method][k] == v for k, v in best.items())
        sgdm = result.tuned["sgdm@gadam"]
        # the weight-decay stage ran at the lr the first stage chose
        assert all(f"lr={sgdm['lr']!r}" in t.spec for t in result.trials["sgdm@gadam"]
                   if t.stage == 1)
        assert result.tuned["swa"] == sgdm and result.shared["swa"] == "sgdm@gadam"
        assert result.tuned["padam@gadam"]["lr"] == sgdm["lr"]
        assert result.tuned["sgdl"]["lr"] >= 10 * result.tuned["sgdm@sgdl"]["lr"]
        n_runs = len(store.runs())
        assert n_runs == 12
        # resuming: the same call runs nothing again and asks the same trials
        again = tune(store, tiny_task, methods, epochs=1, trials=2, workers=1,
                     show_progress=False)
        assert again.summary.skipped == 12 and again.summary.complete == 0
        assert again.tuned == result.tuned and len(store.runs()) == n_runs
    out = write_tuned(tmp_path / "mine.json", tiny_task, result, 1, 1, "polyak tune ...")
    data = json.loads(out.read_text())
    assert data["tuned"]["swa"] == sgdm and data["epochs"] == 1
    assert len(data["scores"]["sgd@sgdl"]) == 2 and "validation" in data["selection"]
    assert data["grid"]["sgd@sgdl"][0]["lr"] == sorted(t.params["lr"]
                                                       for t in result.trials["sgd@sgdl"])
    task = tiny_task.replace(tuned_path=out)
    assert resolve_overrides(task, "swa") == sgdm
    assert resolve_overrides(task, "swa:lr=0.5") == {"weight_decay": sgdm["weight_decay"]}
    # a method missing from the file takes the values of the one it shares with, as its plan
    # takes them (averaged SAM at s: momentum SGD's lr and weight decay)
    assert resolve_overrides(task, "sam-avg@nitanda") == sgdm


def test_edges_name_a_winner_at_the_end_of_its_grid():
    grid = {"lr": [1e-3, 1e-2, 1e-1], "beta1": [0.9, 0.99], "wd": [1e-4, 5e-4, 1e-3]}
    assert edges_of(grid, {"lr": 0.1, "beta1": 0.99, "wd": 5e-4}) == [
        "lr=0.1 is the largest of its grid (0.001..0.1)"]
    assert edges_of(grid, {"lr": 0.01, "beta1": 0.9, "wd": 1e-4}) == [
        "wd=0.0001 is the smallest of its grid (0.0001..0.001)"]


def test_tuned_epoch_counts_scale_to_the_run_budget(tiny_task, tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"epochs": 40, "tuned": {"tso-alra": {"lr": 0.1,
                                                                     "switch_epoch": 6}}}))
    task = tiny_task.replace(tuned_path=path)
    assert resolve_overrides(task, "tso-alra", 40) == {"lr": 0.1, "switch_epoch": 6}
    assert resolve_overrides(task, "tso-alra", 20) == {"lr": 0.1, "switch_epoch": 3}
    assert Job(task, "tso-alra", 0, 20).key.hash != Job(task, "tso-alra", 0, 40).key.hash


def test_a_file_of_another_task_is_not_merged_into(tiny_task, tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"task": "other", "epochs": 1, "tuned": {}}))
    from polyak.bench.tune import TuneResult

    with pytest.raises(ValueError, match="Invalid out"):
        write_tuned(path, tiny_task, TuneResult({}, {}, {}), 1, 1, "")


def test_a_grid_run_whole_is_told_and_written(tiny_task, tmp_path):
    # the GridSampler stops its study when the grid is exhausted; the driver must carry on
    with Store(tmp_path / "tune.sqlite") as store:
        result = tune(store, tiny_task, ["padam"], epochs=1, workers=1, show_progress=False)
    assert len(result.trials["padam"]) == 3  # the whole grid: lr in {1e-3, 1e-2, 1e-1}
    assert sorted(t.params["lr"] for t in result.trials["padam"]) == [1e-3, 1e-2, 1e-1]
    assert result.tuned["padam"] == pick_best(result.trials["padam"]).params
