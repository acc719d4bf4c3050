"""Task registry, task variants and the shipped tuned learning rates."""

import json

import pytest

import polyak
from polyak.bench.tasks import TASKS, TUNED_DIR, Task, describe, get_task


def test_registry_names_and_descriptions():
    assert {"mnist1d-cnn", "mnist1d-mlp"} <= set(TASKS)
    assert dict(describe()).keys() == TASKS.keys()
    cnn = get_task("mnist1d-cnn")
    assert cnn.model == "mnist1d-cnn" and cnn.model_kwargs["batchnorm"] is True
    assert cnn.seeds == 3 and cnn.epochs >= 1 and cnn.batch_size >= 1


def test_unknown_task_lists_valid_names():
    with pytest.raises(ValueError) as info:
        get_task("imagenet")
    assert "imagenet" in str(info.value) and "mnist1d-cnn" in str(info.value)


def test_variant_has_a_different_config(tiny_task):
    base = get_task("mnist1d-cnn")
    assert tiny_task.name == base.name and tiny_task.config() != base.config()
    assert base.config() == get_task("mnist1d-cnn").replace().config()
    json.dumps(tiny_task.config())  # serialisable: it is part of the run identity


@pytest.mark.parametrize("field,value", [("epochs", 0), ("batch_size", -1), ("seeds", 1.5)])
def test_invalid_fields(field, value):
    with pytest.raises(ValueError, match=f"Invalid {field}"):
        get_task("mnist1d-cnn").replace(**{field: value})


def test_tuned_lrs_are_read_from_the_json(tmp_path):
    path = tmp_path / "t.json"
    task = get_task("mnist1d-cnn").replace(tuned_path=path)
    assert task.tuned_lrs() == {}
    path.write_text(json.dumps({"lr": {"sgdm": 0.05, "gadamx": "0.1"}}))
    assert task.tuned_lrs() == {"sgdm": 0.05, "gadamx": 0.1}
    path.write_text("{not json")
    with pytest.raises(ValueError, match="Invalid tuned hyper-parameter file"):
        task.tuned_lrs()


def test_tuned_values_of_the_tuner_format(tmp_path):
    path = tmp_path / "t.json"
    task = get_task("mnist1d-cnn").replace(tuned_path=path)
    path.write_text(json.dumps({"epochs": 40, "tuned": {
        "tso-alra": {"lr": 0.1, "switch_epoch": 6}, "adam": {"lr": 0.01, "beta1": 0.99}}}))
    assert task.tuned_values() == {"tso-alra": {"lr": 0.1, "switch_epoch": 6},
                                   "adam": {"lr": 0.01, "beta1": 0.99}}
    assert task.tuned_values(20)["tso-alra"] == {"lr": 0.1, "switch_epoch": 3}
    assert task.tuned_lrs() == {"tso-alra": 0.1, "adam": 0.01}


def test_shipped_tuned_files_name_real_arms_and_recipes():
    from polyak.bench import protocols

    names = set(polyak.recipes.names()) | set(protocols.default_methods())
    shipped = 0
    for task in TASKS.values():
        path = task.tuned_file()
        assert path.parent == TUNED_DIR
        if path.exists():
            shipped += 1
            data = json.loads(path.read_text())
            assert data["task"] == task.name and data["commands"]
            values = task.tuned_values()
            assert set(values) <= names
            # every arm of the default grid is in the file (tuned, shared, or fixed by its paper)
            assert set(protocols.default_methods()) <= set(values), task.name
            for method, hps in values.items():
                assert set(hps) <= set(protocols.parse(method).defaults), method
                assert hps.get("lr", 1) > 0
    assert shipped == 3


def test_task_is_frozen():
    with pytest.raises(AttributeError):
        get_task("mnist1d-cnn").epochs = 3
    assert isinstance(get_task("mnist1d-mlp"), Task)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_description_is_that_of_the_budget_asked(name):
    task = get_task(name)
    assert task.describe() == task.describe(task.epochs) == dict(describe())[name]
    default, short = task.describe(), task.describe(5)
    assert "{" not in default + short  # every placeholder filled
    assert f"{task.epochs} epochs" in default and "(default " not in default
    assert f"5 epochs (default {task.epochs}" in short
    assert f"{task.epochs} epochs (" not in short and f"{task.epochs} epochs of" not in short


def test_cnn_description_scales_the_evaluations_and_the_run_time():
    cnn = get_task("mnist1d-cnn")
    assert "at 10 evenly spaced epochs; ~6 s/run on 1 CPU" in cnn.describe()
    assert "at every epoch; ~0.75 s/run (scaled from ~6 s at 40 epochs)" in cnn.describe(5)
    assert "1 epoch (default 40) of batch 128" in cnn.describe(1)
    custom = cnn.replace(description="my {data} task, {epochs}", budget_note="why")
    assert custom.describe(3) == "my {data} task, 3 epochs (default 40: why)"
    with pytest.raises(ValueError, match="Invalid epochs"):
        cnn.describe(0)
