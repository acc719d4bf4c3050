"""Tuning: the papers' grids through Optuna's GridSampler on polyak's runner, shared and relative
tunings, selection on validation only, resuming, the winners' file and ``polyak bench --tuned``."""

import json
import math

import pytest

from polyak.bench.runner import Job
from polyak.bench.store import Store
from polyak.bench.train import resolve_overrides
from polyak.bench.tune import Trial, grid_of, pick_best, plan_methods, tune, write_tuned


def test_pick_best_prefers_accuracy_then_loss():
    trials = [Trial("m", {"lr": lr}, [], acc, loss)
              for lr, acc, loss in [(0.1, 0.90, 0.3), (0.3, 0.92, 0.5), (1.0, 0.92, 0.1),
                                    (3.0, 0.0, math.inf)]]
    assert pick_best(trials).params == {"lr": 1.0}


def test_plan_adds_the_recipes_a_method_shares_its_tuning_with():
    grid, relative, shared = plan_methods(["gadam", "sgdl", "asgd", "adabound"])
    assert grid == ["adamw", "sgdm"] and relative == ["sgdl"]
    assert shared == ["gadam", "asgd"]  # adabound: published defaults, nothing to tune
    with pytest.raises(ValueError, match="recipe names"):
        plan_methods(["sgdm:lr=0.1"])


def test_grids_are_the_papers_scaled_to_the_budget():
    assert grid_of("sgd", 40, 32) == {"lr": [1e-3, 1e-2, 5e-2, 1e-1]}
    tso = grid_of("tso-alra", 40, 32)  # switch epochs 5, 10, ..., 75 of 164, scaled to 40
    expected = list(dict.fromkeys(max(1, round(k * 40 / 164)) for k in range(5, 80, 5)))
    assert tso == {"lr": [0.1, 0.01, 0.001], "switch_epoch": expected}
    assert expected[:3] == [1, 2, 4] and expected[-1] == 18 and len(expected) == 15
    assert grid_of("tso-alra", 164, 391)["switch_epoch"] == list(range(5, 80, 5))
    assert grid_of("adamw", 40, 32) == {"lr": [1e-4, 1e-3, 1e-2], "weight_decay": [0.1, 0.25, 1.0]}
    assert grid_of("sgdl", 40, 32, base={"lr": 0.05}) == {"lr": [0.5, 0.55, 0.6, 0.65]}
    with pytest.raises(ValueError, match="relative"):
        grid_of("sgdl", 40, 32)


def test_tune_runs_equal_budgets_selects_on_validation_and_resumes(tiny_task, tmp_path,
                                                                   monkeypatch):
    with Store(tmp_path / "tune.sqlite") as store:
        result = tune(store, tiny_task, ["sgd", "sgdm", "swa", "sgdl"], epochs=1, trials=2,
                      workers=1, show_progress=False)
        assert {m: len(t) for m, t in result.trials.items()} == {"sgd": 2, "sgdm": 2, "sgdl": 2}
        for method, trials in result.trials.items():
            accs = []
            for trial in trials:  # the score is the run's final validation accuracy
                run = store.run(trial.jobs[0].key)
                accs.append(store.metrics(run["id"])[-1]["val_acc"])
                assert trial.val_acc == accs[-1]
            assert result.tuned[method] == pick_best(trials).params
        assert result.tuned["swa"] == result.tuned["sgdm"] and result.shared == {"swa": "sgdm"}
        sgdm_lr = result.tuned["sgdm"]["lr"]
        ratios = sorted(round(t.params["lr"] / sgdm_lr, 3) for t in result.trials["sgdl"])
        assert len(ratios) == 2 and set(ratios) <= {10, 11, 12, 13}
        n_runs = len(store.runs())
        assert n_runs == 6
        # resuming: the same call runs nothing again and asks the same trials
        again = tune(store, tiny_task, ["sgd", "sgdm", "swa", "sgdl"], epochs=1, trials=2,
                     workers=1, show_progress=False)
        assert again.summary.skipped == 6 and again.summary.complete == 0
        assert again.tuned == result.tuned and len(store.runs()) == n_runs
    out = write_tuned(tmp_path / "mine.json", tiny_task, result, 1, 1, "polyak tune ...")
    data = json.loads(out.read_text())
    assert data["tuned"]["swa"] == result.tuned["sgdm"] and data["epochs"] == 1
    assert len(data["scores"]["sgd"]) == 2 and "validation" in data["selection"]
    assert data["grid"]["sgd"]["lr"] == sorted(t.params["lr"] for t in result.trials["sgd"])
    task = tiny_task.replace(tuned_path=out)
    assert resolve_overrides(task, "swa") == result.tuned["sgdm"]
    assert resolve_overrides(task, "swa:lr=0.5") == {}
    # a recipe missing from the file takes the values of the recipe it shares with
    assert resolve_overrides(task, "sam") == result.tuned["sgdm"]
    assert resolve_overrides(task, "asgd") == {"lr": pytest.approx(2 * sgdm_lr)}


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
