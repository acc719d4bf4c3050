"""polyak.integrations.lightning against polyak's own loop, with the real lightning.Trainer."""

from __future__ import annotations

import re

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from _tiny import (
    BATCH,
    assert_states_close,
    batches,
    build,
    data,
    evaluate,
    net,
    own_loop,
    per_step_ema,
    sam_clipped,
)
from torch.utils.data import DataLoader, TensorDataset

import polyak
from polyak.integrations.lightning import PolyakCallback, method_optimizer

EPOCHS = 4


class Module(L.LightningModule):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.net = net(seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        loss, acc = evaluate(self, *batch)
        self.log("val_loss", loss)
        self.log("val_acc", acc)

    def configure_optimizers(self):
        return method_optimizer(self)


def loaders():
    x, y, xv, yv = data()
    train = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False)
    val = DataLoader(TensorDataset(xv, yv), batch_size=len(xv))
    return train, val, (x, y, xv, yv)


def trainer(*callbacks, **kwargs) -> L.Trainer:
    options = dict(max_epochs=EPOCHS, accelerator="cpu", devices=1, logger=False,
                   enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, num_sanity_val_steps=0)
    return L.Trainer(callbacks=list(callbacks), **{**options, **kwargs})


def fit(spec, accumulate: int = 1):
    train, val, (x, y, xv, yv) = loaders()
    module = Module()
    method = build(spec, module, EPOCHS, -(-len(train) // accumulate))
    trainer(PolyakCallback(method), accumulate_grad_batches=accumulate).fit(module, train, val)
    want, ref = own_loop(net(), spec, EPOCHS, batches(x, y), (xv, yv), accumulate)
    got = {k.removeprefix("net."): v for k, v in module.state_dict().items()}
    return got, want, method, ref


def test_pwa_matches_own_loop():
    got, want, method, ref = fit("pwa")
    assert_states_close(got, want)
    assert method.steps == ref.steps == EPOCHS * 4 and method.epochs_done == EPOCHS
    assert method.lr == pytest.approx(ref.lr)


@pytest.mark.parametrize("spec", [sam_clipped, "sgdm", "gadamx", "gadam-auto:patience=1",
                                  "tso-alra", "sam", "sam-avg", "schedule-free-adamw",
                                  "sgd+ema"])
def test_recipes_match_own_loop(spec):
    got, want, method, ref = fit(spec)
    assert_states_close(got, want)
    assert method.steps == ref.steps == EPOCHS * 4
    if method.averaging is not None:
        assert method.averaging.n_averaged == ref.averaging.n_averaged > 0
    if str(spec).startswith("gadam-auto"):
        assert method.averaging_trigger.fired_epoch == ref.averaging_trigger.fired_epoch


def test_per_step_schedule_and_accumulation_collect_once_per_optimizer_step():
    got, want, method, ref = fit(per_step_ema, accumulate=2)
    assert_states_close(got, want)
    # 4 micro-batches per epoch, 2 per optimizer step: 2 steps and 2 EMA collections per epoch
    assert method.steps == method.averaging.steps == method.averaging.collected == EPOCHS * 2
    assert method.lr == pytest.approx(0.1 / (1 + (EPOCHS * 2 - 1) / 2))  # t = steps before


@pytest.mark.parametrize("spec, epoch", [("pwa", 0), ("gadamx", 2), ("sam-avg", 2)])
def test_resume_from_lightning_checkpoint_is_exact(tmp_path, spec, epoch):
    from lightning.pytorch.callbacks import ModelCheckpoint

    train, val, _ = loaders()

    def run(seed: int, dirpath, **fit_kwargs):
        module = Module(seed)
        method = polyak.recipe(spec, module, EPOCHS, len(train))
        keep = ModelCheckpoint(dirpath=dirpath, filename="{epoch}", save_top_k=-1)
        trainer(PolyakCallback(method), keep, enable_checkpointing=True).fit(
            module, train, val, **fit_kwargs)
        return module.state_dict(), method

    full, full_method = run(0, tmp_path / "first")
    ckpt = tmp_path / "first" / f"epoch={epoch}.ckpt"
    saved = torch.load(ckpt, weights_only=False)["optimizer_states"][0]
    assert saved["epochs_done"] == epoch + 1 and saved["steps"] == (epoch + 1) * len(train)
    assert saved["averaging"]["n_averaged"] > 0       # the checkpoint holds a running average
    resumed, method = run(1, tmp_path / "second", ckpt_path=ckpt)   # other initial weights
    for key in full:
        assert torch.equal(resumed[key], full[key]), key
    assert method.steps == full_method.steps and method.epochs_done == EPOCHS
    for a, b in zip(method.averaging.average, full_method.averaging.average):
        assert torch.equal(a, b)


def test_resume_from_a_mid_epoch_checkpoint_warns_once(tmp_path):
    """Issue 21: Lightning restarts a plain DataLoader from its first batch, so a run resumed
    from a checkpoint saved inside an epoch is not the uninterrupted run. Restoring a Method
    from such a checkpoint warns once; an end-of-epoch checkpoint resumes silently."""
    import warnings

    from lightning.pytorch.callbacks import ModelCheckpoint

    train, val, _ = loaders()

    def run(seed, *callbacks, **fit_kwargs):
        module = Module(seed)
        method = polyak.recipe("pwa", module, EPOCHS, len(train))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer(PolyakCallback(method), *callbacks, enable_checkpointing=bool(callbacks),
                    default_root_dir=tmp_path).fit(module, train, val, **fit_kwargs)
        return [w for w in caught if "polyak" in str(w.message)]

    steps = ModelCheckpoint(dirpath=tmp_path, filename="{step}", every_n_train_steps=2,
                            save_top_k=-1)
    epochs = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1)
    assert run(0, steps, epochs) == []
    assert len(train) == 4  # step 6: 2 of the 4 batches of epoch 1
    mid = run(1, ckpt_path=tmp_path / "step=6.ckpt")
    assert [w.category for w in mid] == [UserWarning]
    assert "2 batch(es) into epoch 1" in str(mid[0].message)
    assert "end-of-epoch checkpoints" in str(mid[0].message)
    assert run(1, ckpt_path=tmp_path / "epoch=1.ckpt") == []


class ManualModule(Module):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False


class OwnOptimizerModule(Module):
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("module_cls, spec, kwargs, message", [
    (Module, "sam", {"accumulate_grad_batches": 2}, "SAM with accumulate_grad_batches > 1"),
    (Module, "pwa", {"max_epochs": EPOCHS + 1}, "built for 4 epochs but Trainer(max_epochs=5)"),
    (Module, "gadamx", {"max_epochs": EPOCHS - 1}, "built for 4 epochs but Trainer(max_epochs=3)"),
    (Module, "sgdm", {"max_epochs": EPOCHS + 2}, "built for 4 epochs but Trainer(max_epochs=6)"),
    (ManualModule, "sgdm", {}, "manual optimization is not supported"),
    (OwnOptimizerModule, "sgdm", {}, "configure_optimizers must return method_optimizer(self)"),
    (Module, "sgdm", {"strategy": "ddp_spawn", "devices": 2},
     "'ddp_spawn' or 'ddp_notebook' is not supported"),
])
def test_unsupported_fails_at_setup_with_one_line(module_cls, spec, kwargs, message):
    train, val, _ = loaders()
    module = module_cls()
    method = polyak.recipe(spec, module, EPOCHS, len(train))
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        trainer(PolyakCallback(method), **kwargs).fit(module, train, val)
    assert "\n" not in str(err.value)
    assert method.steps == 0


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["gadam-auto:patience=1", "pwa"])
def test_ddp_two_cpu_processes_keep_average_and_bn_consistent(tmp_path, spec):
    """Lightning's DDP strategy, 2 processes on gloo: every rank ends with the same average and
    the same BatchNorm statistics, those of the whole training set (each rank saw half)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from _tiny import free_port

    script = Path(__file__).parent / "lightning_ddp_run.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(free_port()), str(script), str(tmp_path), spec]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["steps"] == r1["steps"] == EPOCHS * 2        # 4 batches per epoch, 2 per rank
    assert r0["fired"] == r1["fired"]
    for a, b in zip(r0["average"], r1["average"]):
        assert torch.equal(a, b)
    for key in r0["state"]:
        assert torch.equal(r0["state"][key], r1["state"][key]), key
    if spec != "pwa":
        assert r0["n_averaged"] > 0
    # BatchNorm: the statistics of its inputs over all 32 training samples (closed form)
    state = r0["state"]
    x = data()[0]
    h = (x @ state["net.0.weight"].T + state["net.0.bias"]).double()
    assert torch.allclose(state["net.1.running_mean"].double(), h.mean(0), atol=1e-6)
    assert torch.allclose(state["net.1.running_var"].double(), h.var(0), atol=1e-5)


def test_every_recipe_knows_its_budget_and_a_hand_built_method_has_none():
    """Issue 21: PWA built for 6 epochs under Trainer(max_epochs=3) was refused, gadamx with
    the same mismatch accepted (only PhaseWise carried its budget). One rule: a Method built
    for E epochs runs under max_epochs=E; a Method built by hand without a budget any."""
    train, val, _ = loaders()
    for spec in polyak.recipes.PAPER_METHODS:
        assert polyak.recipe(spec, Module(), 6, len(train)).epochs == 6, spec
    module = Module()
    hand = polyak.Method(module, torch.optim.SGD(module.parameters(), lr=0.1))
    assert hand.epochs is None
    trainer(PolyakCallback(hand), max_epochs=1).fit(module, train, val)
    assert hand.steps == len(train)
    with pytest.raises(ValueError, match="Invalid epochs: 0"):
        polyak.Method(module, torch.optim.SGD(module.parameters(), lr=0.1), epochs=0)


def test_method_accumulation_is_refused_in_favour_of_the_trainers():
    train, val, _ = loaders()
    module = Module()
    method = polyak.Method(module, torch.optim.SGD(module.parameters(), lr=0.1), accumulate=2)
    with pytest.raises(ValueError, match=re.escape("Method(accumulate=2) is not supported here")):
        trainer(PolyakCallback(method)).fit(module, train, val)


def test_write_at_end_false_keeps_live_weights_and_validate_sees_reported():
    train, val, (x, y, xv, yv) = loaders()
    module = Module()
    method = polyak.recipe("gadamx", module, EPOCHS, len(train))
    fitted = trainer(PolyakCallback(method, write_at_end=False))
    fitted.fit(module, train, val)
    reported, ref = own_loop(net(), "gadamx", EPOCHS, batches(x, y), (xv, yv))
    assert_states_close(module.net.state_dict(), ref.model.state_dict())    # live weights
    live = {k: v.clone() for k, v in module.state_dict().items()}
    result = fitted.validate(module, val, verbose=False)[0]
    model = net()
    model.load_state_dict(reported)
    loss, acc = evaluate(model, xv, yv)
    assert result["val_loss"] == pytest.approx(loss, abs=1e-6)
    assert result["val_acc"] == pytest.approx(acc)
    for key, value in module.state_dict().items():       # the live weights are back
        assert torch.equal(value, live[key]), key
    assert abs(evaluate(module, xv, yv)[0] - loss) > 1e-4  # and they differ from the average


def test_snapshots_are_written_and_carried_by_lightning_checkpoints(tmp_path):
    """A Method with Snapshots attached: one snapshot every 2 optimizer steps, its state in the
    Lightning checkpoint; resuming from it rewrites the later snapshots exactly as they were."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from polyak.averaging import SnapshotDir, Snapshots

    train, val, _ = loaders()

    def run(seed: int, dirpath, **fit_kwargs) -> SnapshotDir:
        module = Module(seed)
        method = polyak.recipe("sgdm", module, EPOCHS, len(train))
        method.observe(Snapshots(module, tmp_path / "snapshots", every=2))
        keep = ModelCheckpoint(dirpath=dirpath, filename="{epoch}", save_top_k=-1)
        trainer(PolyakCallback(method), keep, enable_checkpointing=True).fit(
            module, train, val, **fit_kwargs)
        return SnapshotDir(tmp_path / "snapshots")

    full = run(0, tmp_path / "first")
    assert [(e.step, e.epoch) for e in full.entries] == [(2 * (i + 1), i // 2) for i in range(8)]
    iterates = [full.load(i)["iterate"] for i in range(len(full))]
    ckpt = tmp_path / "first" / "epoch=1.ckpt"
    saved = torch.load(ckpt, weights_only=False)["optimizer_states"][0]["observers"][0]
    assert saved["steps"] == 8 and saved["entries"] == [[i, 2 * (i + 1), i // 2] for i in range(4)]
    resumed = run(1, tmp_path / "second", ckpt_path=ckpt)   # other initial weights
    assert resumed.entries == full.entries
    for i, want in enumerate(iterates):
        for got, w in zip(resumed.load(i)["iterate"], want):
            assert torch.equal(got, w)
