"""Issue 14 defect 1: `polyak bench --keep-checkpoints` writes files that `polyak stability` and
`polyak probe` load, for every task's model (the MLP has its own ``.net``: the device wrapper
must be unwrapped by type, not by attribute name)."""

import pytest
import torch
from _real_data import write_all
from test_tasks_real import TINY

import polyak.cli.analysis  # noqa: F401  (registers the commands)
import polyak.cli.bench  # noqa: F401
from polyak.bench import checkpoints as ck
from polyak.bench.data import fashion_mnist
from polyak.bench.device import OnDevice
from polyak.bench.tasks import TASKS, get_task
from polyak.bench.train import make_model
from polyak.cli import main

GPU_SIZED = [n for n, t in TASKS.items() if t.device_hint == "gpu"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_all(tmp_path_factory.mktemp("real-data"))


@pytest.fixture(autouse=True)
def _fixture_data_only(monkeypatch, tmp_path):
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIRS", ())
    monkeypatch.setenv("POLYAK_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("POLYAK_TEXT", raising=False)


def tiny(name, data_root, mnist1d_root):
    if name.startswith("mnist1d"):
        return get_task(name).replace(
            data_kwargs={"n_train": 60, "n_val": 30, "n_test": 30, "root": str(mnist1d_root)},
            batch_size=32, eval_batch_size=32, tuned_path=mnist1d_root / "none.json")
    data_kwargs, batch, eval_batch = TINY[name]
    return get_task(name).replace(data_dir=str(data_root), data_kwargs=data_kwargs,
                                  batch_size=batch, eval_batch_size=eval_batch,
                                  tuned_path=data_root / "none.json")


def cli(*args):
    with pytest.raises(SystemExit) as info:
        main(list(args))
    return info.value.code


@pytest.mark.parametrize("name", [n if n not in GPU_SIZED else
                                  pytest.param(n, marks=pytest.mark.slow) for n in TASKS])
def test_kept_checkpoints_of_every_task_load_in_stability_and_probe(
        name, data_root, mnist1d_root, tmp_path, monkeypatch, capsys):
    task = tiny(name, data_root, mnist1d_root)
    monkeypatch.setitem(TASKS, name, task)
    root = tmp_path / "ck"
    if name == "cifar100-wrn28-10":  # 36.5M parameters: training it here takes minutes
        _save_without_training(task, root)
    else:
        _bench(task, name, root, tmp_path)
    run = ck.checkpoint_dir(root, name, "sgd", 0)
    files = ck.list_checkpoints(run)
    assert [f.name for f in files] == ["epoch0.pt", "epoch1.pt"]
    model = make_model(task, task.load())
    model.load_state_dict(ck.load_checkpoint(files[-1])["model"])  # strict: every key matches
    capsys.readouterr()
    if task.kind == "lm":  # the analysis tools need a classification task and say so
        assert cli("stability", "--task", name, "--checkpoints", str(run)) == 2
        assert "classification" in capsys.readouterr().err
        return
    small = ("2", "1") if name in GPU_SIZED else ("8", "2")  # batch size, power iterations
    assert cli("stability", "--task", name, "--checkpoints", str(run), "--batches", "1",
               "--batch-size", small[0], "--max-iter", small[1]) == 0
    out = capsys.readouterr().out
    assert "epoch0" in out and "epoch1" in out
    assert cli("probe", "--task", name, "--checkpoints", str(run), "--points", "2",
               "--examples", small[0], "--batch-size", small[0],
               "--out", str(tmp_path / "p.png")) == 0
    assert "diversity of the 2 iterates" in capsys.readouterr().out


def _bench(task, name, root, tmp_path):
    assert cli("bench", "--tasks", name, "--methods", "sgd", "--seeds", "1", "--epochs", "2",
               "--workers", "1", "--store", str(tmp_path / "s.sqlite"), "--out",
               str(tmp_path / "rep"), "--no-progress", "--device", "cpu",
               "--keep-checkpoints", "all", "--checkpoint-dir", str(root),
               *(() if task.data_dir is None else ("--data-dir", task.data_dir))) == 0


def _save_without_training(task, root):
    """The kept checkpoints of epochs 0 and 1 as the bench writes them (through
    CheckpointPolicy, the model wrapped as on CUDA), of two different weight vectors."""
    torch.manual_seed(0)
    model = make_model(task, task.load())
    policy = ck.CheckpointPolicy(root, ck.KeepEpochs(every=1))
    for epoch in (0, 1):
        policy.maybe_save(OnDevice(model, autocast=False), task=task.name, method="sgd", seed=0,
                          epoch=epoch, epochs=2, lr=0.1)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(0.9)


def test_the_device_wrapper_is_unwrapped_by_type(tmp_path, tiny_mlp_task):
    """An OnDevice-wrapped model saves the wrapped model's keys; a model with its own ``.net``
    attribute (the MLP) saves its own keys (``net.1.weight``, not ``1.weight``)."""
    mlp = make_model(tiny_mlp_task, tiny_mlp_task.load())
    assert hasattr(mlp, "net") and any(k.startswith("net.") for k in mlp.state_dict())
    policy = ck.CheckpointPolicy(tmp_path, ck.KeepEpochs(every=1))
    for model, label in ((mlp, "bare"), (OnDevice(mlp, autocast=False), "wrapped")):
        path = policy.maybe_save(model, task="t", method=label, seed=0, epoch=0, epochs=1, lr=0.1)
        saved = ck.load_checkpoint(path)["model"]
        assert saved.keys() == mlp.state_dict().keys()
        assert all(torch.equal(saved[k], v) for k, v in mlp.state_dict().items())
