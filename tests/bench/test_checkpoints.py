"""Run checkpoints for the analysis tools, and `polyak stability` over them."""

import re

import pytest
import torch
from torch import nn
from torch.func import functional_call

from polyak.bench import checkpoints as ck
from polyak.bench.models import get_model


@pytest.mark.parametrize("text, kept", [
    ("epochs=0,3", {0, 3}), ("every=2", {0, 1, 3, 4}), ("all", {0, 1, 2, 3, 4}),
])
def test_keep_epochs_parse_and_choice(text, kept):
    keep = ck.KeepEpochs.parse(text)
    assert {e for e in range(5) if keep.wants(e, 5)} == kept


@pytest.mark.parametrize("text", ["epochs=", "epochs=-1", "every=0", "every=x", "some", ""])
def test_keep_epochs_rejects_bad_specs(text):
    with pytest.raises(ValueError, match="keep-checkpoints"):
        ck.KeepEpochs.parse(text)


def test_save_load_round_trip_is_atomic_and_weights_only(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    model(torch.randn(8, 3))  # non-trivial BN buffers
    directory = ck.checkpoint_dir(tmp_path, "task", "gadamx:lr=0.1", 2)
    for epoch in (10, 2):
        ck.save_checkpoint(directory, model, epoch=epoch, lr=0.05, meta={"method": "gadamx"})
    assert [p.name for p in ck.list_checkpoints(directory)] == ["epoch2.pt", "epoch10.pt"]
    assert not [p for p in directory.iterdir() if p.name.startswith(".")]
    data = ck.load_checkpoint(directory / "epoch10.pt")
    assert data["epoch"] == 10 and data["lr"] == 0.05 and data["method"] == "gadamx"
    for key, value in model.state_dict().items():
        assert torch.equal(data["model"][key], value)


def test_unreadable_or_unsafe_checkpoints_are_refused(tmp_path):
    truncated = tmp_path / "epoch0.pt"
    torch.save({"model": {"w": torch.ones(100)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:50])
    with pytest.raises(ValueError, match="Cannot read checkpoint"):
        ck.load_checkpoint(truncated)
    unsafe = tmp_path / "epoch1.pt"
    torch.save({"model": {}, "obj": ck.KeepEpochs(every=1)}, unsafe)  # needs unpickling code
    with pytest.raises(ValueError, match="Cannot read checkpoint"):
        ck.load_checkpoint(unsafe)
    with pytest.raises(FileNotFoundError):
        ck.list_checkpoints(tmp_path / "missing")


def _explicit_lambda_max(model, x, y):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()

    def loss(theta):
        params, i = {}, 0
        for name, shape in zip(names, shapes):
            params[name] = theta[i:i + shape.numel()].reshape(shape)
            i += shape.numel()
        return nn.functional.cross_entropy(functional_call(model, params, (x.double(),)), y)

    model.double()
    try:
        hessian = torch.autograd.functional.hessian(loss, flat)
    finally:
        model.float()
    return torch.linalg.eigvalsh(hessian)[-1].item()


def test_stability_over_a_runs_checkpoints(tmp_path, tiny_mlp_task, monkeypatch, capsys):
    import polyak.bench.tasks as tasks
    import polyak.cli.analysis  # noqa: F401  (registers the command)
    from polyak.cli import main

    task = tiny_mlp_task.replace(model_kwargs={"hidden": 8})
    monkeypatch.setattr(tasks, "get_task", lambda name: task)
    torch.manual_seed(0)
    model = get_model(task.model, **task.model_kwargs)
    ck.save_checkpoint(tmp_path, model, epoch=0, lr=0.5, meta={})
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.7)
    ck.save_checkpoint(tmp_path, model, epoch=3, lr=0.5, meta={})
    splits = task.load()
    x, y = splits.x_train[:64], splits.y_train[:64]
    expected = _explicit_lambda_max(model, x, y)

    with pytest.raises(SystemExit) as exit_info:
        main(["stability", "--task", "t", "--checkpoints", str(tmp_path), "--batches", "1",
              "--batch-size", "64", "--tol", "1e-7", "--max-iter", "500"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    rows = {m.group(1): float(m.group(2))
            for m in re.finditer(r"│ (init|epoch\d+)\s+│\s+([0-9.e+-]+)", out)}
    assert set(rows) == {"init", "epoch0", "epoch3"}
    assert rows["init"] == rows["epoch0"]  # epoch-0 checkpoint = the seeded initial model
    assert rows["epoch3"] == pytest.approx(expected, rel=1e-3)
    assert f"{0.5 * expected / 2:.3g}" in out  # lr x lambda/2 of the checkpointed lr


def test_bench_keeps_the_live_model_it_evaluated(tmp_path, tiny_task, monkeypatch, capsys):
    """A kept checkpoint, evaluated independently, gives the validation loss the run stored
    for that epoch (sgdm reports its live weights)."""
    import sqlite3

    import polyak.cli.bench  # noqa: F401
    from polyak.bench.tasks import TASKS
    from polyak.bench.train import evaluate
    from polyak.cli import main

    task = tiny_task.replace(name="tiny")
    monkeypatch.setitem(TASKS, "tiny", task)
    store, root = tmp_path / "runs.sqlite", tmp_path / "ckpt"
    with pytest.raises(SystemExit) as info:
        main(["bench", "--tasks", "tiny", "--methods", "sgdm", "--seeds", "1", "--workers", "1",
              "--store", str(store), "--out", str(tmp_path / "rep"), "--no-progress",
              "--keep-checkpoints", "epochs=1", "--checkpoint-dir", str(root)])
    assert info.value.code == 0, capsys.readouterr().err
    files = ck.list_checkpoints(ck.checkpoint_dir(root, "tiny", "sgdm", 0))
    assert [p.name for p in files] == ["epoch1.pt"]
    data = ck.load_checkpoint(files[0])
    assert (data["epoch"], data["method"], data["seed"]) == (1, "sgdm", 0)
    model = get_model(task.model, **task.model_kwargs)
    model.load_state_dict(data["model"])
    splits = task.load()
    val_loss, _ = evaluate(model, splits.x_val, splits.y_val, task.eval_batch_size)
    stored = sqlite3.connect(store).execute(
        "select m.val_loss, m.lr from metrics m join runs r on m.run_id = r.id "
        "where r.method = 'sgdm' and m.epoch = 1").fetchone()
    assert val_loss == pytest.approx(stored[0], rel=1e-6)
    assert data["lr"] == pytest.approx(stored[1])


def test_bad_keep_checkpoints_exits_2(tmp_path, tiny_task, monkeypatch, capsys):
    import polyak.cli.bench  # noqa: F401
    from polyak.bench.tasks import TASKS
    from polyak.cli import main

    monkeypatch.setitem(TASKS, "tiny", tiny_task.replace(name="tiny"))
    with pytest.raises(SystemExit) as info:
        main(["bench", "--tasks", "tiny", "--store", str(tmp_path / "s.sqlite"),
              "--keep-checkpoints", "epochs=x"])
    assert info.value.code == 2
    assert "keep-checkpoints" in capsys.readouterr().err
    assert not (tmp_path / "s.sqlite").exists()


def test_probe_command_over_a_runs_checkpoints(tmp_path, tiny_task, monkeypatch, capsys):
    """`polyak probe`: the segment's end point equals the last checkpoint evaluated with
    BatchNorm recalibrated by torch.optim.swa_utils.update_bn on the same training examples."""
    import polyak.bench.tasks as tasks
    import polyak.cli.analysis  # noqa: F401
    from polyak.cli import main

    monkeypatch.setattr(tasks, "get_task", lambda name: tiny_task)
    torch.manual_seed(0)
    model = get_model(tiny_task.model, **tiny_task.model_kwargs)
    splits = tiny_task.load()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for epoch in range(3):
        loss = nn.functional.cross_entropy(model(splits.x_train[:64]), splits.y_train[:64])
        opt.zero_grad()
        loss.backward()
        opt.step()
        ck.save_checkpoint(tmp_path / "run", model, epoch=epoch, lr=0.1, meta={})
    out_png = tmp_path / "probe.png"
    with pytest.raises(SystemExit) as info:
        main(["probe", "--task", "t", "--checkpoints", str(tmp_path / "run"), "--points", "3",
              "--examples", "200", "--batch-size", "100", "--out", str(out_png)])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    end = re.search(r"│\s+1\.00 │\s+([0-9.]+) │\s+([0-9.]+) │", out)
    reference = get_model(tiny_task.model, **tiny_task.model_kwargs)
    reference.load_state_dict(ck.load_checkpoint(tmp_path / "run" / "epoch2.pt")["model"])
    loader = [splits.x_train[:100], splits.x_train[100:200]]
    torch.optim.swa_utils.update_bn(loader, reference)
    reference.eval()
    with torch.no_grad():
        test_loss = nn.functional.cross_entropy(reference(splits.x_test[:200]),
                                                splits.y_test[:200]).item()
    assert float(end.group(2)) == pytest.approx(test_loss, abs=1e-4)
    assert "diversity of the 3 iterates" in out
