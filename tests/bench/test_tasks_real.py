"""The real-dataset tasks on tiny fixture files: every task builds, one epoch of each CPU task
runs, standardization uses the training split's statistics, augmentation touches training
batches only and is seeded, and a missing dataset is one line and exit status 2."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _real_data import write_all, write_fashion_mnist

from polyak.bench.data import fashion_mnist
from polyak.bench.models import get_model
from polyak.bench.store import Store
from polyak.bench.tasks import TASKS, get_task
from polyak.bench.train import make_model, task_splits, train_run, transforms
from polyak.cli import main

REAL = [name for name in TASKS if not name.startswith("mnist1d")]
TINY = {  # name -> (data_kwargs, batch_size, eval_batch_size)
    "fmnist-cnn": ({"val_size": 10, "subset": 30}, 16, 16),
    "fmnist-cnn-nobn": ({"val_size": 10, "subset": 30}, 16, 16),
    "kjv-lstm": ({"max_chars": None, "seq_len": 16}, 4, 2),
    "cifar10-resnet20": ({"val_size": 8}, 16, 16),
    "cifar100-vgg16": ({"val_size": 8}, 16, 16),
    "cifar100-wrn28-10": ({"val_size": 8}, 16, 16),
    "svhn-resnet20": ({"val_size": 8}, 16, 16),
}


@pytest.fixture(autouse=True)
def _fixture_data_only(monkeypatch, tmp_path):
    # Debian's dataset-fashion-mnist / bible-kjv may be installed: tests read fixtures only.
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIRS", ())
    monkeypatch.setenv("POLYAK_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("POLYAK_TEXT", raising=False)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_all(tmp_path_factory.mktemp("real-data"))


def tiny(name, root, **changes):
    data_kwargs, batch, eval_batch = TINY[name]
    task = get_task(name).replace(data_dir=str(root), data_kwargs=data_kwargs, batch_size=batch,
                                  eval_batch_size=eval_batch, epochs=1,
                                  tuned_path=root / "none.json")
    return task.replace(**changes)


def test_every_real_task_is_tiny_tested_and_documented():
    assert sorted(REAL) == sorted(TINY)
    for name in REAL:
        task = get_task(name)
        text = task.description
        assert "tuned lrs" in text or "tuned values" in text, name
        assert "val" in text or "train/val/test" in text, name
        assert task.device_hint == ("cpu" if name.startswith(("fmnist", "kjv")) else "gpu")
    # the BatchNorm-free variant is labelled outside the papers' claims, the others are not
    assert [n for n in REAL if get_task(n).outside_claims] == ["fmnist-cnn-nobn"]
    assert "OUTSIDE the papers' claims" in get_task("fmnist-cnn-nobn").description


@pytest.mark.parametrize("name", REAL)
def test_task_builds_and_shapes_agree(name, data_root):
    task = tiny(name, data_root)
    splits, mean, std = task_splits(task)
    torch.manual_seed(0)
    model = make_model(task, splits)
    x = splits.x_train[:2]
    if task.kind == "lm":
        out, _ = model(x)
        assert out.shape == (*x.shape, splits.num_classes) and x.dtype == torch.int64
        assert len(splits.x_train) % task.batch_size == 0
        return
    train_tf, eval_tf = transforms(task, mean, std, 0, x.device)
    assert mean.shape == (x.shape[1],) and len(splits.x_val) == TINY[name][0].get("val_size")
    out = model(train_tf(x))
    assert out.shape == (2, splits.num_classes)
    assert splits.num_classes == task.model_kwargs["num_classes"]


def test_standardization_uses_the_training_split_statistics(data_root):
    task = tiny("fmnist-cnn", data_root)
    splits, mean, std = task_splits(task)
    pixels = splits.x_train.double().numpy().ravel()
    assert abs(mean.item() - pixels.mean()) < 1e-6
    assert abs(std.item() - pixels.std()) < 1e-6  # population std, as torchvision users compute
    _, eval_tf = transforms(task, mean, std, 0, torch.device("cpu"))
    x = splits.x_val[:3]
    want = (x.double().numpy() - pixels.mean()) / pixels.std()
    assert np.allclose(eval_tf(x).numpy(), want, atol=1e-5)


def _reference_eval(task, seed, x, y, mean, std):
    """Loss/accuracy of the seeded initial small-cnn on standardized inputs, one by one."""
    torch.manual_seed(seed)
    model = get_model(task.model, **task.model_kwargs).eval()
    losses, hits = [], 0
    with torch.no_grad():
        for i in range(len(x)):
            logits = model((x[i:i + 1] - mean) / std)
            losses.append(F.cross_entropy(logits, y[i:i + 1]).item())
            hits += int(logits.argmax(1).item() == y[i].item())
    return sum(losses) / len(losses), hits / len(x)


def test_one_epoch_of_fmnist_cnn_and_augmentation_only_in_training(data_root):
    plain = tiny("fmnist-cnn-nobn", data_root)  # no BatchNorm: lr 0 leaves every weight as is
    augmented = plain.replace(crop=4, flip=True)
    splits, mean, std = task_splits(plain)
    a = train_run(plain, "sgd:lr=0", seed=2)
    b = train_run(augmented, "sgd:lr=0", seed=2)
    assert a.status == b.status == "complete" and len(a.records) == 1
    # lr 0 and no BatchNorm: evaluation sees the initial weights on standardized, unaugmented data
    for split in ("val", "test"):
        x, y = getattr(splits, f"x_{split}"), getattr(splits, f"y_{split}")
        loss, acc = _reference_eval(plain, 2, x, y, mean.item(), std.item())
        for run in (a, b):
            assert abs(run.records[0][f"{split}_loss"] - loss) < 1e-5
            assert run.records[0][f"{split}_acc"] == acc
    assert a.records[0]["train_loss"] != b.records[0]["train_loss"]  # training batches differ
    again = train_run(augmented, "sgd:lr=0", seed=2)
    other = train_run(augmented, "sgd:lr=0", seed=3)
    assert again.records[0]["train_loss"] == b.records[0]["train_loss"]
    assert other.records[0]["train_loss"] != b.records[0]["train_loss"]
    trained = train_run(plain, "sgdm", seed=0)
    assert trained.status == "complete" and math.isfinite(trained.records[0]["test_loss"])


def test_crops_and_flips_are_seeded_windows_of_the_padded_image(data_root):
    task = tiny("cifar10-resnet20", data_root)
    splits, mean, std = task_splits(task)
    x = splits.x_train[:6]
    outs = [transforms(task, mean, std, seed, x.device)[0](x) for seed in (5, 5, 6)]
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])
    padded = F.pad(x, (4, 4, 4, 4))
    for n in range(len(x)):  # each output: some 32x32 window, maybe mirrored, standardized
        candidates = [padded[n, :, i:i + 32, j:j + 32] for i in range(9) for j in range(9)]
        candidates += [c.flip(2) for c in candidates]
        got = outs[0][n] * std.view(-1, 1, 1) + mean.view(-1, 1, 1)
        assert min((got - c).abs().max().item() for c in candidates) < 1e-5


@pytest.mark.parametrize("name", ["cifar10-resnet20", "svhn-resnet20"])
def test_gpu_task_runs_one_epoch_on_the_cpu(name, data_root):
    result = train_run(tiny(name, data_root), "swa", seed=0)
    assert result.status == "complete" and len(result.records) == 1
    assert 0 <= result.records[0]["test_acc"] <= 1


def run_cli(capsys, *argv):
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    return info.value.code, capsys.readouterr().err


def test_missing_dataset_is_one_line_exit_2_and_the_store_is_unchanged(capsys, tmp_path):
    store = tmp_path / "runs.sqlite"
    Store(store).close()
    before = store.read_bytes()
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = run_cli(capsys, "bench", "--tasks", "cifar10-resnet20", "--data-dir", str(empty),
                        "--store", str(store), "--no-progress", "--device", "cpu")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "CIFAR-10 not found" in lines[0] and "polyak data download cifar10" in lines[0]
    assert str(empty) in lines[0]
    assert store.read_bytes() == before


def test_data_dir_must_be_a_directory(capsys, tmp_path):
    code, err = run_cli(capsys, "bench", "--tasks", "fmnist-cnn", "--data-dir",
                        str(tmp_path / "nowhere"), "--store", str(tmp_path / "s.sqlite"))
    assert code == 2 and "Invalid data-dir" in err and not (tmp_path / "s.sqlite").exists()


def test_bench_cli_runs_fmnist_from_data_dir(capsys, tmp_path, monkeypatch):
    write_fashion_mnist(tmp_path / "data", n_train=40, n_test=10)
    small = tiny("fmnist-cnn", tmp_path / "data").replace(data_dir=None)
    monkeypatch.setitem(TASKS, "fmnist-cnn", small)
    code, err = run_cli(capsys, "bench", "--tasks", "fmnist-cnn", "--methods", "sgd",
                        "--seeds", "1", "--epochs", "1", "--data-dir", str(tmp_path / "data"),
                        "--store", str(tmp_path / "s.sqlite"), "--out", str(tmp_path / "out"),
                        "--no-progress", "--device", "cpu")
    assert code == 0, err
    runs = Store(tmp_path / "s.sqlite").runs("fmnist-cnn")
    assert [r["status"] for r in runs] == ["complete"] and '"device"' not in runs[0]["config"]
