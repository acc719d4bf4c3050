"""The benchmark on the user's own problem: a task defined in a Python file (or module) of theirs.

``polyak bench --tasks path/to/file.py:NAME`` (or ``module:NAME`` for an importable module)
calls the function ``NAME`` of that file; it returns a :class:`UserTask`: the data as tensors,
a model factory taking a seed, the batch size and epoch budget, the loss and the metric
(classification accuracy, or the loss itself: lower is better), and optionally a training
augmentation and the inputs BatchNorm is recalibrated on. See ``docs/own-task.md``.

:func:`load_task` turns it into the same :class:`~polyak.bench.tasks.Task` value the built-in
tasks are, with a :class:`UserCode` in ``Task.user``: the file's text (shipped with every
pickled task, so spawned workers and Ray workers on other machines need neither the file nor a
shared file system), the function's name, and the identity computed once in the driver:

- the code: ``sha256`` of the file's text, or the ``version`` string the task gives (then
  editing the file keeps its runs until the version changes: the user's promise);
- the data: ``sha256`` of every split's bytes, shapes and dtypes (a task that reads a data file
  of its own gets new runs when the file changes; a process whose data differ, e.g. a function
  drawing unseeded random numbers, fails its runs with a message saying so);
- the metric, the loss's and augmentation's names, the model's class and parameter count, and
  the task's own ``config`` dict.

That identity joins :meth:`Task.config`, hence every run's identity in the store and in its
resume checkpoints: an edited task never mixes with old runs. Every process runs the file once
(cached by its hash and the function's name). A ``module:NAME`` task is imported by name in
every process (it must be installed there) and checked against the driver's hash of its file.

Bad input is one :class:`TaskFileError` (a ``ValueError``: the CLI prints one line naming the
file and the problem, exit status 2) raised before any store is opened; the checks are in
:mod:`polyak.bench.user_checks`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import linecache
import sys
import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from polyak.bench.data import Splits

__all__ = ["UserTask", "UserCode", "TaskFileError", "METRICS", "is_user_spec", "load_task"]

METRICS = ("accuracy", "loss")
Pair = tuple[torch.Tensor, torch.Tensor]


class TaskFileError(ValueError):
    """A task file that cannot be used; the message names the file and the problem (one line)."""


@dataclass
class UserTask:
    """What a task function returns (every field is described in ``docs/own-task.md``).

    ``train``/``val``/``test``: ``(inputs, targets)`` tensors (first dimension: examples);
    ``model(seed)``: a fresh ``nn.Module`` (the run has seeded torch with ``seed`` already);
    ``loss(output, target)``: the mean loss of a batch (default cross-entropy); ``metric``:
    ``"accuracy"`` (argmax of ``(N, C)`` outputs against integer labels, higher is better) or
    ``"loss"`` (the loss is the metric, lower is better); ``augment(x, generator)``: applied
    to every training batch with a generator seeded from the run's seed; ``bn_data``: the inputs
    BatchNorm statistics are recalibrated on for averaged weights (default the training inputs);
    ``version``: identifies the code instead of the file's hash; ``config``: JSON values that
    identify the task beyond its code and data."""

    train: Pair
    val: Pair
    test: Pair
    model: Callable[[int], nn.Module]
    batch_size: int
    epochs: int
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy
    metric: str = "accuracy"
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
    bn_data: torch.Tensor | None = None
    seeds: int = 3
    eval_batch_size: int = 1000
    description: str = ""
    version: str | None = None
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Loaded:
    """A task function's result in this process: the definition and its splits."""

    task: UserTask
    splits: Splits


@dataclass(frozen=True)
class UserCode:
    """A user's task as it travels with a :class:`~polyak.bench.tasks.Task` (plain strings:
    pickled whole to every worker). ``where``: the file's path as given or the module's name;
    ``text``: the file's text (``None`` for a module, imported by name); ``digest``: sha256 of
    the code's text; ``identity``: JSON of what identifies the task's runs (see the module)."""

    spec: str
    where: str
    function: str
    text: str | None
    digest: str
    identity: str = "{}"

    def load(self) -> Loaded:
        """The task function's result, computed once per process."""
        key = (self.digest, self.where if self.text is None else "", self.function)
        if key not in _LOADED:
            from polyak.bench.user_checks import check, data_digest

            loaded = check(self, _call(self))
            want = json.loads(self.identity).get("data")
            if want is not None and data_digest(loaded) != want:
                raise TaskFileError(f"{self.where}: {self.function}() returned other data in "
                                    "this process than where the bench started (sha256 "
                                    "differs): make it deterministic (seed its random draws) "
                                    "and give every machine the same data files")
            _LOADED[key] = loaded
        return _LOADED[key]

    def splits(self) -> Splits:
        """The task's splits (the ``data`` of its Task)."""
        return self.load().splits


_LOADED: dict[tuple[str, str, str], Loaded] = {}
_MODULES: dict[tuple[str, str], types.ModuleType] = {}


def is_user_spec(name: str) -> bool:
    """Whether a ``--tasks`` entry names a user's task (``FILE.py:NAME``, ``module:NAME``)."""
    return ":" in name


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def parse_spec(spec: str) -> UserCode:
    """Read a ``FILE.py:NAME`` or ``module:NAME`` spec into a :class:`UserCode` (no code run
    yet, except importing a module)."""
    where, _, function = spec.strip().rpartition(":")
    if not where or not function.isidentifier():
        raise TaskFileError(f"Invalid task: {spec!r} (allowed: a built-in task name, "
                            "FILE.py:NAME or module:NAME, NAME a function of the file)")
    if where.endswith(".py") or "/" in where or "\\" in where:
        path = Path(where)
        if not path.is_file():
            raise TaskFileError(f"{where}: no such file (a task file is FILE.py:NAME)")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TaskFileError(f"{where}: cannot read it: {_one_line(exc)}") from None
        return UserCode(spec, where, function, text, _digest(text))
    return UserCode(spec, where, function, None, _module_digest(where))


def _module_digest(name: str) -> str:
    """sha256 of an importable module's source file (found without running it)."""
    try:
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError) as exc:
        raise TaskFileError(f"{name}: cannot import it: {_one_line(exc)}") from None
    if found is None or not found.origin or not Path(found.origin).is_file():
        raise TaskFileError(f"{name}: no such module (a task in an installed module is "
                            "module:NAME; a file is FILE.py:NAME)")
    if not found.origin.endswith(".py"):
        raise TaskFileError(f"{name}: its code is not a Python source file ({found.origin})")
    return _digest(Path(found.origin).read_text(encoding="utf-8"))


def _where_in_file(exc: BaseException, filename: str) -> str:
    """" (line N)" of the innermost frame of ``exc``'s traceback in ``filename``."""
    if isinstance(exc, SyntaxError) and exc.filename == filename and exc.lineno:
        return f" (line {exc.lineno})"
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.filename == filename]
    return f" (line {lines[-1]})" if lines else ""


def _module(code: UserCode) -> types.ModuleType:
    """The task's module in this process: the file's text executed once as a fresh module
    (registered in ``sys.modules`` and ``linecache`` so that dataclasses, pickling by reference
    and tracebacks work, with the file's directory on ``sys.path`` while it runs, as for
    ``python FILE``), or the installed module imported by name and checked against the hash."""
    key = (code.digest, code.where)
    if key in _MODULES:
        return _MODULES[key]
    if code.text is None:
        try:
            module = importlib.import_module(code.where)
        except Exception as exc:  # noqa: BLE001  (the user's code: any error is bad input)
            raise TaskFileError(f"{code.where}: cannot import it: {type(exc).__name__}: "
                                f"{_one_line(exc)}") from None
        if _module_digest(code.where) != code.digest:
            raise TaskFileError(f"{code.where}: its file differs in this process from where the "
                                "bench started (sha256): install the same version everywhere")
    else:
        module = types.ModuleType(f"_polyak_task_{code.digest[:16]}")
        module.__file__ = code.where
        linecache.cache[code.where] = (len(code.text), None, code.text.splitlines(True),
                                       code.where)
        sys.modules[module.__name__] = module
        folder = str(Path(code.where).resolve().parent)
        sys.path.insert(0, folder)
        try:
            exec(compile(code.text, code.where, "exec"), module.__dict__)  # noqa: S102
        except (Exception, SystemExit) as exc:
            del sys.modules[module.__name__]
            at = _where_in_file(exc, code.where)
            raise TaskFileError(f"{code.where}: importing it failed{at}: "
                                f"{type(exc).__name__}: {_one_line(exc)}") from None
        finally:
            if folder in sys.path:
                sys.path.remove(folder)
    _MODULES[key] = module
    return module


def _call(code: UserCode) -> Any:
    """Run the task function (no arguments) and return what it returns."""
    module = _module(code)
    function = getattr(module, code.function, None)
    if function is None:
        names = sorted(n for n, v in vars(module).items()
                       if callable(v) and not n.startswith("_") and
                       getattr(v, "__module__", None) == module.__name__)
        raise TaskFileError(f"{code.where}: defines no {code.function} (its functions: "
                            f"{', '.join(names) or 'none'})")
    if not callable(function):
        raise TaskFileError(f"{code.where}: {code.function} is a {type(function).__name__}, "
                            "not a function returning a UserTask")
    try:
        return function()
    except (Exception, SystemExit) as exc:
        raise TaskFileError(f"{code.where}: {code.function}() raised "
                            f"{type(exc).__name__}: {_one_line(exc)}"
                            f"{_where_in_file(exc, code.where)}") from None


def _describe(code: UserCode, loaded: Loaded, summary: dict[str, Any]) -> str:
    user, splits = loaded.task, loaded.splits
    sizes = "/".join(str(len(x)) for x in (splits.x_train, splits.x_val, splits.x_test))
    what = (f"{code.spec} (your task): {sizes} train/val/test examples of shape "
            f"{tuple(splits.x_train.shape[1:])}, {summary['model']}, batch {user.batch_size}, "
            f"{user.epochs} epochs, loss {summary['loss']}, metric {user.metric}"
            + (" (lower is better)" if user.metric == "loss" else "")
            + (f", augmentation {summary['augment']}" if user.augment is not None else "")
            + ("; BatchNorm recalibrated on its bn_data" if user.bn_data is not None else ""))
    return f"{what}. {user.description}".strip() if user.description else what


def load_task(spec: str) -> Any:
    """The :class:`~polyak.bench.tasks.Task` of ``FILE.py:NAME`` or ``module:NAME``: the code
    run and every part checked here, in this process (:class:`TaskFileError` otherwise)."""
    from polyak.bench.tasks import NO_TUNED_FILE, Task
    from polyak.bench.user_checks import check, identity

    code = parse_spec(spec)
    loaded = check(code, _call(code))
    summary = identity(code, loaded)
    code = replace(code, identity=json.dumps(summary, sort_keys=True, separators=(",", ":")))
    _LOADED[(code.digest, code.where if code.text is None else "", code.function)] = loaded
    user = loaded.task
    return Task(name=code.function, description=_describe(code, loaded, summary),
                data=code.splits, model=f"{code.where}:{code.function}",
                batch_size=user.batch_size, epochs=user.epochs, seeds=user.seeds,
                eval_batch_size=user.eval_batch_size, tuned_path=NO_TUNED_FILE, user=code,
                metric=user.metric)
