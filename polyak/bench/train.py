"""The training loop of one benchmark run: a pure function of (task, method spec, seed, epochs).

Each epoch:
1. shuffle the training set with a ``torch.Generator`` seeded from the run seed and take every
   batch once (the last one may be smaller), calling ``method.step(closure)``; train loss and
   accuracy are the means over the epoch's clean forward passes (the first call of the closure
   in each step, so SAM's perturbed pass is not counted);
2. evaluate the live weights on the validation set when the method reads it (the feedback of
   recipes such as gadam-auto or a TSO-ALRA plateau switch: ``method.reads_val_metrics``) and
   call ``method.end_epoch(epoch, val_loss, val_acc, bn_loader)``;
3. at 10 evenly spaced epochs (:func:`curve_epochs`: 10 %, 20 %, ..., 100 % of the budget, the
   points the report's claims read), the last one and an early stop: evaluate validation and
   test loss (NLL) and accuracy of the weights the method reports, under
   ``method.eval_weights(bn_loader=...)`` (BatchNorm recalibrated on the whole training set);
   when those are the live weights, unchanged since step 2, step 2's validation score is reused;
4. record train/val/test metrics (val/test ``None`` in the epochs between the curve points),
   the epoch's learning rate and the cumulative wall time.

A non-finite loss ends the run as "diverged" with the epochs recorded so far, and so does an
exploded one (:func:`polyak.bench.divergence.exploded`): an epoch's mean training loss, or the
reported weights' validation or test NLL, above ``100 x log(num_classes)``. The seed sets
torch's, numpy's and Python's global RNGs (the model's initial weights come from it) and the
batch-order generator; with one thread the run is reproducible bit for bit across processes.

Image tasks with ``standardize`` subtract the per-channel mean and divide by the per-channel
standard deviation of the training split (:func:`~polyak.bench.data.augment.channel_stats`);
with ``crop``/``flip`` each training batch is cropped and flipped on the device it lives on by
:class:`~polyak.bench.data.augment.Augment`, from a second generator seeded from the run seed
(so the batch order does not depend on the augmentation). Validation, test and the BatchNorm
recalibration batches are only standardized: the recalibration sees the training images as the
test images look (the SWA code recalibrates on augmented batches; we keep the pass
deterministic). Character language models (``kind="lm"``) train by truncated BPTT
(:mod:`polyak.bench.lm`): chunks in text order, hidden state carried, no BatchNorm
(``bn_loader=None``).

A user's task (:mod:`polyak.bench.user_tasks`) brings its own model factory (called with the
run's seed, after the seeding), loss (the batch mean; evaluation weights each batch by its
size), augmentation (``augment(x, generator)`` on training batches, the generator seeded like
the image tasks') and BatchNorm recalibration inputs. With its metric ``"loss"`` no accuracy is
computed (``None`` in the records), and a trigger that watches the validation accuracy (mode
``"max"``: GadamAuto's) watches the negated validation loss: the same plateau as the loss's.

On CUDA (``task.device``) the splits are moved to the GPU once per process, and the model is
wrapped by :func:`~polyak.bench.device.prepare_model` (bf16 autocast when ``task.autocast``,
channels-last); the batch order is still drawn on the CPU. GPU runs are seeded the same way but
are not reproducible bit for bit (cuDNN picks its kernels).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import polyak
from polyak.averaging import NonFiniteWeights
from polyak.bench import ddp, protocols
from polyak.bench.checkpoints import CheckpointPolicy
from polyak.bench.data import Splits
from polyak.bench.data.augment import Augment, channel_stats
from polyak.bench.device import is_cuda, prepare_model
from polyak.bench.divergence import exploded
from polyak.bench.lm import evaluate_lm, train_epoch_lm
from polyak.bench.models import get_model
from polyak.bench.resume import RunCheckpoint, capture_rngs, restore_rngs
from polyak.bench.tasks import Task
from polyak.distributed import is_distributed, rank_slice
from polyak.method import NonFiniteError

__all__ = ["Batches", "RunResult", "train_run", "build_method", "resolve_overrides",
           "evaluate", "make_model", "steps_per_epoch", "task_splits", "transforms",
           "train_epoch", "run_config", "run_identity", "machine"]

CURVE_POINTS = 10  # epochs of a run at which the reported weights are evaluated (curve_epochs)
_AUGMENT_SEED = 0x5EED  # the augmentation generator is seeded with seed + this
_DEVICE_CACHE: dict[tuple[int, str], tuple[Splits, torch.Tensor, torch.Tensor]] = {}
Transform = Callable[[torch.Tensor], torch.Tensor]
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Batches:
    """A re-iterable over ``(x, y)`` batches in a fixed order (the ``bn_loader`` of a run);
    ``transform`` (e.g. standardization) is applied to each input batch."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                 transform: Transform | None = None) -> None:
        self.x, self.y, self.batch_size, self.transform = x, y, batch_size, transform

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, len(self.x), self.batch_size):
            xb = self.x[i:i + self.batch_size]
            yield (xb if self.transform is None else self.transform(xb)), \
                self.y[i:i + self.batch_size]


@dataclass
class RunResult:
    """What a run produced: ``status`` is "complete" or "diverged"; one dict per epoch."""

    status: str
    records: list[dict[str, float]] = field(default_factory=list)
    error: str | None = None
    wall_time: float = 0.0
    resumed_from: list[int] = field(default_factory=list)  # first epoch of each continuation
    machines: list[str] = field(default_factory=list)  # "torch <version> <CPU capability>"
    posthoc: list[dict[str, Any]] = field(default_factory=list)  # polyak.bench.posthoc's rows


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def resolve_overrides(task: Task, spec: str, epochs: int | None = None) -> dict[str, Any]:
    """Keyword overrides for the spec's recipe: the task's tuned values of the method (an arm
    of a paper protocol or a recipe; or, when the file has none and its plan tunes nothing of
    its own, the values of the method it shares its tuning with, as the plan takes them), except
    the keys the spec sets itself; epoch-counted values rescaled to ``epochs``."""
    rec = protocols.parse(spec)
    tuned = task.tuned_values(epochs)
    values = tuned.get(rec.name)
    plan = protocols.plan(rec.name)
    if values is None and plan.shares in tuned and not plan.stages:
        values = plan.start(tuned[plan.shares])
    return {k: v for k, v in (values or {}).items()
            if k not in rec.overrides and k in rec.defaults}


def build_method(task: Task, spec: str, model: nn.Module, epochs: int, steps_per_epoch: int
                 ) -> Any:
    """The spec's Method (an arm or a recipe, :func:`polyak.bench.protocols.parse`) with the
    task's tuned values applied."""
    return polyak.recipe(protocols.parse(spec), model, epochs=epochs,
                         steps_per_epoch=steps_per_epoch, **resolve_overrides(task, spec, epochs))


def make_model(task: Task, splits: Splits, seed: int = 0) -> nn.Module:
    """A fresh model of the task (a language model gets ``vocab_size`` from the data; a user's
    task's factory gets ``seed``)."""
    if task.user is not None:
        return task.user.load().task.model(seed)
    kwargs = dict(task.model_kwargs)
    if task.kind == "lm":
        kwargs.setdefault("vocab_size", splits.num_classes)
    return get_model(task.model, **kwargs)


def steps_per_epoch(task: Task, splits: Splits) -> int:
    """Optimizer steps in one epoch (the last batch may be smaller; LM: the chunks)."""
    return math.ceil(len(splits.x_train) / task.batch_size)


def task_splits(task: Task) -> tuple[Splits, torch.Tensor | None, torch.Tensor | None]:
    """The task's splits on ``task.device`` (moved once per process) and, for a standardized
    task, the per-channel mean and std of its training split."""
    splits = task.load()
    key = (id(splits), task.device)
    if key not in _DEVICE_CACHE:
        if is_cuda(task.device):
            fields = {f: getattr(splits, f).to(task.device) for f in
                      ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")}
            splits = Splits(**fields, num_classes=splits.num_classes)
        stats = channel_stats(splits.x_train) if task.standardize else (None, None)
        _DEVICE_CACHE.clear()  # one dataset per process on the device at a time
        _DEVICE_CACHE[key] = (splits, *stats)
    return _DEVICE_CACHE[key]


def transforms(task: Task, mean: torch.Tensor | None, std: torch.Tensor | None, seed: int,
               device: torch.device) -> tuple[Any, Transform | None]:
    """(training transform, evaluation transform) of an image task, ``None`` where the inputs
    are used as they are. The training one crops/flips with its own generator on ``device``,
    seeded with ``seed + 0x5EED``, then standardizes; the evaluation one only standardizes.
    A user's task: its ``augment`` with that generator, and no evaluation transform."""
    augment_fn = task.user.load().task.augment if task.user is not None else None
    if augment_fn is not None:
        user_gen = torch.Generator(device=device).manual_seed(seed + _AUGMENT_SEED)

        def user_tf(x: torch.Tensor) -> torch.Tensor:
            return augment_fn(x, user_gen)

        user_tf.generator = user_gen  # type: ignore[attr-defined]
        return user_tf, None
    if mean is None and not (task.crop or task.flip):
        return None, None
    if mean is None:  # crop/flip without standardization: mean 0, std 1 (broadcast)
        mean, std = torch.zeros(1), torch.ones(1)
    augment = Augment(mean, std, padding=task.crop, flip=task.flip)
    eval_tf = augment.eval if task.standardize else None
    if not (task.crop or task.flip):
        return eval_tf, eval_tf
    generator = torch.Generator(device=device).manual_seed(seed + _AUGMENT_SEED)

    def train_tf(x: torch.Tensor) -> torch.Tensor:
        return augment(x, generator)

    train_tf.generator = generator  # type: ignore[attr-defined]  (saved by a resume checkpoint)
    return train_tf, eval_tf


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
             transform: Transform | None = None, loss: Loss | None = None,
             accuracy: bool = True) -> tuple[float, float | None]:
    """Mean NLL and accuracy of ``model`` (in eval mode) on ``(x, y)`` (each input batch passed
    through ``transform`` first when given); with ``loss`` (a batch-mean loss) the mean of
    that loss over the examples instead of the NLL, and accuracy ``None`` unless
    ``accuracy``."""
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    total = len(x)
    if is_distributed():  # each rank its share; the sums all-reduced below
        part = rank_slice(len(x))
        x, y = x[part], y[part]
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        out = model(xb if transform is None else transform(xb))
        target = y[i:i + batch_size]
        if loss is None:
            loss_sum += F.cross_entropy(out, target, reduction="sum").item()
        else:
            loss_sum += loss(out, target).item() * len(target)
        if accuracy:
            correct += int((out.argmax(1) == target).sum())
    model.train(was_training)
    if is_distributed():
        loss_sum, correct = ddp.global_sums(loss_sum, correct)
    return loss_sum / total, (correct / total if accuracy else None)


def train_epoch(method: Any, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 batch_size: int, generator: torch.Generator,
                 transform: Transform | None = None, loss_fn: Loss | None = None,
                 accuracy: bool = True) -> tuple[float, float | None]:
    """One epoch in the order ``generator`` draws (on the CPU); each batch through ``transform``
    (the augmentation) when given; (mean loss, accuracy) of the clean forward passes. The loss
    is cross-entropy, or ``loss_fn`` (a batch mean) when given; accuracy ``None`` unless
    ``accuracy``.

    Under DDP (``model`` a ``DistributedDataParallel``) each rank takes its part of every global
    batch and scales its loss (:func:`polyak.bench.ddp.local_part`); the epoch's sums are
    all-reduced."""
    model.train()
    order = torch.randperm(len(x), generator=generator).to(x.device)
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    for i in range(0, len(x), batch_size):
        idx, scale = ddp.local_part(order[i:i + batch_size])
        xb, yb = x[idx], y[idx]
        if transform is not None:
            xb = transform(xb)
        first = [True]

        def closure(xb: torch.Tensor = xb, yb: torch.Tensor = yb, first: list = first,
                    scale: float = scale) -> torch.Tensor:
            out = model(xb)
            loss = F.cross_entropy(out, yb) if loss_fn is None else loss_fn(out, yb)
            if first[0]:
                first[0] = False
                loss_sum.add_(loss.detach() * len(yb))
                if accuracy:
                    correct.add_((out.detach().argmax(1) == yb).sum())
            return loss if scale == 1.0 else loss * scale

        method.step(closure)
    if is_distributed():
        total, hits = ddp.global_sums(loss_sum.item(), correct.item())
        return total / len(x), (hits / len(x) if accuracy else None)
    return loss_sum.item() / len(x), (correct.item() / len(x) if accuracy else None)


def _loop(task: Task, splits: Splits, model: nn.Module, method: Any, seed: int,
          mean: torch.Tensor | None, std: torch.Tensor | None
          ) -> tuple[Any, Any, Any, dict[str, torch.Generator]]:
    """(one training epoch, evaluation on (x, y), the bn_loader, the run's own generators by
    name) for the task's kind; under
    torch.distributed the training passes go through DDP and each rank recalibrates BatchNorm
    on its share of the batches (:mod:`polyak.bench.ddp`)."""
    size, eval_size = task.batch_size, task.eval_batch_size
    if task.kind == "lm" and is_distributed():
        raise ValueError(f"Invalid task for torchrun: {task.name} is a language model "
                         "(data-parallel runs support the image and MNIST-1D tasks)")
    net = ddp.wrap(model)
    if task.kind == "lm":
        return (lambda: train_epoch_lm(method, model, splits.x_train, splits.y_train, size),
                lambda x, y: evaluate_lm(model, x, y, eval_size), None, {})
    order = torch.Generator().manual_seed(seed)  # the batch order, drawn on the CPU
    train_tf, eval_tf = transforms(task, mean, std, seed, splits.x_train.device)
    bn_loader = _bn_batches(task, splits, size, eval_tf)
    generators = {"order": order}
    if train_tf is not None and getattr(train_tf, "generator", None) is not None:
        generators["augment"] = train_tf.generator
    loss_fn = task.user.load().task.loss if task.user is not None else None
    accuracy = task.metric == "accuracy"
    return (lambda: train_epoch(method, net, splits.x_train, splits.y_train, size, order,
                                 train_tf, loss_fn, accuracy),
            lambda x, y: evaluate(model, x, y, eval_size, eval_tf, loss_fn, accuracy),
            ddp.RankBatches(bn_loader) if is_distributed() else bn_loader, generators)


def _bn_batches(task: Task, splits: Splits, size: int, transform: Transform | None) -> Batches:
    """The BatchNorm recalibration batches: the training inputs, or a user task's
    ``bn_data`` (with placeholder targets: recalibration reads only the inputs)."""
    bn_data = task.user.load().task.bn_data if task.user is not None else None
    if bn_data is None:
        return Batches(splits.x_train, splits.y_train, size, transform)
    bn_data = bn_data.to(splits.x_train.device)
    return Batches(bn_data, torch.zeros(len(bn_data), dtype=torch.long), size, transform)


def run_config(task: Task, spec: str, epochs: int | None = None) -> str:
    """The canonical JSON of a run's config: the task's and the tuned overrides the bench
    applies at ``epochs`` (part of the run's identity in the store and in its checkpoints)."""
    config = {"task": task.config(), "overrides": resolve_overrides(task, spec, epochs),
              "recipe": recipe_config(spec)}
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def recipe_config(spec: str) -> dict[str, Any]:
    """What a recipe runs with, as JSON: base, averaging and every hyper-parameter's default or
    override (a budget rule by its kind and numbers, without its provenance text), so a run
    stored before a default changed is not taken for one made with the new default."""
    rec = protocols.parse(spec)

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {"rule": type(value).__name__,
                    **{f.name: plain(getattr(value, f.name))
                       for f in dataclasses.fields(value) if f.name != "source"}}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)

    values = {k: plain(v) for k, v in {**rec.defaults, **rec.overrides}.items()}
    return {"base": rec.base, "averaging": rec.averaging, "hyperparameters": values}


def run_identity(task: Task, spec: str, seed: int, epochs: int) -> dict[str, Any]:
    """What a resume checkpoint must match: task, spec, seed, epochs, config hash, version."""
    from polyak.bench.store import config_hash

    return {"task": task.name, "method": spec, "seed": int(seed), "epochs": int(epochs),
            "config_hash": config_hash(json.loads(run_config(task, spec, epochs))),
            "polyak_version": polyak.__version__}


def machine() -> dict[str, str]:
    """The torch build and CPU kernel set a run computes with (results differ in the last bits
    across them)."""
    return {"torch_version": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def _restore(saved: dict[str, Any], model: nn.Module, method: Any,
             generators: dict[str, torch.Generator], result: RunResult) -> int:
    """Load a resume checkpoint into the freshly built run; the epoch to continue from."""
    model.load_state_dict(saved["model"])
    method.load_state_dict(saved["method"])
    restore_rngs(saved["rngs"], generators)
    result.records = [dict(r) for r in saved["records"]]
    result.resumed_from = [*saved["resumed_from"], int(saved["epoch"]) + 1]
    result.machines = list(dict.fromkeys([*saved["machines"], result.machines[0]]))
    return int(saved["epoch"]) + 1


def _state(model: nn.Module, method: Any, generators: dict[str, torch.Generator], epoch: int,
           result: RunResult) -> dict[str, Any]:
    """Everything a run needs to continue after ``epoch`` exactly as if it had not stopped."""
    return {"epoch": epoch, "model": model.state_dict(), "method": method.state_dict(),
            "rngs": capture_rngs(generators), "records": result.records,
            "resumed_from": result.resumed_from, "machines": result.machines}


def curve_epochs(epochs: int, points: int | None = CURVE_POINTS) -> set[int]:
    """The 0-based epochs whose reported weights are evaluated: epoch ``round(k * epochs /
    points)`` (1-based) for k = 1..points - the epochs the report's claims read at 10 %, 20 %,
    ... of the budget, the last included -; every epoch when ``points`` is None."""
    if points is None or points >= epochs:
        return set(range(epochs))
    return {max(1, round(k * epochs / points)) - 1 for k in range(1, points + 1)}


def _versions(model: nn.Module) -> list[int]:
    """The version counters of the parameters and buffers: they change with every in-place
    write, so equal lists mean the weights and BatchNorm statistics did not change."""
    return [t._version for t in (*model.parameters(), *model.buffers())]


def _watched(live_val: tuple[float, float | None] | None) -> dict[str, float | None]:
    """``end_epoch``'s validation keywords: a loss-only task's accuracy watchers (mode "max")
    watch the negated loss (the same plateau as watching the loss)."""
    if live_val is None:
        return {"val_loss": None, "val_acc": None}
    acc = live_val[1] if live_val[1] is not None else -live_val[0]
    return {"val_loss": live_val[0], "val_acc": acc}


def _val_for_triggers(method: Any, score: Callable[..., tuple[float, float]], splits: Splits,
                      bn_loader: Any) -> tuple[float, float] | None:
    """The validation (loss, accuracy) ``end_epoch`` needs when a trigger watches one: of the
    weights the method reports (the live ones until an average is in effect; GadamAuto's
    termination watches its average)."""
    if not method.reads_val_metrics:
        return None
    if method.reports_live_weights:
        return score(splits.x_val, splits.y_val)
    with method.eval_weights(bn_loader=bn_loader):
        return score(splits.x_val, splits.y_val)


def _score_reported(method: Any, score: Callable[..., tuple[float, float]], splits: Splits,
                    bn_loader: Any, live_val: tuple[float, float] | None
                    ) -> tuple[tuple[float, float], tuple[float, float]]:
    """(val, test) scores of the weights ``method`` reports; ``live_val`` (the live weights'
    score, when they are the reported ones, unchanged) is used instead of scoring them twice."""
    with method.eval_weights(bn_loader=bn_loader):
        val = live_val if live_val is not None else score(splits.x_val, splits.y_val)
        test = score(splits.x_test, splits.y_test)
    return val, test


def train_run(task: Task, spec: str, seed: int, epochs: int | None = None,
              on_epoch: Callable[[dict[str, float]], None] | None = None,
              checkpoints: CheckpointPolicy | None = None, sync_bn: bool = False,
              resume: RunCheckpoint | None = None,
              curve_points: int | None = CURVE_POINTS,
              attach: Callable[..., Any] | None = None) -> RunResult:
    """Train ``spec`` on ``task`` from ``seed`` for ``epochs`` (default: the task's budget);
    ``checkpoints`` saves the live model at the epochs it keeps (after ``end_epoch``);
    ``resume`` continues from its checkpoint when there is one and saves the run's full state
    there at the epochs it says (:mod:`polyak.bench.resume`; by rank 0 under torchrun).
    The reported weights are evaluated (val and full test, BatchNorm recalibrated) at the
    epochs of :func:`curve_epochs` (``curve_points=None``: every epoch), the last one and an
    early stop; the other epochs' records have ``None`` for val and test.

    Under ``torch.distributed`` (``torchrun ... polyak train``) the same run trains
    data-parallel (:mod:`polyak.bench.ddp`); ``sync_bn`` converts BatchNorm to
    ``SyncBatchNorm`` (CUDA only); files are written by rank 0."""
    epochs = task.epochs if epochs is None else epochs
    splits, mean, std = task_splits(task)
    seed_everything(seed)
    model = make_model(task, splits, seed)
    if sync_bn:
        model = ddp.convert_sync_bn(model, task.device)
    model = prepare_model(model, task.device, autocast=task.autocast)
    method = build_method(task, spec, model, epochs, steps_per_epoch(task, splits))
    fit, score, bn_loader, generators = _loop(task, splits, model, method, seed, mean, std)
    for observer in attach(model, method, score, bn_loader, splits) if attach else ():
        method.observe(observer)
    curve = curve_epochs(epochs, curve_points)
    result = RunResult(status="complete", machines=[_machine_label()])
    saved = resume.load() if resume is not None else None
    first = 0 if saved is None else _restore(saved, model, method, generators, result)
    start = time.perf_counter() - (result.records[-1]["time"] if result.records else 0.0)
    last_save = time.perf_counter()
    for epoch in range(first, epochs):
        lr = float(method.lr)
        try:
            train_loss, train_acc = fit()
        except (NonFiniteError, NonFiniteWeights) as exc:  # raised at a step (nonfinite="raise")
            result.status, result.error = "diverged", f"non-finite value in epoch {epoch}: {exc}"
            break
        live_val = _val_for_triggers(method, score, splits, bn_loader)
        if not all(math.isfinite(v) for v in (train_loss, *(live_val or ())) if v is not None):
            result.status, result.error = "diverged", f"non-finite loss in epoch {epoch}"
            break
        why = exploded(train_loss, splits.num_classes)
        if why is not None:
            result.status = "diverged"
            result.error = f"exploded loss in epoch {epoch}: mean train loss {why}"
            break
        versions = _versions(model)
        try:
            method.end_epoch(epoch, **_watched(live_val), bn_loader=bn_loader)
        except NonFiniteWeights as exc:  # an average refused NaN/Inf weights
            result.status, result.error = "diverged", f"non-finite value in epoch {epoch}: {exc}"
            break
        val = test = (None, None)
        if epoch in curve or epoch == epochs - 1 or method.should_stop:
            if versions != _versions(model) or not method.reports_live_weights:
                live_val = None  # end_epoch moved the weights, or others are reported
            val, test = _score_reported(method, score, splits, bn_loader, live_val)
        record = dict(epoch=epoch, train_loss=train_loss, train_acc=train_acc, val_loss=val[0],
                      val_acc=val[1], test_loss=test[0], test_acc=test[1], lr=lr,
                      time=time.perf_counter() - start)
        result.records.append(record)
        if checkpoints is not None:
            ddp.on_rank0(checkpoints.maybe_save, model, task=task.name, method=spec, seed=seed,
                         epoch=epoch, epochs=epochs, lr=lr)
        if on_epoch is not None:
            on_epoch(record)
        if val[0] is not None and not (math.isfinite(val[0]) and math.isfinite(test[0])):
            result.status = "diverged"
            result.error = f"non-finite loss of the reported weights in epoch {epoch}"
            break
        why = None if val[0] is None else exploded(max(val[0], test[0]), splits.num_classes)
        if why is not None:
            result.status = "diverged"
            result.error = f"exploded loss of the reported weights in epoch {epoch}: {why}"
            break
        if method.should_stop:
            break
        if resume is not None and epoch + 1 < epochs and \
                ddp.same_decision(resume.due(epoch, time.perf_counter() - last_save)):
            ddp.on_rank0(resume.save, _state(model, method, generators, epoch, result))
            last_save = time.perf_counter()
    result.wall_time = time.perf_counter() - start
    return result


def _machine_label() -> str:
    m = machine()
    return f"torch {m['torch_version']} {m['cpu_capability']}"
