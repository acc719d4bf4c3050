"""PyTorch Lightning: a polyak :class:`~polyak.method.Method` drives ``lightning.Trainer``.

Usage (complete example in docs/integrations.md and ``examples/lightning_example.py``)::

    from polyak.integrations.lightning import PolyakCallback, method_optimizer

    class Module(lightning.LightningModule):
        ...                                   # training_step returns the loss, as usual
        def configure_optimizers(self):
            return method_optimizer(self)     # the Method's optimizer, one Method step per step

    method = polyak.recipe("gadamx", module, epochs=E, steps_per_epoch=len(train_loader))
    trainer = lightning.Trainer(max_epochs=E, callbacks=[PolyakCallback(method)])
    trainer.fit(module, train_loader, val_loader)   # module now holds the reported weights

Where each Method event happens:

- every optimizer step (not every micro-batch under ``accumulate_grad_batches``) is one Method
  step: per-step learning rate, the update (SAM: both passes, Lightning's closure evaluated
  twice, BatchNorm statistics of the second pass discarded), the per-step averaging collection;
- the epoch end (``Method.end_epoch``) runs after the epoch's validation, fed the logged
  ``val_loss``/``val_acc`` (names configurable), and before Lightning's checkpoint of that
  epoch, so a checkpoint holds the Method state of a finished epoch; without validation it runs
  in ``on_train_epoch_end``. A stop trigger firing sets ``trainer.should_stop``;
- validation and test run on the reported weights (the average with BatchNorm recalibrated on
  the training data), the live weights are back afterwards. The validation that closes epoch e
  runs before that epoch's end event (its metric feeds the triggers), so during fit it shows
  the reported weights up to epoch e-1;
- at the end of fit the reported weights are written into the module (``write_at_end=False``
  keeps the live ones);
- the Method's whole state is the optimizer state Lightning saves, so ``Trainer.fit(ckpt_path=)``
  resumes it exactly from an end-of-epoch checkpoint (``ModelCheckpoint``'s default) or with a
  resumable dataloader (one with ``state_dict``/``load_state_dict``). From a checkpoint saved
  inside an epoch Lightning restarts a plain ``DataLoader`` from its first batch: the resumed run
  is not the uninterrupted one, and restoring the Method from such a checkpoint warns
  (``UserWarning``, once).

Unsupported (a ``ValueError`` at setup): a Method built for another epoch budget than
``Trainer(max_epochs=...)`` (every recipe knows its budget: ``Method.epochs``), manual
optimization, sharded strategies (FSDP, DeepSpeed) and ``ddp_spawn``, SAM with gradient
accumulation or with a ``GradScaler`` (``16-mixed``), a ``configure_optimizers`` that returns
anything but :func:`method_optimizer`, learning-rate schedulers (the Method owns the schedule),
triggers without a validation metric every epoch.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from polyak.integrations._common import (
    MethodOptimizer,
    _is_sam,
    budget_epochs,
    check_method,
    metric_needs,
    reported_state,
)
from polyak.method import Method

__all__ = ["PolyakCallback", "method_optimizer"]

_SUPPORTED_STRATEGIES = ("SingleDeviceStrategy", "DDPStrategy")


def method_optimizer(module: L.LightningModule) -> MethodOptimizer:
    """What ``configure_optimizers`` returns: the optimizer of the :class:`PolyakCallback` given
    to ``module``'s Trainer."""
    trainer = module.trainer
    found = [cb for cb in trainer.callbacks if isinstance(cb, PolyakCallback)]
    if len(found) != 1:
        raise ValueError(f"Invalid callbacks: method_optimizer needs exactly one PolyakCallback "
                         f"in the Trainer's callbacks, found {len(found)}")
    return found[0].optimizer


def _fail(message: str) -> None:
    raise ValueError(f"polyak Lightning integration: {message}")


def _mid_epoch(checkpoint: dict[str, Any]) -> tuple[int, int, int] | None:
    """``(epoch, batches, epochs the Method ended)`` when ``checkpoint`` was saved after some
    training batches of an epoch the Method had not ended yet, and the training dataloader left
    no state to resume from; ``None`` otherwise (an end-of-epoch checkpoint, a stateful loader,
    a checkpoint without a Method state)."""
    states = checkpoint.get("optimizer_states") or [None]
    ended = states[0].get("epochs_done") if isinstance(states[0], dict) else None
    fit = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    progress = (fit.get("epoch_loop.batch_progress") or {}).get("current") or {}
    batches, epoch = progress.get("processed"), checkpoint.get("epoch")
    if ended is None or batches is None or epoch is None:
        return None
    resumable = bool((fit.get("state_dict") or {}).get("combined_loader"))
    if ended > epoch or batches == 0 or resumable:
        return None
    return int(epoch), int(batches), int(ended)


class PolyakCallback(L.Callback):
    """Lightning callback that trains with a polyak :class:`~polyak.method.Method`.

    Args:
        method: a Method built on the LightningModule (e.g. ``polyak.recipe(spec, module, ...)``),
            or a function ``module -> Method`` called once when fit starts.
        val_loss, val_acc: names of the logged validation metrics the Method's triggers read.
        bn_loader: batches for BatchNorm recalibration of averaged weights: ``"train"`` (the
            Trainer's training dataloader), any iterable, or ``None`` (no recalibration).
        forward: ``forward(module, batch)`` for recalibration (default: ``module(batch[0])``).
        swap_for_eval: validate and test on the reported weights (default ``True``).
        write_at_end: write the reported weights into the module at the end of fit.
    """

    def __init__(
        self, method: Method | Callable[[nn.Module], Method], *, val_loss: str = "val_loss",
        val_acc: str = "val_acc", bn_loader: Iterable[Any] | str | None = "train",
        forward: Callable[[nn.Module, Any], Any] | None = None, swap_for_eval: bool = True,
        write_at_end: bool = True,
    ) -> None:
        if not isinstance(method, Method) and not callable(method):
            raise ValueError(f"Invalid method: {method!r} (a polyak Method or a function "
                             "module -> Method)")
        if isinstance(bn_loader, str) and bn_loader != "train":
            raise ValueError(f"Invalid bn_loader: {bn_loader!r} (allowed: 'train', an iterable "
                             "of batches, or None)")
        self._make = None if isinstance(method, Method) else method
        self.method: Method | None = method if isinstance(method, Method) else None
        self._optimizer = None if self.method is None else MethodOptimizer(self.method)
        self.metric_names = {"val_loss": val_loss, "val_acc": val_acc}
        self.bn_loader, self.forward = bn_loader, forward
        self.swap_for_eval, self.write_at_end = swap_for_eval, write_at_end
        self._swapped = contextlib.ExitStack()
        self._written = False
        self._fit_loader: Iterable[Any] | None = None

    @property
    def optimizer(self) -> MethodOptimizer:
        if self._optimizer is None:
            raise ValueError("Invalid call: the Method is built when fit starts; "
                             "call method_optimizer(module) inside configure_optimizers")
        return self._optimizer

    # ------------------------------------------------------------------ setup checks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if self.method is None:
            self.method = self._make(pl_module)
            if not isinstance(self.method, Method):
                _fail(f"the method function returned {type(self.method).__name__}, not a Method")
            self._optimizer = MethodOptimizer(self.method)
        self._check(trainer, pl_module)

    def _check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        method = self.method
        if not pl_module.automatic_optimization:
            _fail("manual optimization is not supported (the Method steps the optimizer); "
                  "set automatic_optimization = True")
        if {id(p) for p in method.model.parameters()} - {id(p) for p in pl_module.parameters()}:
            _fail("the Method was built on another model; build it on the LightningModule")
        strategy = type(trainer.strategy).__name__
        if strategy not in _SUPPORTED_STRATEGIES:
            _fail(f"strategy {strategy} is not supported (allowed: single device, 'ddp')")
        check_method(method, _fail, "Trainer(accumulate_grad_batches=...)")
        sam = _is_sam(method.optimizer)
        if sam and trainer.accumulate_grad_batches > 1:
            _fail("SAM with accumulate_grad_batches > 1 is not supported (its second pass "
                  "would see only the last micro-batch)")
        if sam and "16-mixed" in str(trainer.precision):
            _fail("SAM with precision='16-mixed' is not supported (GradScaler steps without "
                  "a closure); use 'bf16-mixed' or '32-true'")
        budget = budget_epochs(method)
        if budget is not None and trainer.max_epochs != budget:
            _fail(f"the Method was built for {budget} epochs but Trainer(max_epochs="
                  f"{trainer.max_epochs}); build the recipe for the Trainer's epochs")
        needs = metric_needs(method)
        if needs and trainer.check_val_every_n_epoch != 1:
            _fail(f"the Method's triggers read {', '.join(needs)} every epoch: use "
                  "check_val_every_n_epoch=1")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if [getattr(o, "_optimizer", o) for o in trainer.optimizers] != [self._optimizer]:
            _fail("configure_optimizers must return method_optimizer(self) and nothing else")
        if trainer.lr_scheduler_configs:
            _fail("learning-rate schedulers are not supported: the Method owns the schedule")
        self._written = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_loader = trainer.train_dataloader
        method = self.method
        if method.per_step and not math.isinf(trainer.num_training_batches):
            steps = math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
            if steps != method.steps_per_epoch:
                _fail(f"the Method's schedule is per step with steps_per_epoch="
                      f"{method.steps_per_epoch}, but the Trainer takes {steps} optimizer steps "
                      "per epoch")

    # ------------------------------------------------------------------ epoch ends
    def _bn_loader(self, trainer: L.Trainer) -> Iterable[Any] | None:
        if self.bn_loader != "train":
            return self.bn_loader
        loader = trainer.train_dataloader or self._fit_loader   # test/validate after a fit
        if loader is None:
            _fail("no training dataloader to recalibrate BatchNorm on outside fit: pass "
                  "bn_loader= to PolyakCallback (or None to skip recalibration)")
        return loader

    def _metrics(self, trainer: L.Trainer) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for key, logged in self.metric_names.items():
            value = trainer.callback_metrics.get(logged)
            out[key] = None if value is None else float(value)
        if trainer.world_size > 1:  # every rank decides on rank 0's numbers
            out = trainer.strategy.broadcast(out, src=0)
        for key in metric_needs(self.method):
            if out[key] is None:
                _fail(f"the Method reads {key} at every epoch end, but no metric "
                      f"{self.metric_names[key]!r} was logged (logged: "
                      f"{sorted(trainer.callback_metrics)}); log it in validation_step or pass "
                      f"{key}= to PolyakCallback")
        return out

    def _end_epoch(self, trainer: L.Trainer) -> None:
        method = self.method
        epoch = trainer.current_epoch
        if method.epochs_done > epoch:  # already ended (e.g. resumed after its checkpoint)
            return
        metrics = self._metrics(trainer)
        method.end_epoch(epoch, bn_loader=self._bn_loader(trainer), forward=self.forward,
                         **metrics)
        if method.should_stop:
            trainer.should_stop = True

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:  # the epoch's validation
            self._end_epoch(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end_epoch(trainer)

    # ------------------------------------------------------------------ reported weights
    def _swap_in(self, trainer: L.Trainer) -> None:
        if not self.swap_for_eval or trainer.sanity_checking or self.method is None:
            return
        if trainer.state.fn != "fit" and self._written:  # the module holds them already
            return
        self._swapped.enter_context(
            self.method.eval_weights(bn_loader=self._bn_loader(trainer), forward=self.forward))

    def _swap_out(self) -> None:
        self._swapped.close()

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._swap_in(trainer)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._swap_out()

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._swap_in(trainer)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._swap_out()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:
        self._swap_out()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.write_at_end:
            state = reported_state(self.method, self._bn_loader(trainer), self.forward)
            with torch.no_grad():
                pl_module.load_state_dict(state)
            self._written = True

    def __getstate__(self) -> dict[str, Any]:
        _fail("PolyakCallback cannot be copied into other processes (strategy 'ddp_spawn' or "
              "'ddp_notebook' is not supported: the trained Method would stay in the copies); "
              "use strategy='ddp'")

    # ------------------------------------------------------------------ checkpoints
    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        where = _mid_epoch(checkpoint)
        if where is not None:
            epoch, batches, ended = where
            rank_zero_warn(
                f"polyak Lightning integration: the checkpoint was saved {batches} batch(es) "
                f"into epoch {epoch}, before the Method's end of that epoch (it had ended "
                f"{ended}); Lightning restarts a plain DataLoader from its first batch, so the "
                "resumed run will not equal the uninterrupted one. Resume from end-of-epoch "
                "checkpoints (ModelCheckpoint's default) or with a resumable dataloader (one "
                "with state_dict/load_state_dict).", category=UserWarning)

    def state_dict(self) -> dict[str, Any]:
        """Only a marker: the Method's state is the optimizer state Lightning saves."""
        return {"method": repr(self.method)}
