"""Hugging Face ``transformers.Trainer``: a polyak :class:`~polyak.method.Method` drives it.

Usage (complete example in docs/integrations.md and ``examples/hf_example.py``)::

    from polyak.integrations.hf import PolyakTrainer

    method = polyak.recipe("gadamx", model, epochs=E, steps_per_epoch=steps)
    trainer = PolyakTrainer(model=model, args=TrainingArguments(..., num_train_epochs=E,
                            eval_strategy="epoch"), train_dataset=..., eval_dataset=...,
                            method=method)
    trainer.train()              # the model holds the reported weights afterwards
    trainer.save_model(path)     # saves them

A ``Trainer`` subclass rather than a callback, because three things happen inside the Trainer's
own methods: SAM's second forward and backward pass of the same batch (``training_step`` hands
the batch to the optimizer step), evaluation on the reported weights (``evaluate``) and saving
them (``save_model``). Where each Method event happens:

- every optimizer step (after ``gradient_accumulation_steps`` micro-batches and the Trainer's
  gradient clipping) is one Method step: per-step learning rate, the update (SAM: first step
  from the clean gradients, second pass at the perturbed point, clipped again, BatchNorm
  statistics of that pass discarded), the per-step averaging collection;
- the epoch end (``Method.end_epoch``) runs after the epoch's evaluation, fed ``eval_loss`` and
  ``eval_accuracy`` (names configurable; ``compute_metrics`` must return the accuracy when a
  trigger reads it), and before the epoch's checkpoint; without evaluation at the epoch end it
  runs in ``on_epoch_end``;
- ``evaluate`` runs on the reported weights (the average with BatchNorm recalibrated on the
  training set, in order, with the eval batch size); the validation closing epoch e shows the
  reported weights up to epoch e-1 (its metric feeds that epoch end's triggers);
- at the end of ``train`` the reported weights are written into the model
  (``write_at_end=False`` keeps the live ones; ``save_model`` then saves the reported ones);
  checkpoints save the live weights and the whole Method state (as the optimizer state), so
  ``train(resume_from_checkpoint=...)`` resumes exactly.

The Method owns the learning rate: ``learning_rate``, ``lr_scheduler_type``, warm-up and
``weight_decay`` of ``TrainingArguments`` are not used (warm-up set there is refused). The
Trainer's gradient clipping (``max_grad_norm``, 1.0 by default) applies; ``max_grad_norm=0``
trains exactly as polyak's own loop. Unsupported (``ValueError`` at construction): ``optimizers=``
or ``optimizer_cls_and_kwargs=``, DeepSpeed, FSDP, ``load_best_model_at_end``, SAM with gradient
accumulation or fp16.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import transformers
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

__all__ = ["PolyakTrainer"]


def _fail(message: str) -> None:
    raise ValueError(f"polyak Hugging Face integration: {message}")


def dict_forward(model: nn.Module, batch: Any) -> Any:
    """The model fed a Trainer batch (a dict of keyword arguments), labels left out."""
    return model(**{k: v for k, v in batch.items() if k not in ("labels", "label")})


class _MethodSchedule:
    """The learning-rate "scheduler" the Trainer steps: the Method sets the rates, this reports
    them (``get_last_lr``) and has no state of its own."""

    def __init__(self, optimizer: MethodOptimizer) -> None:
        self.optimizer = optimizer

    def step(self, *args: Any, **kwargs: Any) -> None:
        pass

    def get_last_lr(self) -> list[float]:
        return [float(group["lr"]) for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class _EpochEnds(transformers.TrainerCallback):
    """Tells the Method about epoch ends and writes the reported weights in at the end."""

    def __init__(self, trainer: PolyakTrainer) -> None:
        self.trainer = trainer

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        trainer = self.trainer
        epoch = round(state.epoch) - 1
        if control.should_evaluate:      # end the epoch after its evaluation (see evaluate)
            trainer._pending_epoch = epoch
        else:
            trainer._end_epoch(epoch, {})

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        trainer = self.trainer
        trainer._pending_epoch = None
        if trainer.write_at_end:
            reported = reported_state(trainer.method, trainer._bn_loader(), trainer.bn_forward)
            with torch.no_grad():
                trainer.method.model.load_state_dict(reported)
            trainer._written = True


class PolyakTrainer(transformers.Trainer):
    """``transformers.Trainer`` trained by a polyak :class:`~polyak.method.Method`.

    Args (besides the Trainer's own):
        method: a Method built on ``model`` (e.g. ``polyak.recipe(spec, model, epochs, steps)``
            with ``steps`` the optimizer steps per epoch).
        val_loss, val_acc: keys of ``evaluate``'s metrics the Method's triggers read.
        bn_loader: batches for BatchNorm recalibration of averaged weights: ``"train"`` (the
            training set in order, eval batch size), any iterable, or ``None``.
        bn_forward: ``forward(model, batch)`` for recalibration (default: ``model(**batch)``
            without the labels).
        swap_for_eval: evaluate on the reported weights (default ``True``).
        write_at_end: write the reported weights into the model when ``train`` ends.
    """

    def __init__(
        self, *args: Any, method: Method, val_loss: str = "eval_loss",
        val_acc: str = "eval_accuracy", bn_loader: Iterable[Any] | str | None = "train",
        bn_forward: Callable[[nn.Module, Any], Any] | None = None, swap_for_eval: bool = True,
        write_at_end: bool = True, **kwargs: Any,
    ) -> None:
        if not isinstance(method, Method):
            _fail(f"method must be a polyak Method, got {type(method).__name__}")
        if kwargs.get("optimizers", (None, None)) != (None, None) or \
                kwargs.get("optimizer_cls_and_kwargs") is not None:
            _fail("optimizers= and optimizer_cls_and_kwargs= are not supported: the Method "
                  "holds the optimizer")
        if isinstance(bn_loader, str) and bn_loader != "train":
            _fail(f"bn_loader={bn_loader!r} (allowed: 'train', an iterable of batches, or None)")
        self.method, self.polyak_optimizer = method, MethodOptimizer(method)
        self.metric_names = {"val_loss": val_loss, "val_acc": val_acc}
        self.bn_loader_arg = bn_loader
        self.bn_forward = dict_forward if bn_forward is None else bn_forward
        self.swap_for_eval, self.write_at_end = swap_for_eval, write_at_end
        self._pending_epoch: int | None = None
        self._written = False
        kwargs["optimizers"] = (self.polyak_optimizer, _MethodSchedule(self.polyak_optimizer))
        super().__init__(*args, **kwargs)
        self._check()
        self.add_callback(_EpochEnds(self))

    def _check(self) -> None:
        args, method = self.args, self.method
        if {id(p) for p in method.model.parameters()} - {id(p) for p in self.model.parameters()}:
            _fail("the Method was built on another model; build it on the Trainer's model")
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            _fail("DeepSpeed and FSDP are not supported (the Method needs whole parameters)")
        if args.load_best_model_at_end:
            _fail("load_best_model_at_end is not supported (it would load a checkpoint's live "
                  "weights over the reported ones)")
        if args.warmup_steps or getattr(args, "warmup_ratio", 0):
            _fail("warm-up in TrainingArguments is not supported: the Method owns the schedule")
        check_method(method, _fail, "gradient_accumulation_steps")
        sam = _is_sam(method.optimizer)
        if sam and args.gradient_accumulation_steps > 1:
            _fail("SAM with gradient_accumulation_steps > 1 is not supported (its second pass "
                  "would see only the last micro-batch)")
        if sam and args.fp16:
            _fail("SAM with fp16 is not supported (GradScaler); use bf16 or fp32")
        budget = budget_epochs(method)
        if budget is not None and args.max_steps <= 0 and args.num_train_epochs != budget:
            _fail(f"the Method was built for {budget} epochs but num_train_epochs="
                  f"{args.num_train_epochs}; build the recipe for the Trainer's epochs")
        needs = metric_needs(method)
        if needs and str(args.eval_strategy) not in ("epoch", "IntervalStrategy.EPOCH"):
            _fail(f"the Method's triggers read {', '.join(needs)} every epoch: use "
                  "eval_strategy='epoch'")

    # ------------------------------------------------------------------ steps
    def training_step(self, model: nn.Module, inputs: dict[str, Any],
                      num_items_in_batch: Any = None) -> torch.Tensor:
        if _is_sam(self.method.optimizer):
            def second_pass() -> None:
                batch = self._prepare_inputs(inputs)
                with self.compute_loss_context_manager():
                    loss = self.compute_loss(model, batch, num_items_in_batch=num_items_in_batch)
                self.accelerator.backward(loss)
                if self.args.max_grad_norm and self.args.max_grad_norm > 0:
                    self._clip_grad_norm(model)
            self.polyak_optimizer.second_pass = second_pass
        return super().training_step(model, inputs, num_items_in_batch)

    def create_optimizer_and_scheduler(self, num_training_steps: int) -> None:
        per_epoch = num_training_steps / max(self.args.num_train_epochs, 1)
        method = self.method
        if method.per_step and self.args.max_steps <= 0 and \
                math.ceil(per_epoch) != method.steps_per_epoch:
            _fail(f"the Method's schedule is per step with steps_per_epoch="
                  f"{method.steps_per_epoch}, but the Trainer takes {math.ceil(per_epoch)} "
                  "optimizer steps per epoch")
        super().create_optimizer_and_scheduler(num_training_steps)

    # ------------------------------------------------------------------ epoch ends
    def _bn_loader(self) -> Iterable[Any] | None:
        if self.bn_loader_arg != "train":
            return self.bn_loader_arg
        if self.train_dataset is None:
            _fail("no train_dataset to recalibrate BatchNorm on: pass bn_loader=")
        return self.get_eval_dataloader(self.train_dataset)

    def _end_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        method = self.method
        if method.epochs_done > epoch:
            return
        values = {key: metrics.get(name) for key, name in self.metric_names.items()}
        for key in metric_needs(method):
            if values[key] is None:
                _fail(f"the Method reads {key} at every epoch end, but evaluate returned no "
                      f"{self.metric_names[key]!r} (got {sorted(metrics)}); return it from "
                      f"compute_metrics or pass {key}= to PolyakTrainer")
        values = {k: None if v is None else float(v) for k, v in values.items()}
        method.end_epoch(epoch, **values, bn_loader=self._bn_loader(), forward=self.bn_forward)
        if method.should_stop:
            self.control.should_training_stop = True

    # ------------------------------------------------------------------ reported weights
    def _reported(self) -> contextlib.AbstractContextManager[Any]:
        if not self.swap_for_eval or self._written:
            return contextlib.nullcontext()
        return self.method.eval_weights(bn_loader=self._bn_loader(), forward=self.bn_forward)

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        with self._reported():
            metrics = super().evaluate(*args, **kwargs)
        if self._pending_epoch is not None:
            epoch, self._pending_epoch = self._pending_epoch, None
            self._end_epoch(epoch, metrics)
        return metrics

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Checkpoints (``_internal_call``) save the live weights, for resuming; otherwise the
        reported weights are saved."""
        if _internal_call or self._written:
            return super().save_model(output_dir, _internal_call)
        with self._reported_for_save():
            return super().save_model(output_dir, _internal_call)

    def _reported_for_save(self) -> contextlib.AbstractContextManager[Any]:
        return self.method.eval_weights(bn_loader=self._bn_loader(), forward=self.bn_forward)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        self._written = False
        return super().train(*args, **kwargs)
