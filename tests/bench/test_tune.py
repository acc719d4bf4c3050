"""Learning-rate tuning: grid construction, selection on validation accuracy, the JSON file."""

import json
import math

import pytest

import polyak
from polyak.bench.models import get_model
from polyak.bench.runner import Job
from polyak.bench.store import Store
from polyak.bench.train import resolve_overrides
from polyak.bench.tune import default_lr, pick_best, tune, tune_jobs


def test_pick_best_prefers_accuracy_then_loss():
    assert pick_best([(0.1, 0.90, 0.3), (0.3, 0.92, 0.5), (1.0, 0.91, 0.1)]) == 0.3
    assert pick_best([(0.1, 0.92, 0.3), (0.3, 0.92, 0.2)]) == 0.3
    assert pick_best([(0.1, 0.0, math.inf), (0.3, 0.5, 1.0)]) == 0.3


def test_default_lr_ignores_the_tuned_file(tiny_task, tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"lr": {"sgdm": 0.77}}))
    task = tiny_task.replace(tuned_path=path)
    model = get_model(task.model, **task.model_kwargs)
    expected = polyak.recipe("sgdm", model, epochs=2, steps_per_epoch=4).optimizer
    assert default_lr(task, "sgdm", 2) == expected.param_groups[0]["lr"]
    with pytest.raises(ValueError, match="sets lr"):
        default_lr(task, "sgdm:lr=0.1", 2)


def test_grid_points_are_multiples_of_the_default(tiny_task):
    plan = tune_jobs(tiny_task, ["sgdm"], [0.1, 1.0, 10.0], seeds=2, epochs=1)
    base = default_lr(tiny_task, "sgdm", 1)
    assert [lr for lr, _ in plan["sgdm"]] == pytest.approx([base * 0.1, base, base * 10])
    jobs = plan["sgdm"][0][1]
    assert [(j.spec, j.seed) for j in jobs] == [(f"sgdm:lr={base * 0.1:.6g}", 0),
                                                (f"sgdm:lr={base * 0.1:.6g}", 1)]
    with pytest.raises(ValueError, match="Invalid grid"):
        tune_jobs(tiny_task, ["sgdm"], [0.0, 1.0], seeds=1, epochs=1)


def test_tune_picks_the_best_validation_accuracy_and_merges(tiny_task, tmp_path):
    out = tmp_path / "tuned.json"
    out.write_text(json.dumps({"lr": {"swa": 0.123}, "commands": []}))
    task = tiny_task.replace(tuned_path=out)
    grid = [0.01, 1.0]
    plan = tune_jobs(task, ["sgd", "sgdm"], grid, seeds=1, epochs=1)
    with Store(tmp_path / "tune.sqlite") as store:
        result = tune(store, task, plan, grid, 1, 1, workers=1, out=out, command="polyak tune",
                      show_progress=False, max_extend=0)
        for method in ("sgd", "sgdm"):
            accs = {}
            for lr, _, _ in result.scores[method]:
                run = store.run(Job(task, f"{method}:lr={lr:.6g}", 0, 1).key)
                accs[lr] = store.metrics(run["id"])[-1]["val_acc"]
            assert len(accs) == 2 and accs[result.lrs[method]] == max(accs.values())
    data = json.loads(out.read_text())
    assert data["lr"]["swa"] == 0.123 and set(data["lr"]) == {"swa", "sgd", "sgdm"}
    assert data["commands"] == ["polyak tune"] and data["task"] == task.name
    assert resolve_overrides(task, "sgdm") == {"lr": result.lrs["sgdm"]}


def test_an_edge_winner_extends_the_grid(tiny_task, tmp_path):
    grid = [1e-4, 1e-3]  # far below the default: the upper edge wins
    plan = tune_jobs(tiny_task, ["sgdm"], grid, seeds=1, epochs=1)
    low, high = (lr for lr, _ in plan["sgdm"])
    with Store(tmp_path / "tune.sqlite") as store:
        result = tune(store, tiny_task, plan, grid, 1, 1, workers=1, out=tmp_path / "t.json",
                      show_progress=False, max_extend=2)
        lrs = [lr for lr, _, _ in result.scores["sgdm"]]
        assert lrs[:2] == [low, high] and len(lrs) in (3, 4)
        assert lrs[2] == pytest.approx(high * high / low, rel=1e-5)
        assert len(store.runs()) == len(lrs)
        if len(lrs) == 4:  # extended twice: the third point won too
            assert lrs[3] == pytest.approx(lrs[2] * high / low, rel=1e-5)
        best = max(result.scores["sgdm"], key=lambda s: (s[1], -s[2]))  # acc, then loss
        assert result.lrs["sgdm"] == best[0]
