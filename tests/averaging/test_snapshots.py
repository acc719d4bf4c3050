"""Snapshots during training: files and manifest, dtypes, atomic writes, errors that name the
file, the directory's ownership, and the Method's observer hook (when it calls, what it saves)."""

from __future__ import annotations

import io
import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from avg_helpers import bn_net, image_batches
from posthoc_helpers import STEPS, loss_of, net, train

import polyak
from polyak.averaging import (
    PhaseWise,
    SnapshotDir,
    SnapshotError,
    Snapshots,
    reconstruct,
    sigma_rel_to_gamma,
    uniform_weights,
)
from polyak.optim import SAM


def files(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ---------------------------------------------------------------------- what is written
def test_bf16_parameters_give_float32_files_and_a_self_describing_manifest(tmp_path):
    model = bn_net().to(torch.bfloat16)
    snaps = Snapshots(model, tmp_path, every=3, profiles=(0.05, 0.10), start_epoch=1,
                      meta={"task": "tiny", "seed": 3})
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    iterates = []
    for epoch in range(3):
        for x in image_batches(n=2, seed=epoch):
            opt.zero_grad()
            model(x.to(torch.bfloat16)).float().square().mean().backward()
            opt.step()
            snaps.step()
            iterates.append([p.detach().float() for p in model.parameters()])
        snaps.end_epoch(epoch)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert files(tmp_path) == ["manifest.json", "snapshot-000000.pt", "snapshot-000001.pt"]
    assert [(e["step"], e["epoch"]) for e in manifest["snapshots"]] == [(3, 1), (6, 2)]
    params = manifest["parameters"]
    assert [p["name"] for p in params] == [n for n, _ in model.named_parameters()]
    assert [p["shape"] for p in params] == [list(p.shape) for p in model.parameters()]
    assert {(p["dtype"], p["snapshot_dtype"]) for p in params} == {("bfloat16", "float32")}
    assert manifest["batchnorm"] == ["1", "5"] and manifest["meta"] == {"task": "tiny", "seed": 3}
    assert [p["sigma_rel"] for p in manifest["profiles"]] == [0.05, 0.10]
    assert manifest["every"] == 3 and manifest["start_epoch"] == 1
    last = torch.load(tmp_path / "snapshot-000001.pt", weights_only=True)
    assert all(t.dtype == torch.float32 for t in last["iterate"] + sum(last["profiles"], []))
    for got, want in zip(last["iterate"], iterates[5]):    # the bf16 values, exactly
        assert torch.equal(got, want)
    gamma = sigma_rel_to_gamma(0.10)      # the profile: the power EMA of the bf16 iterates
    ema = [torch.zeros_like(t, dtype=torch.float64) for t in iterates[0]]
    for t, it in enumerate(iterates, start=1):
        beta = (1 - 1 / t) ** (gamma + 1)
        ema = [beta * e + (1 - beta) * w.double() for e, w in zip(ema, it)]
    for got, want in zip(last["profiles"][1], ema):
        torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-6)
    data = sum(p.numel() for p in model.parameters()) * 4 * 3
    assert snaps.bytes_per_snapshot == data == manifest["bytes_per_snapshot"]
    n_tensors = 3 * len(params)
    assert 2 * data < SnapshotDir(tmp_path).disk_bytes() <= 2 * (data + 1536 + 256 * n_tensors)


def test_float64_is_kept_unless_float32_is_asked(tmp_path):
    model = net(torch.float64)
    for name, dtype, want in (("a", None, torch.float64), ("b", torch.float32, torch.float32)):
        snaps = Snapshots(model, tmp_path / name, dtype=dtype)
        snaps.end_epoch(0)
        payload = torch.load(tmp_path / name / "snapshot-000000.pt", weights_only=True)
        assert {t.dtype for t in payload["iterate"]} == {want}
        for got, p in zip(payload["iterate"], model.parameters()):
            assert torch.equal(got, p.detach().to(want))


@pytest.mark.parametrize("kwargs, message", [
    ({"every": 0}, "Invalid every: 0"),
    ({"profiles": (0.05, 0.5)}, "Invalid sigma_rel: 0.5"),
    ({"profiles": ()}, "Invalid profiles: ()"),
    ({"dtype": torch.float16}, "Invalid dtype: torch.float16"),
    ({"start_epoch": -1}, "Invalid start_epoch: -1"),
    ({"meta": {"f": print}}, "Invalid meta"),
])
def test_bad_arguments_are_named(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Snapshots(net(), tmp_path, **kwargs)


def test_profiles_without_steps_are_refused(tmp_path):
    snaps = Snapshots(net(), tmp_path, profiles=(0.1,))
    with pytest.raises(ValueError, match="told of no optimizer step"):
        snaps.end_epoch(0)


def test_a_failed_write_leaves_the_earlier_snapshots_and_no_partial_file(tmp_path, monkeypatch):
    model = net()
    snaps = Snapshots(model, tmp_path)
    snaps.end_epoch(0)
    before = (tmp_path / "snapshot-000000.pt").read_bytes()
    original = torch.save

    def dies_half_way(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        original(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="No space left"):
        snaps.end_epoch(1)
    assert files(tmp_path) == ["manifest.json", "snapshot-000000.pt"]
    assert (tmp_path / "snapshot-000000.pt").read_bytes() == before
    assert len(SnapshotDir(tmp_path)) == 1 and len(snaps.entries) == 1


# ---------------------------------------------------------------------- errors naming the file
def corrupted(tmp_path, how: str):
    model = net()
    train(model, [Snapshots(model, tmp_path / "run")], epochs=3)
    target = tmp_path / "run" / "snapshot-000001.pt"
    if how == "truncated":
        target.write_bytes(target.read_bytes()[:300])
    elif how == "foreign":
        torch.save(model.state_dict(), target)
    elif how == "other run":
        other = net()
        train(other, [Snapshots(other, tmp_path / "other")], epochs=3)
        shutil.copy(tmp_path / "other" / "snapshot-000001.pt", target)
    elif how == "missing":
        target.unlink()
    return SnapshotDir(tmp_path / "run"), target


@pytest.mark.parametrize("how, message", [
    ("truncated", "Invalid snapshot file {}: cannot be read"),
    ("foreign", "Invalid snapshot file {}: not a polyak snapshot"),
    ("other run", "Invalid snapshot file {}: it is snapshot 1 of run"),
    ("missing", "Missing snapshot file {}"),
])
def test_a_bad_snapshot_file_is_named(tmp_path, how, message):
    d, target = corrupted(tmp_path, how)
    with pytest.raises(SnapshotError) as err:
        reconstruct(d, uniform_weights(d))
    assert message.format(target) in str(err.value)
    reconstruct(d, uniform_weights(d, 2))    # the others are fine


def test_a_bad_directory_is_named(tmp_path):
    with pytest.raises(SnapshotError, match="has no manifest.json"):
        SnapshotDir(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(SnapshotError, match="not a polyak snapshot directory"):
        SnapshotDir(tmp_path)


# ---------------------------------------------------------------------- whose directory
def test_another_runs_snapshots_are_not_replaced_unless_asked(tmp_path):
    model = net()
    train(model, [Snapshots(model, tmp_path)], epochs=3)
    second = Snapshots(model, tmp_path)
    with pytest.raises(SnapshotError, match="holds 3 snapshots of another run"):
        second.end_epoch(0)
    assert len(SnapshotDir(tmp_path)) == 3
    third = Snapshots(model, tmp_path, overwrite=True)
    third.end_epoch(0)
    assert files(tmp_path) == ["manifest.json", "snapshot-000000.pt"]
    assert SnapshotDir(tmp_path).manifest["run_id"] == third.run_id


def test_a_checkpoint_is_not_resumed_into_a_directory_without_its_snapshots(tmp_path):
    model = net()
    snaps = Snapshots(model, tmp_path / "a")
    train(model, [snaps], epochs=2)
    elsewhere = Snapshots(model, tmp_path / "b")
    with pytest.raises(SnapshotError, match="the checkpoint's 2 snapshots .* are not in it"):
        elsewhere.load_state_dict(snaps.state_dict())
    (tmp_path / "a" / "snapshot-000000.pt").unlink()
    with pytest.raises(SnapshotError, match="Missing snapshot file .*snapshot-000000.pt"):
        Snapshots(model, tmp_path / "a").load_state_dict(snaps.state_dict())


# ---------------------------------------------------------------------- the Method's hook
def test_method_calls_observers_once_per_optimizer_step_taken(tmp_path):
    """SAM (two passes), 2 micro-batches per step, one step dropped for a NaN loss: the
    snapshots see each step taken once, and hold the weights after it."""
    model = net()
    snaps = Snapshots(model, tmp_path, every=1)
    method = polyak.Method(model, SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1),
                           accumulate=2, nonfinite="skip", observers=[snaps])
    after = []
    for i in range(12):
        poison = i in (4, 5)
        method.step(lambda i=i, poison=poison: loss_of(model, i) * (float("nan") if poison else 1))
        if i % 2:
            after.append([p.detach().clone() for p in model.parameters()])
    method.end_epoch(0)
    assert method.skipped_steps == 1 and method.steps == snaps.steps == 5
    d = SnapshotDir(tmp_path)
    assert [e.step for e in d.entries] == [1, 2, 3, 4, 5]
    kept = after[:2] + after[3:]      # the dropped step wrote nothing
    for i, want in enumerate(kept):
        for got, w in zip(d.load(i)["iterate"], want):
            assert torch.equal(got, w)


def test_observe_checks_the_observer_and_states_must_match(tmp_path):
    model = net()
    method = polyak.recipe("sgdm", model, epochs=2, steps_per_epoch=STEPS)
    with pytest.raises(ValueError, match="Invalid observer: .*missing step, end_epoch"):
        method.observe(object())
    plain = method.state_dict()
    snaps = method.observe(Snapshots(model, tmp_path))
    assert method.observers == [snaps]
    with pytest.raises(ValueError, match="it holds 0 observers' states, this Method has 1"):
        method.load_state_dict(plain)
    saved = io.BytesIO()
    torch.save(method.state_dict(), saved)       # loadable as the HF Trainer does it
    state = torch.load(io.BytesIO(saved.getvalue()), weights_only=True)
    assert state["observers"][0]["type"] == "Snapshots"


def test_a_retried_phase_end_rewrites_its_snapshot_with_the_raw_iterate(tmp_path):
    """PWA's phase end recalibrates BatchNorm; a loader that fails makes Method.end_epoch
    raise after the snapshot was written. The retry rewrites it: still the raw iterate."""
    model = bn_net()
    snaps = Snapshots(model, tmp_path)
    method = polyak.Method(model, torch.optim.SGD(model.parameters(), lr=0.1),
                           averaging=PhaseWise(model, phases=[2]), observers=[snaps])

    def failing():
        raise RuntimeError("loader died")
        yield

    for epoch in range(2):
        for x in image_batches(n=2, seed=epoch):
            method.step(lambda x=x: F.cross_entropy(model(x), torch.zeros(len(x), dtype=int)))
        raw = [p.detach().clone() for p in model.parameters()]
        if epoch == 1:
            with pytest.raises(RuntimeError, match="loader died"):
                method.end_epoch(epoch, bn_loader=failing())
        method.end_epoch(epoch, bn_loader=image_batches())
    d = SnapshotDir(tmp_path)
    assert [e.epoch for e in d.entries] == [0, 1]
    for got, want in zip(d.load(1)["iterate"], raw):
        assert torch.equal(got, want)
