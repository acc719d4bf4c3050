"""polyak.integrations.hf against polyak's own loop, with the real transformers.Trainer."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from _tiny import BATCH, assert_states_close, build, data, evaluate, net, per_step_ema, sam_clipped
from torch import nn
from transformers import TrainingArguments

import polyak
from polyak.integrations.hf import PolyakTrainer

EPOCHS = 4


class Model(nn.Module):
    """A plain nn.Module as the Trainer wants it: keyword inputs, a dict with the loss."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.net = net(seed)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        logits = self.net(x)
        loss = None if labels is None else F.cross_entropy(logits, labels)
        return {"loss": loss, "logits": logits}


def dataset(x, y) -> list[dict]:
    return [{"x": xi, "labels": int(yi)} for xi, yi in zip(x, y)]


def accuracy(pred) -> dict:
    logits, labels = pred.predictions, pred.label_ids
    return {"accuracy": float((logits.argmax(-1) == labels).mean())}


def arguments(tmp_path, **kwargs) -> TrainingArguments:
    options = dict(output_dir=str(tmp_path), num_train_epochs=EPOCHS,
                   per_device_train_batch_size=BATCH, per_device_eval_batch_size=BATCH,
                   eval_strategy="epoch", save_strategy="no", logging_strategy="no",
                   report_to=[], max_grad_norm=0.0, use_cpu=True, seed=0,
                   dataloader_num_workers=0, disable_tqdm=True)
    return TrainingArguments(**{**options, **kwargs})


class Recording(PolyakTrainer):
    """Records the micro-batches the Trainer feeds, to replay them in polyak's own loop."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.fed.append((inputs["x"].clone(), inputs["labels"].clone()))
        return super().training_step(model, inputs, num_items_in_batch)


def hf_trainer(tmp_path, spec, model, accumulate=1, cls=Recording, **kwargs):
    x, y, xv, yv = data()
    steps = -(-len(x) // (BATCH * accumulate))
    method = build(spec, model, EPOCHS, steps)
    trainer = cls(model=model, args=arguments(tmp_path, gradient_accumulation_steps=accumulate,
                                              **kwargs),
                  train_dataset=dataset(x, y), eval_dataset=dataset(xv, yv),
                  compute_metrics=accuracy, method=method)
    trainer.fed = []
    return trainer, method


def replay(spec, fed, accumulate=1):
    """polyak's own loop on the batches the Trainer fed; validation as the Trainer does it."""
    x, y, xv, yv = data()
    model = net()
    method = build(spec, model, EPOCHS, len(fed) // EPOCHS // accumulate)
    bn = [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, len(x), BATCH)]
    per_epoch = len(fed) // EPOCHS
    for epoch in range(EPOCHS):
        mine = fed[epoch * per_epoch:(epoch + 1) * per_epoch]
        for i in range(0, len(mine), accumulate):
            group = mine[i:i + accumulate]
            method.step(lambda g=group: sum(F.cross_entropy(model(a), b) for a, b in g) / len(g))
        with method.eval_weights(bn_loader=bn):
            losses = [evaluate(model, xv[i:i + BATCH], yv[i:i + BATCH])[0]
                      for i in range(0, len(xv), BATCH)]
            acc = evaluate(model, xv, yv)[1]
        method.end_epoch(epoch, val_loss=sum(losses) / len(losses), val_acc=acc, bn_loader=bn)
    with method.eval_weights(bn_loader=bn):
        return {k: v.clone() for k, v in model.state_dict().items()}, method


def train_and_replay(tmp_path, spec, accumulate=1):
    model = Model()
    trainer, method = hf_trainer(tmp_path, spec, model, accumulate)
    trainer.train()
    want, ref = replay(spec, trainer.fed, accumulate)
    got = {k.removeprefix("net."): v for k, v in model.state_dict().items()}
    return got, want, method, ref


SLOW = pytest.mark.slow   # each starts a Trainer (~1-2 s); the default run keeps one per kind


@pytest.mark.parametrize("spec", ["pwa", "sam", *(pytest.param(s, marks=SLOW) for s in (
    sam_clipped, "sgdm", "gadamx", "gadam-auto:patience=1", "tso-alra", "sam-avg",
    "schedule-free-adamw", "sgd+ema"))])
def test_recipes_match_own_loop(tmp_path, spec):
    got, want, method, ref = train_and_replay(tmp_path, spec)
    assert_states_close(got, want)
    assert method.steps == ref.steps == EPOCHS * 4 and method.epochs_done == EPOCHS
    if method.averaging is not None and spec != "pwa":
        assert method.averaging.n_averaged == ref.averaging.n_averaged > 0
    if str(spec).startswith("gadam-auto"):
        assert method.averaging_trigger.fired_epoch == ref.averaging_trigger.fired_epoch


def test_per_step_schedule_and_accumulation_collect_once_per_optimizer_step(tmp_path):
    got, want, method, ref = train_and_replay(tmp_path, per_step_ema, accumulate=2)
    assert_states_close(got, want)
    assert method.steps == method.averaging.steps == method.averaging.collected == EPOCHS * 2


def test_evaluate_and_save_model_use_the_reported_weights(tmp_path):
    from safetensors.torch import load_file

    model = Model()
    trainer, method = hf_trainer(tmp_path, "gadamx", model)
    trainer.write_at_end = False
    trainer.train()
    live = {k: v.clone() for k, v in model.state_dict().items()}
    metrics = trainer.evaluate()
    trainer.save_model(str(tmp_path / "final"))
    saved = load_file(str(tmp_path / "final" / "model.safetensors"))
    x, y, xv, yv = data()
    with method.eval_weights(bn_loader=[(x[i:i + BATCH],) for i in range(0, len(x), BATCH)]):
        want = {f"net.{k}": v.clone() for k, v in model.net.state_dict().items()}
        losses = [evaluate(model.net, xv[i:i + BATCH], yv[i:i + BATCH])[0]
                  for i in range(0, len(xv), BATCH)]
    assert_states_close(saved, want)
    assert metrics["eval_loss"] == pytest.approx(sum(losses) / len(losses), abs=1e-6)
    assert abs(evaluate(model.net, xv, yv)[0] - metrics["eval_loss"]) > 1e-4   # not the live
    assert not torch.equal(saved["net.0.weight"], live["net.0.weight"])
    for key, value in model.state_dict().items():   # the live weights are back
        assert torch.equal(value, live[key])


@pytest.mark.parametrize("spec, checkpoint", [
    ("gadamx", 12), pytest.param("pwa", 4, marks=SLOW), pytest.param("sam-avg", 12, marks=SLOW)])
def test_resume_from_hf_checkpoint_is_exact(tmp_path, spec, checkpoint):
    full_model = Model()
    full, full_method = hf_trainer(tmp_path / "a", spec, full_model, cls=PolyakTrainer,
                                   save_strategy="epoch")
    full.train()
    ckpt = tmp_path / "a" / f"checkpoint-{checkpoint}"
    saved = torch.load(ckpt / "optimizer.pt", weights_only=True)
    assert saved["steps"] == checkpoint and saved["averaging"]["n_averaged"] > 0
    model = Model(seed=1)                                 # other initial weights
    resumed, method = hf_trainer(tmp_path / "b", spec, model, cls=PolyakTrainer,
                                 save_strategy="epoch")
    resumed.train(resume_from_checkpoint=str(ckpt))
    for key, value in full_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert method.steps == full_method.steps and method.epochs_done == EPOCHS
    for a, b in zip(method.averaging.average, full_method.averaging.average):
        assert torch.equal(a, b)


@pytest.mark.parametrize("spec, kwargs, message", [
    ("sam", {"gradient_accumulation_steps": 2}, "SAM with gradient_accumulation_steps > 1"),
    ("pwa", {"num_train_epochs": EPOCHS + 1}, "built for 4 epochs but num_train_epochs=5"),
    ("gadamx", {"num_train_epochs": EPOCHS + 1}, "built for 4 epochs but num_train_epochs=5"),
    ("sgdm", {"load_best_model_at_end": True, "save_strategy": "epoch"},
     "load_best_model_at_end is not supported"),
    ("sgdm", {"warmup_steps": 2}, "warm-up in TrainingArguments is not supported"),
    ("gadam-auto", {"eval_strategy": "no"}, "use eval_strategy='epoch'"),
])
def test_unsupported_fails_at_construction_with_one_line(tmp_path, spec, kwargs, message):
    x, y, xv, yv = data()
    model = Model()
    method = polyak.recipe(spec, model, EPOCHS, 4)
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        PolyakTrainer(model=model, args=arguments(tmp_path, **kwargs),
                      train_dataset=dataset(x, y), eval_dataset=dataset(xv, yv), method=method)
    assert "\n" not in str(err.value)


def test_snapshots_follow_every_sam_step_and_are_carried_by_hf_checkpoints(tmp_path):
    """SAM under the Trainer (its two passes in polyak's sam_step): one snapshot per optimizer
    step, the snapshot state in the checkpoint's optimizer.pt (loaded with weights_only)."""
    from polyak.averaging import SnapshotDir, Snapshots

    model = Model()
    trainer, method = hf_trainer(tmp_path / "run", "sam", model, cls=PolyakTrainer,
                                 save_strategy="epoch")
    method.observe(Snapshots(model, tmp_path / "snapshots", every=1))
    trainer.train()
    d = SnapshotDir(tmp_path / "snapshots")
    assert method.steps == EPOCHS * 4
    assert [(e.step, e.epoch) for e in d.entries] == [(s, (s - 1) // 4)
                                                      for s in range(1, EPOCHS * 4 + 1)]
    saved = torch.load(tmp_path / "run" / "checkpoint-8" / "optimizer.pt", weights_only=True)
    assert saved["observers"][0]["steps"] == 8 and len(saved["observers"][0]["entries"]) == 8
    for got, want in zip(d.load(len(d) - 1)["iterate"], model.parameters()):
        assert torch.equal(got, want.detach())   # write_at_end: SAM reports the live weights
