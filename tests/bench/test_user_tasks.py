"""A user's task file as a Task: loading, the checks, the run identity, shipping to workers.

Bad task files through the CLI: one line naming the file and the problem, exit status 2, no
store written (``polyak bench``, ``tune`` and ``report`` alike)."""

from __future__ import annotations

import pickle
import shutil
import sys

import pytest
import torch
from _user_files import EXAMPLE, GOOD, HEADER, REPO, forget, task_file
from cli_run import run

import polyak.cli.bench  # noqa: F401  (registers the commands)
from polyak.bench.runner import Job
from polyak.bench.train import run_identity, train_run
from polyak.bench.user_tasks import TaskFileError, load_task


def one_line(code, err, *needles):
    lines = [line for line in err.splitlines() if line.startswith("polyak: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def records(result):
    return [{k: v for k, v in r.items() if k != "time"} for r in result.records]


# --- bad task files: (file body or None for a file that is missing, function, needles) -------
_DICT = "return dict(train=1)"
_BAD_BODIES = {
    "no file": (None, "task", ["no such file"]),
    "syntax error": (HEADER + "def task(:\n    pass\n", "task",
                     ["importing it failed (line 18)", "SyntaxError"]),
    "import raises": (HEADER + "VALUE = 1 / 0\n", "task",
                      ["importing it failed (line 18)", "ZeroDivisionError"]),
    "no such function": (HEADER, "task", ["defines no task", "data, model"]),
    "not callable": (HEADER + "task = 3\n", "task", ["task is a int"]),
    "function raises": (HEADER + "def task():\n    raise RuntimeError('no\\ndata')\n", "task",
                        ["task() raised RuntimeError: no data (line 19)"]),
    "returns a dict": (_DICT, "task", ["returned a dict, not a UserTask"]),
    "lengths differ": (GOOD.replace("train=data(192, 0)", "train=(data(192, 0)[0], "
                                    "data(191, 0)[1])"), "task",
                       ["Invalid train", "(192, 6)", "(191,)"]),
    "feature shapes differ": (GOOD.replace("val=data(64, 1)", "val=data(64, 1, d=5)"), "task",
                              ["Invalid val", "(64, 5)", "(192, 6)"]),
    "float labels": (GOOD.replace("val=data(64, 1)", "val=(data(64, 1)[0], "
                                  "data(64, 1)[1].float())"), "task", ["Invalid val", "float"]),
    "output too narrow": (GOOD.replace("model=model", "model=lambda s: nn.Linear(6, 2)"),
                          "task", ["output of shape (8, 2) does not fit the labels 0..2"]),
    "forward fails": (GOOD.replace("model=model", "model=lambda s: nn.Linear(5, 3)"), "task",
                      ["forward pass on validation inputs of shape (8, 6) raised RuntimeError"]),
    "not a module": (GOOD.replace("model=model", "model=lambda s: 3"), "task",
                     ["model(seed) returned a int"]),
    "loss not a scalar": (GOOD, "task", ["loss(output, targets) returned", "scalar"]),
    "bad metric": (GOOD, "task", ["Invalid metric: 'auc'"]),
    "bad batch size": (GOOD.replace("batch_size=32", "batch_size=0"), "task",
                       ["Invalid batch_size: 0"]),
}
_EXTRAS = {"loss not a scalar": ", loss=lambda o, t: F.cross_entropy(o, t, reduction='none')",
           "bad metric": ", metric='auc'"}


def _bad_file(tmp_path, case):
    body, name, needles = _BAD_BODIES[case]
    path = tmp_path / "mytask.py"
    if body is not None:
        if body.startswith(HEADER):
            path.write_text(body)
        else:
            task_file(path, body, _EXTRAS.get(case, ""))
    return path, name, needles


@pytest.mark.parametrize("case", list(_BAD_BODIES))
def test_bad_task_file_is_one_line_and_writes_nothing(capsys, tmp_path, fresh, case):
    path, name, needles = _bad_file(tmp_path, case)
    store = tmp_path / "runs.sqlite"
    code, _, err = run(capsys, "bench", "--tasks", f"{path}:{name}", "--store", str(store),
                       "--out", str(tmp_path / "rep"), "--checkpoint-dir", str(tmp_path / "ck"),
                       "--no-progress", "--device", "cpu")
    one_line(code, err, str(path), *needles)
    assert not store.exists() and not (tmp_path / "rep").exists()


@pytest.mark.parametrize("command", [["tune", "--task"], ["report", "--tasks"]])
def test_bad_task_file_in_tune_and_report(capsys, tmp_path, fresh, command):
    path, name, needles = _bad_file(tmp_path, "returns a dict")
    store = tmp_path / "runs.sqlite"
    code, _, err = run(capsys, *command, f"{path}:{name}", "--store", str(store))
    one_line(code, err, str(path), *needles)
    assert not store.exists()


def test_missing_module_and_malformed_spec(capsys, tmp_path):
    code, _, err = run(capsys, "bench", "--tasks", "no_such_module_xyz:task", "--store",
                       str(tmp_path / "s.sqlite"))
    one_line(code, err, "no_such_module_xyz: no such module")
    code, _, err = run(capsys, "bench", "--tasks", "x.py:not-a-name", "--store",
                       str(tmp_path / "s.sqlite"))
    one_line(code, err, "Invalid task: 'x.py:not-a-name'")
    assert not (tmp_path / "s.sqlite").exists()


def test_example_without_scikit_learn_says_what_to_install(capsys, tmp_path, fresh,
                                                            monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn raises ImportError
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    store = tmp_path / "s.sqlite"
    code, _, err = run(capsys, "bench", "--tasks", f"{EXAMPLE}:digits_cnn", "--store",
                       str(store))
    one_line(code, err, str(EXAMPLE), "ImportError", "pip install scikit-learn")
    assert not store.exists()


# --- what a loaded task is -------------------------------------------------------------------
def test_loaded_task_matches_the_function_and_checks_labels(tmp_path, fresh):
    path = task_file(tmp_path / "t.py")
    task = load_task(f"{path}:task")
    assert (task.name, task.batch_size, task.epochs, task.seeds, task.metric) == \
        ("task", 32, 2, 3, "accuracy")
    namespace: dict = {}
    exec(HEADER, namespace)  # the reference: the file's own data function, called directly
    x, y = namespace["data"](192, 0)
    splits = task.load()
    assert torch.equal(splits.x_train, x) and torch.equal(splits.y_train, y)
    assert task.num_classes() == 3  # the model's output width
    assert str(path) in task.description


def test_the_function_runs_once_per_process(tmp_path, fresh):
    calls = tmp_path / "calls"
    header = HEADER + f"COUNTER = {str(calls)!r}\n\n"
    body = "open(COUNTER, 'a').write('x')\n    " + GOOD
    path = task_file(tmp_path / "t.py", body, header=header)
    task = load_task(f"{path}:task")
    task.load()
    train_run(task, "sgd", 0, 1)
    train_run(task, "sgdm", 1, 1)
    assert calls.read_text() == "x"  # loaded and checked once in this process
    clone = pickle.loads(pickle.dumps(task))
    clone.load()
    assert calls.read_text() == "x"  # an unpickled copy shares the process's cache
    forget()  # a new process
    clone.load()
    assert calls.read_text() == "xx"


def test_a_pickled_task_carries_its_code_not_its_path(tmp_path, fresh):
    """What a spawned or Ray worker gets: the task file's text; the file may be gone."""
    path = task_file(tmp_path / "t.py")
    task = load_task(f"{path}:task")
    want = train_run(task, "swa", 0, 2)
    shipped = pickle.dumps(task)
    path.unlink()
    forget()
    got = train_run(pickle.loads(shipped), "swa", 0, 2)
    assert records(got) == records(want)


def test_a_worker_with_other_data_refuses_to_run(tmp_path, fresh):
    """An unseeded draw gives each process other data: the run says so instead of mixing."""
    body = GOOD.replace("train=data(192, 0)", "train=(torch.randn(192, 6), data(192, 0)[1])")
    task = load_task(f"{task_file(tmp_path / 't.py', body)}:task")
    forget()  # another process
    with pytest.raises(TaskFileError, match="other data in this process.*deterministic"):
        task.load()


# --- the run identity ------------------------------------------------------------------------
def _hash(task, spec="sgdm", epochs=2):
    return Job(task, spec, 0, epochs).key.hash


def test_editing_the_file_changes_the_run_identity(tmp_path, fresh):
    path = task_file(tmp_path / "t.py")
    before = load_task(f"{path}:task")
    path.write_text(path.read_text() + "# a comment\n")
    after = load_task(f"{path}:task")
    assert _hash(before) != _hash(after)
    assert run_identity(before, "sgdm", 0, 2)["config_hash"] != \
        run_identity(after, "sgdm", 0, 2)["config_hash"]  # resume checkpoints too
    moved = tmp_path / "elsewhere.py"
    shutil.copy(path, moved)
    assert _hash(load_task(f"{moved}:task")) == _hash(after)  # the path is not the identity


def test_a_version_identifies_the_code_but_not_the_data(tmp_path, fresh):
    path = task_file(tmp_path / "t.py", extra=", version='1'")
    first = load_task(f"{path}:task")
    path.write_text(path.read_text() + "# a comment\n")
    assert _hash(load_task(f"{path}:task")) == _hash(first)  # the user's promise: same code
    task_file(path, extra=", version='2'")
    assert _hash(load_task(f"{path}:task")) != _hash(first)
    task_file(path, GOOD.replace("data(192, 0)", "data(192, 5)"), extra=", version='1'")
    assert _hash(load_task(f"{path}:task")) != _hash(first)  # other data: other runs


def test_edited_file_reruns_and_the_report_reads_the_new_runs(capsys, tmp_path, fresh):
    path = task_file(tmp_path / "t.py")
    args = ["--tasks", f"{path}:task", "--methods", "sgdm", "--seeds", "1", "--store",
            str(tmp_path / "s.sqlite"), "--out", str(tmp_path / "rep"), "--checkpoint-dir",
            str(tmp_path / "ck"), "--no-progress", "--device", "cpu"]
    code, _, err = run(capsys, "bench", *args)
    assert code == 0 and "1 run(s) executed, 0 already" in err, err
    code, _, err = run(capsys, "bench", *args)
    assert code == 0 and "0 run(s) executed, 1 already" in err, err
    task_file(path, GOOD.replace("epochs=2", "epochs=2 "))  # an edit that changes no value
    code, _, err = run(capsys, "bench", *args)
    assert code == 0 and "1 run(s) executed, 0 already" in err, err
    code, out, err = run(capsys, "report", "--tasks", f"{path}:task", "--store",
                         str(tmp_path / "s.sqlite"), "--out", str(tmp_path / "rep"))
    assert code == 0, err
    assert "| 1 | sgdm | 1 |" in out  # one run: the edited file's, not both


def test_report_without_tasks_names_the_users_tasks(capsys, tmp_path, fresh):
    path = task_file(tmp_path / "t.py")
    store = str(tmp_path / "s.sqlite")
    code, _, err = run(capsys, "bench", "--tasks", f"{path}:task", "--methods", "sgdm",
                       "--seeds", "1", "--store", store, "--out", str(tmp_path / "rep"),
                       "--checkpoint-dir", str(tmp_path / "ck"), "--no-progress")
    assert code == 0, err
    code, _, err = run(capsys, "report", "--store", store, "--out", str(tmp_path / "rep"))
    one_line(code, err, "runs of task", "--tasks FILE.py:NAME")


def test_two_tasks_of_one_name_are_refused(capsys, tmp_path, fresh):
    a, b = task_file(tmp_path / "a.py"), task_file(tmp_path / "b.py")
    code, _, err = run(capsys, "bench", "--tasks", f"{a}:task,{b}:task", "--store",
                       str(tmp_path / "s.sqlite"))
    one_line(code, err, "both called task")


def test_the_example_loads_from_the_repository_root(monkeypatch, fresh):
    monkeypatch.chdir(REPO)
    task = load_task("examples/own_task.py:digits_cnn")
    splits = task.load()
    assert (len(splits.x_train), len(splits.x_val), len(splits.x_test)) == (1000, 297, 500)
    assert tuple(splits.x_train.shape[1:]) == (1, 8, 8) and task.num_classes() == 10
