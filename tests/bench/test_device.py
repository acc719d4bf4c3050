"""Device choice, the CUDA wrapper, run identity per device, and (on a GPU) a CUDA epoch."""

import pytest
import torch
import torch.nn.functional as F
from _real_data import write_cifar10
from torch import nn

import polyak
from polyak.bench.device import OnDevice, prepare_model, resolve_device
from polyak.bench.executors import local
from polyak.bench.models.resnet import resnet20
from polyak.bench.runner import Job, run_grid
from polyak.bench.store import Store
from polyak.bench.tasks import get_task
from polyak.bench.train import train_run
from polyak.cli import main

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_resolve_device_without_cuda(no_cuda):
    assert resolve_device("auto") == "cpu" and resolve_device(" CPU ") == "cpu"
    for name in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device(name)
        assert resolve_device(name, check=False) == name  # reading a store, not training
    for name in ("gpu", "cuda:x", "tpu", 3):
        with pytest.raises(ValueError, match="Invalid device"):
            resolve_device(name)


def test_cli_device_cuda_without_cuda_exits_2(no_cuda, capsys, tmp_path):
    store = tmp_path / "runs.sqlite"
    with pytest.raises(SystemExit) as info:
        main(["bench", "--device", "cuda", "--store", str(store), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and "CUDA is not available" in err[0]
    assert not store.exists()


def test_cpu_models_are_left_as_they_are():
    model = nn.Linear(3, 2)
    assert prepare_model(model, "cpu") is model


class Spy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.seen = []

    def forward(self, x):
        self.seen.append(x)
        return self.conv(x).double()  # something that is not float32


def test_wrapper_feeds_channels_last_and_returns_float32():
    torch.manual_seed(0)
    net = Spy()
    wrapped = OnDevice(net, autocast=False, channels_last=True)
    x = torch.randn(2, 3, 6, 6)
    out = wrapped(x)
    assert net.seen[0].is_contiguous(memory_format=torch.channels_last)
    # No autocast: the net's output untouched up to the kernel. A channels-last convolution
    # runs another kernel than a contiguous one (another summation order): on some CPUs (AVX2)
    # they differ in the last bit (2.4e-7 observed), so compare with a few float32 ulps of the
    # output's scale, and exactly the dtype the net returns.
    reference = net.conv(x).double()
    assert out.dtype == reference.dtype
    torch.testing.assert_close(out, reference, rtol=0, atol=8 * torch.finfo(torch.float32).eps
                               * float(reference.abs().max()))
    assert list(wrapped.parameters()) == list(net.parameters())


def test_device_joins_the_run_identity_only_off_the_cpu():
    task = get_task("mnist1d-cnn")
    assert task.replace(device="cpu").config() == task.config()
    assert "device" not in task.config() and "data_dir" not in str(task.config())
    assert task.replace(data_dir="/somewhere").config() == task.config()
    gpu = task.replace(device="cuda").config()
    assert gpu["device"] == "cuda" and gpu["autocast"] is True
    assert task.replace(device="cuda:1").config() == gpu  # the GPU's index is no identity
    assert Job(task, "sgd", 0, 2).key != Job(task.replace(device="cuda"), "sgd", 0, 2).key


def test_cuda_jobs_default_to_one_worker(tiny_task, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(local, "run_inline", lambda store, todo, done: calls.append("inline"))
    monkeypatch.setattr(local, "run_pool", lambda store, todo, w, done: calls.append(w))
    gpu = tiny_task.replace(device="cuda")
    jobs = [Job(gpu, "sgd", seed, 1) for seed in range(3)]
    with Store(tmp_path / "runs.sqlite") as store:
        run_grid(store, jobs, show_progress=False)
        run_grid(store, [Job(tiny_task, "sgd", s, 1) for s in range(3)], workers=2,
                 show_progress=False)
    assert calls == ["inline", 2]


@needs_cuda
def test_cuda_epoch_runs_under_bf16_autocast(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYAK_CACHE", str(tmp_path / "cache"))
    write_cifar10(tmp_path)
    task = get_task("cifar10-resnet20").replace(
        data_dir=str(tmp_path), data_kwargs={"val_size": 8}, batch_size=16, eval_batch_size=16,
        epochs=2, device="cuda", tuned_path=tmp_path / "none.json")
    dtypes, original = [], nn.Linear.forward

    def spy(self, x):
        out = original(self, x)
        dtypes.append((out.dtype, out.device.type))
        return out

    monkeypatch.setattr(nn.Linear, "forward", spy)
    result = train_run(task, "swa", seed=0)
    assert result.status == "complete" and len(result.records) == 2
    assert set(dtypes) == {(torch.bfloat16, "cuda")}  # training, BN recalibration, evaluation


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors(value)


@needs_cuda
def test_cuda_model_is_channels_last_and_its_state_stays_float32():
    torch.manual_seed(0)
    model = prepare_model(resnet20(), "cuda")
    method = polyak.recipe("swa", model, epochs=2, steps_per_epoch=2)
    x, y = torch.rand(8, 3, 32, 32, device="cuda"), torch.randint(0, 10, (8,), device="cuda")
    for epoch in range(2):
        for _ in range(2):
            method.step(lambda: F.cross_entropy(model(x), y))
        method.end_epoch(epoch, bn_loader=[(x, y)])
    assert model(x).dtype == torch.float32
    assert model.net.conv.weight.is_contiguous(memory_format=torch.channels_last)
    floats = [t for t in _tensors(method.state_dict()) if t.is_floating_point()]
    floats += [p for p in model.parameters()]
    assert floats and all(t.dtype == torch.float32 for t in floats)
