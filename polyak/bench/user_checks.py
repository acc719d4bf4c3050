"""The checks of a user's task (:mod:`polyak.bench.user_tasks`) and its identity.

:func:`check` turns what a task function returned into its splits, or raises one
:class:`~polyak.bench.user_tasks.TaskFileError` naming the file and the problem: a value that is
not a ``UserTask``; a field of the wrong type or range; splits that are not ``(inputs,
targets)`` tensor pairs of equal lengths with the same example shape in every split; for the
accuracy metric, targets that are not integer class labels; a model factory that does not
return a module with trainable parameters; a model whose output does not fit the targets (its
forward pass on a few validation examples, in eval mode: for accuracy ``(N, C)`` logits with
``C`` above every label; for any metric a loss that is a finite number); an augmentation that
fails or changes the number of examples. :func:`identity` is what identifies the task's runs.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import torch
from torch import nn

from polyak.bench.data import Splits
from polyak.bench.user_tasks import METRICS, Loaded, TaskFileError, UserCode, UserTask

__all__ = ["check", "identity", "data_digest"]

PROBE = 8  # validation examples the model's output is checked on


def _name(obj: Any) -> str:
    """``module.qualname`` of a function or callable object (the loss, the augmentation)."""
    if obj is None:
        return "none"
    target = obj if hasattr(obj, "__qualname__") else type(obj)
    module = getattr(target, "__module__", "") or ""
    if module.startswith("_polyak_task_"):  # defined in the task file itself
        return target.__qualname__
    return f"{module}.{target.__qualname__}" if module else target.__qualname__


def _fields(fail: Any, user: UserTask) -> None:
    for name in ("batch_size", "epochs", "seeds", "eval_batch_size"):
        value = getattr(user, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            fail(f"Invalid {name}: {value!r} (allowed: an integer >= 1)")
    if user.metric not in METRICS:
        fail(f"Invalid metric: {user.metric!r} (allowed: {', '.join(METRICS)})")
    for name in ("model", "loss"):
        if not callable(getattr(user, name)):
            fail(f"Invalid {name}: {getattr(user, name)!r} (allowed: a callable)")
    if user.augment is not None and not callable(user.augment):
        fail(f"Invalid augment: {user.augment!r} (allowed: None or a callable(x, generator))")
    if user.version is not None and (not isinstance(user.version, str) or not user.version):
        fail(f"Invalid version: {user.version!r} (allowed: None or a non-empty string)")
    if not isinstance(user.description, str):
        fail(f"Invalid description: {user.description!r} (allowed: a string)")
    try:
        ok = isinstance(user.config, dict) and bool(json.dumps(user.config, allow_nan=False))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        fail(f"Invalid config: {user.config!r} (allowed: a dict of JSON values)")


def _pair(fail: Any, name: str, value: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(v, torch.Tensor) for v in value)):
        fail(f"Invalid {name}: {type(value).__name__} (allowed: a pair (inputs, targets) of "
             "tensors)")
    x, y = value
    if x.dim() == 0 or y.dim() == 0 or len(x) != len(y) or len(x) == 0:
        fail(f"Invalid {name}: inputs of shape {tuple(x.shape)} and targets of shape "
             f"{tuple(y.shape)} (allowed: the same number of examples, at least one, along "
             "the first dimension)")
    return x, y


def _splits(fail: Any, user: UserTask) -> dict[str, torch.Tensor]:
    pairs = {name: _pair(fail, name, getattr(user, name)) for name in ("train", "val", "test")}
    (xt, yt) = pairs["train"]
    for name, (x, y) in pairs.items():
        if x.shape[1:] != xt.shape[1:] or x.dtype != xt.dtype:
            fail(f"Invalid {name}: inputs of shape {tuple(x.shape)} ({x.dtype}) but train's are "
                 f"{tuple(xt.shape)} ({xt.dtype}) (allowed: the same shape per example and dtype)")
        if y.shape[1:] != yt.shape[1:] or y.dtype != yt.dtype:
            fail(f"Invalid {name}: targets of shape {tuple(y.shape)} ({y.dtype}) but train's "
                 f"are {tuple(yt.shape)} ({yt.dtype}) (allowed: the same shape and dtype)")
    if user.metric == "accuracy":
        for name, (_, y) in pairs.items():
            if y.dim() != 1 or y.dtype.is_floating_point or y.dtype.is_complex or \
                    y.dtype == torch.bool:
                fail(f"Invalid {name}: targets of shape {tuple(y.shape)} ({y.dtype}) (allowed "
                     "for metric 'accuracy': one integer class label per example; for "
                     "regression use metric='loss')")
            if int(y.min()) < 0:
                fail(f"Invalid {name}: label {int(y.min())} (allowed: labels 0..C-1)")
        pairs = {n: (x, y.long()) for n, (x, y) in pairs.items()}
    out = {f"{k}_{n}": v for n, (x, y) in pairs.items() for k, v in (("x", x), ("y", y))}
    if user.bn_data is not None:
        bn = user.bn_data
        if not isinstance(bn, torch.Tensor) or bn.dim() == 0 or len(bn) == 0 or \
                bn.shape[1:] != xt.shape[1:]:
            fail(f"Invalid bn_data: {getattr(bn, 'shape', type(bn).__name__)} (allowed: None or "
                 f"inputs shaped like train's, (N, {', '.join(map(str, xt.shape[1:]))}))")
    return out


def _model(fail: Any, user: UserTask) -> nn.Module:
    try:
        model = user.model(0)
    except Exception as exc:  # noqa: BLE001  (the user's code: any error is bad input)
        fail(f"model(seed=0) raised {type(exc).__name__}: {' '.join(str(exc).split())}")
    if not isinstance(model, nn.Module):
        fail(f"model(seed) returned a {type(model).__name__} (allowed: a torch.nn.Module)")
    if not any(p.requires_grad for p in model.parameters()):
        fail("the model has no trainable parameters")
    return model


def _output(fail: Any, user: UserTask, model: nn.Module, tensors: dict[str, torch.Tensor]
            ) -> int:
    """Check the model's output and the loss on a few validation examples; the number of
    classes (0 for the loss metric)."""
    x, y = tensors["x_val"][:PROBE], tensors["y_val"][:PROBE]
    shape = tuple(x.shape)
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:  # noqa: BLE001
        fail(f"the model's forward pass on validation inputs of shape {shape} raised "
             f"{type(exc).__name__}: {' '.join(str(exc).split())}")
    if not isinstance(out, torch.Tensor) or out.dim() == 0 or len(out) != len(x):
        fail(f"the model returned {getattr(out, 'shape', type(out).__name__)} for inputs of "
             f"shape {shape} (allowed: a tensor with one row per example)")
    classes = 0
    if user.metric == "accuracy":
        top = max(int(tensors[f"y_{s}"].max()) for s in ("train", "val", "test"))
        if out.dim() != 2 or out.shape[1] <= top:
            fail(f"the model's output of shape {tuple(out.shape)} does not fit the labels "
                 f"0..{top} (allowed for metric 'accuracy': (N, C) logits with C > {top})")
        classes = int(out.shape[1])
    try:
        loss = user.loss(out, y)
    except Exception as exc:  # noqa: BLE001
        fail(f"loss(output of shape {tuple(out.shape)}, targets of shape {tuple(y.shape)}) "
             f"raised {type(exc).__name__}: {' '.join(str(exc).split())}")
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0 or not math.isfinite(float(loss)):
        fail(f"loss(output, targets) returned {loss!r} (allowed: a finite scalar tensor, the "
             "batch's mean loss)")
    return classes


def _augment(fail: Any, user: UserTask, tensors: dict[str, torch.Tensor]) -> None:
    if user.augment is None:
        return
    x = tensors["x_train"][:PROBE]
    try:
        out = user.augment(x, torch.Generator().manual_seed(0))
    except Exception as exc:  # noqa: BLE001
        fail(f"augment(x, generator) raised {type(exc).__name__}: {' '.join(str(exc).split())}")
    if not isinstance(out, torch.Tensor) or out.dim() == 0 or len(out) != len(x):
        fail(f"augment(x, generator) returned {getattr(out, 'shape', type(out).__name__)} for "
             f"inputs of shape {tuple(x.shape)} (allowed: a tensor, one row per example)")


def check(code: UserCode, result: Any) -> Loaded:
    """The task function's ``result`` checked (see the module) and its splits."""
    def fail(problem: str) -> None:
        raise TaskFileError(f"{code.where}: {code.function}(): {problem}")

    if not isinstance(result, UserTask):
        fail(f"returned a {type(result).__name__}, not a UserTask (from polyak.bench.user_tasks "
             "import UserTask)")
    _fields(fail, result)
    tensors = _splits(fail, result)
    model = _model(fail, result)
    classes = _output(fail, result, model, tensors)
    _augment(fail, result, tensors)
    return Loaded(result, Splits(**tensors, num_classes=classes))


def data_digest(loaded: Loaded) -> str:
    """sha256 of every split's (and ``bn_data``'s) dtype, shape and bytes."""
    h = hashlib.sha256()
    splits = loaded.splits
    parts = [(n, getattr(splits, n)) for n in ("x_train", "y_train", "x_val", "y_val", "x_test",
                                                "y_test")]
    if loaded.task.bn_data is not None:
        parts.append(("bn_data", loaded.task.bn_data))
    for name, t in parts:
        t = t.detach().cpu().contiguous()
        h.update(f"{name} {t.dtype} {tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def identity(code: UserCode, loaded: Loaded) -> dict[str, Any]:
    """What identifies the task's runs (see :mod:`polyak.bench.user_tasks`)."""
    user = loaded.task
    model = user.model(0)
    params = sum(p.numel() for p in model.parameters())
    found: dict[str, Any] = {"function": code.function, "data": data_digest(loaded),
                             "metric": user.metric, "loss": _name(user.loss),
                             "augment": _name(user.augment), "bn_data": user.bn_data is not None,
                             "model": f"{type(model).__name__} ({params} parameters)",
                             "config": user.config}
    if user.version is not None:
        found["version"] = user.version
    else:
        found["code"] = code.digest
    return found
