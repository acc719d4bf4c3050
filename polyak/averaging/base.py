"""What every weight average shares: a flat copy of the parameters, when to collect, swapping in.

Only parameters are averaged, never buffers (docs/methods.md, "Weight averages"): BatchNorm
statistics of averaged weights are recomputed (:func:`polyak.averaging.recalibrate_bn`). The
average is a flat list of tensors, one per parameter, of the parameter's shape: no copy of the
module, no other per-parameter buffer. Its dtype is the parameter's, except that parameters of
lower precision than float32 (bf16, fp16) are averaged in float32 (``dtype=None``, the default;
``dtype=`` chooses another floating dtype): in bf16 an EMA's update ``(1-d)(w - ema)`` with
``d = 0.999`` rounds to zero and the average never moves. The weights written back into a model
(:meth:`~WeightAverage.applied`, :meth:`~WeightAverage.copy_to`, PWA's phase end) are rounded
once to the parameter's dtype. Per-collection updates run as multi-tensor ``torch._foreach_*``
kernels (``foreach=True``) or as a loop over single tensors (``foreach=False``, the reference
path); both compute the same floating-point operations in the same order.

Sharded training (FSDP2's ``fully_shard``): parameters are ``DTensor`` shards; the average of
each is a ``DTensor`` of the same placements, so a rank holds and updates only its own shard (no
full copy, no gather). Under DDP the parameters are identical on every rank, and so are the
averages, without any communication.

Non-finite weights are never collected: with ``nonfinite="raise"`` (default) a collection that
meets a NaN/Inf parameter raises :class:`NonFiniteWeights` naming it, with ``nonfinite="skip"``
it is dropped (the average unchanged) and counted in ``skipped``. The check reads the parameters
once before the update and writes nothing; it is exact (huge finite weights pass) and costs a
fraction of the update (:func:`polyak.averaging._tensors.first_nonfinite`).

Epochs are 0-based: ``end_epoch(epoch)`` is called after epoch ``epoch`` = 0, 1, 2, ... of
training, every epoch and in order (a repeated or out-of-order epoch is a ValueError). Every
event leaves the object as it was when it raises. Parameters with ``requires_grad=False`` are
never written.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from polyak.averaging import _tensors as tt
from polyak.averaging.bn import (
    Forward,
    bn_loader_for,
    bn_modules,
    recalibrate_bn,
    saved_bn_buffers,
)

__all__ = ["WeightAverage", "NonFiniteWeights", "NONFINITE"]

NONFINITE = ("raise", "skip")


class NonFiniteWeights(FloatingPointError):
    """A weight average was asked to collect a NaN/Inf parameter (``nonfinite="raise"``)."""

_FOREACH_DEVICES = ("cpu", "cuda", "xpu", "mps")


def check_every(every: str | int) -> str | int:
    """``"epoch"``, or a number of optimizer steps n >= 1 (``"step"`` means 1)."""
    if every == "step":
        return 1
    if every == "epoch":
        return "epoch"
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"Invalid every: {every!r} (allowed: 'epoch', 'step' or an integer >= 1)")
    return every


def check_epoch(epoch: int, name: str = "epoch") -> int:
    try:
        value = operator.index(epoch)
    except TypeError:
        value = -1
    if isinstance(epoch, bool) or value < 0:
        raise ValueError(f"Invalid {name}: {epoch!r} (an integer >= 0; epochs are 0-based)")
    return value


class WeightAverage:
    """Base class of :class:`Uniform`, :class:`EMA` and :class:`PhaseWise`.

    Subclasses implement ``_update(src)`` (one collection of the iterate ``src``, a list of tensors
    on the average's device and in its dtype) and may override ``_divisor()`` (the reported
    weights are ``average / divisor``). Attributes: ``average`` (the list of tensors),
    ``n_averaged`` (iterates in the current average), ``collected`` (collections ever made),
    ``steps`` (calls to :meth:`step`), ``epoch`` (epochs ended so far, i.e. the 0-based index of
    the running epoch).
    ``dtype``: that of the average of the floating-point parameters; None (default) is float32
    for parameters of lower precision (bf16, fp16) and the parameter's dtype for the others.
    """

    #: whether the averaged weights (rather than the live ones) are the method's result.
    reports_average = True

    def __init__(
        self, model: nn.Module, *, every: str | int = "epoch", start_epoch: int = 0,
        device: torch.device | str | None = None, foreach: bool | None = None,
        nonfinite: str = "raise", dtype: torch.dtype | None = None,
    ) -> None:
        every = check_every(every)
        dtype = tt.check_dtype(dtype)
        if nonfinite not in NONFINITE:
            raise ValueError(f"Invalid nonfinite: {nonfinite!r} (allowed: 'raise', 'skip')")
        start_epoch = check_epoch(start_epoch, "start_epoch")
        if foreach not in (None, True, False):
            raise ValueError(f"Invalid foreach: {foreach!r} (allowed: None, True, False)")
        params = list(model.parameters())
        if not params:
            raise ValueError("Invalid model: it has no parameters to average")
        self.model = model
        self.every, self.start_epoch = every, start_epoch
        self.device = None if device is None else torch.device(device)
        self._shapes = [p.shape for p in params]
        self.dtype = dtype   # as asked (None: float32 below float32's precision, else the param's)
        self.average: list[Tensor] = [
            tt.zeros_for(p, self.device, tt.average_dtype(p.dtype, dtype)) for p in params]
        self._sharded = any(tt.is_sharded(t) for t in self.average)
        self._narrows = any(tt.narrower(a.dtype, p.dtype) for p, a in zip(params, self.average))
        if foreach is None:
            foreach = all(t.device.type in _FOREACH_DEVICES for t in [*self.average, *params])
        self.foreach = foreach
        self.n_averaged = 0
        self.collected = 0
        self.steps = 0
        self.epoch = 0
        self._carried = False  # the optimizer's step made the next step()'s collection
        self.nonfinite = nonfinite
        self.skipped = 0  # collections refused because a parameter was not finite ("skip")

    # ------------------------------------------------------------------ tensor operations
    def _copy_(self, dst: list[Tensor], src: list[Tensor]) -> None:
        if self._sharded:
            dst, src = tt.locals_(dst), tt.locals_(src)
        if self.foreach and dst[0].device == src[0].device:
            torch._foreach_copy_(dst, src)
        else:
            for d, s in zip(dst, src):
                d.copy_(s)

    def _lerp_(self, avg: list[Tensor], src: list[Tensor], weight: float) -> None:
        if self._sharded:
            avg, src = tt.locals_(avg), tt.locals_(src)
        if self.foreach:
            torch._foreach_lerp_(avg, src, weight)
        else:
            for a, s in zip(avg, src):
                a.lerp_(s, weight)

    def _mul_(self, ts: list[Tensor], factor: float) -> None:
        if self._sharded:
            ts = tt.locals_(ts)
        if self.foreach:
            torch._foreach_mul_(ts, factor)
        else:
            for t in ts:
                t.mul_(factor)

    def _div_(self, ts: list[Tensor], divisor: float) -> None:
        if self._sharded:
            ts = tt.locals_(ts)
        if self.foreach:
            torch._foreach_div_(ts, divisor)
        else:
            for t in ts:
                t.div_(divisor)

    # ------------------------------------------------------------------ parameters
    def _params(self, model: nn.Module | None = None) -> list[Tensor]:
        """The parameters of ``model`` (default: the tracked one), checked against the average."""
        params = list((self.model if model is None else model).parameters())
        shapes = self._shapes
        if len(params) != len(shapes) or any(p.shape != s for p, s in zip(params, shapes)):
            got = [tuple(p.shape) for p in params]
            want = [tuple(s) for s in shapes]
            raise ValueError(
                f"Invalid model: its parameters changed since the average was made "
                f"({len(got)} tensors {_brief(got)}; the average holds {len(want)} {_brief(want)})"
            )
        return params

    def _source(self, params: list[Tensor]) -> list[Tensor]:
        """The live parameters on the average's device and in its dtype (converted copies of
        those that differ)."""
        return [p if p.device == a.device and p.dtype == a.dtype
                else p.detach().to(device=a.device, dtype=a.dtype)
                for p, a in zip(params, self.average)]

    def _divisor(self) -> float:
        return 1.0

    def _update(self, src: list[Tensor]) -> None:
        raise NotImplementedError

    def _lerp_weight(self) -> float | None:
        """``w`` when the next ``_update`` is ``average <- lerp(average, src, w)`` (a first copy
        is ``w = 1``: lerp's ``end - (end - start) * 0``), None when it is anything else."""
        return None

    def _write_into(self, params: list[Tensor], divisor: float) -> None:
        """``params <- average / divisor`` for the trainable parameters; a parameter with
        ``requires_grad=False`` is left exactly as it is (its average is itself, up to rounding)."""
        pairs = [(p, a) for p, a in zip(params, self.average) if p.requires_grad]
        if not pairs:
            return
        dst, src = [p for p, _ in pairs], [a for _, a in pairs]
        if all(d.dtype == s.dtype for d, s in pairs):
            self._copy_(dst, src)
            if divisor != 1.0:
                self._div_(dst, divisor)
            return
        if divisor != 1.0:  # divided in the average's dtype, then rounded once to the param's
            src = [s.clone() for s in src]
            self._div_(src, divisor)
        self._copy_(dst, src)

    @contextlib.contextmanager
    def _all_or_nothing(self) -> Iterator[None]:
        """On an exception inside the block: the average, its counters, the model's parameters
        and BatchNorm buffers are put back as they were before it (then it re-raises)."""
        counters = {k: getattr(self, k) for k in ("n_averaged", "collected", "steps", "epoch")}
        with torch.no_grad():
            average = [a.clone() for a in self.average]
            params = list(self.model.parameters())
            live = [p.detach().clone() for p in params]
        try:
            with _bn_restored_on_error(self.model):
                yield
        except BaseException:
            with torch.no_grad():
                self._copy_(self.average, average)
                self._copy_(params, live)
            for k, v in counters.items():
                setattr(self, k, v)
            raise

    @torch.no_grad()
    def _collect(self) -> bool:
        """Collect the live parameters; ``False`` when skipped (``nonfinite="skip"``) because one
        is NaN/Inf, :class:`NonFiniteWeights` naming it under ``nonfinite="raise"``."""
        params = self._params()
        # a dtype of smaller range than the parameters' is checked after the conversion to it
        src = self._source(params) if self._narrows else None
        bad_index = tt.first_nonfinite(params if src is None else src, self.foreach)
        if bad_index is not None:
            bad = [name for name, _ in self.model.named_parameters()][bad_index]
            what = "holds NaN/Inf" if src is None else \
                f"holds NaN/Inf or overflows the average's {src[bad_index].dtype}"
            if self.nonfinite == "raise":
                raise NonFiniteWeights(
                    f"Non-finite weights: parameter {bad!r} {what}; the average refuses "
                    f"to collect it ({type(self).__name__}(nonfinite='skip') drops such "
                    "collections and counts them in .skipped)")
            self.skipped += 1
            return False
        self._update(self._source(params) if src is None else src)
        self.n_averaged += 1
        self.collected += 1
        return True

    # ------------------------------------------------------------------ events
    def step(self) -> None:
        """Call after each ``optimizer.step()``; collects every ``every`` steps when it is a number.

        Steps are counted from the object's creation; a step collects when the step count is a
        multiple of ``every`` and the running epoch (0-based) is at least ``start_epoch``.
        Raising (e.g. the model's parameters changed) leaves the average and counters as they were.
        """
        every, steps = self.every, self.steps + 1
        if every != "epoch" and steps % every == 0 and self.epoch >= self.start_epoch:
            if self._carried:  # the optimizer's kernel already moved the average
                self._carried = False
                self.n_averaged += 1
                self.collected += 1
            else:
                self._collect()
        self.steps = steps

    def _check_next(self, epoch: int) -> int:
        """``epoch`` if it is the next one to end, else a ValueError saying what to do."""
        epoch = check_epoch(epoch)
        if epoch != self.epoch:
            raise ValueError(
                f"Invalid epoch: {epoch} (expected {self.epoch}: {type(self).__name__} takes "
                "every epoch, 0-based and in order; to resume, load_state_dict() a checkpoint "
                "of it first; to start later without collecting, call skip_to(epoch))"
            )
        return epoch

    def skip_to(self, epoch: int) -> None:
        """Epochs before ``epoch`` (0-based) ended and none is collected; the next
        :meth:`end_epoch` is for ``epoch``. For a caller that decides itself when collection
        starts (e.g. ``Method`` before its averaging trigger fires)."""
        epoch = check_epoch(epoch)
        if epoch < self.epoch:
            raise ValueError(f"Invalid epoch: {epoch} (skip_to goes forward: {self.epoch} "
                             "epochs have already ended)")
        self._params()
        self.epoch = epoch

    # ------------------------------------------------------------------ carried by an optimizer
    def next_step_weight(self) -> float | None:
        """The lerp weight of the collection the next :meth:`step` makes, for an optimizer that
        carries this average (``Padam.carry_average``); None when it makes none, its update is
        no lerp, it is carried already or sharded (FSDP2). See :mod:`polyak.optim._carry`."""
        every = self.every
        if self._carried or self._sharded or every == "epoch" or (self.steps + 1) % every \
                or self.epoch < self.start_epoch:
            return None
        return self._lerp_weight()

    def tracked_params(self) -> list[Tensor]:
        """The tracked model's parameters, in the order of :attr:`average`."""
        return self._params()

    def mark_carried(self) -> None:
        """The optimizer's step made the next :meth:`step`'s collection (the lerp of
        :meth:`next_step_weight`); that ``step()`` only counts it."""
        self._carried = True

    def end_epoch(
        self, epoch: int, bn_loader: Iterable[Any] | None = None, forward: Forward | None = None,
    ) -> None:
        """Call after epoch ``epoch`` (0-based, the next one: a repeated, earlier or skipped
        epoch is a ValueError); collects when ``every="epoch"`` and ``epoch >= start_epoch``.
        ``bn_loader``/``forward`` are accepted for a uniform interface and unused here:
        BatchNorm is recalibrated when the average is used (:meth:`applied`). Raising leaves the
        average and counters as they were."""
        epoch = self._check_next(epoch)
        if self.every == "epoch" and epoch >= self.start_epoch:
            self._collect()
        else:
            self._params()
        self.epoch = epoch + 1

    # ------------------------------------------------------------------ using the average
    @property
    def has_average(self) -> bool:
        return self.n_averaged > 0

    @property
    def nbytes(self) -> int:
        """Bytes of memory the average holds (its tensors' storages)."""
        return sum(tt.local(t).untyped_storage().nbytes() for t in self.average)

    @torch.no_grad()
    def averaged(self) -> list[Tensor]:
        """New tensors holding the reported weights (the live ones when nothing is averaged), in
        the average's dtype."""
        if not self.has_average:
            return [p.detach().to(a.dtype, copy=True)
                    for p, a in zip(self._params(), self.average)]
        divisor = self._divisor()
        return [a.clone() if divisor == 1.0 else a / divisor for a in self.average]

    @torch.no_grad()
    def copy_to(self, model: nn.Module | None = None) -> None:
        """Write the averaged weights into ``model`` (default: the tracked one) for good.

        A no-op while nothing has been averaged."""
        params = self._params(model)
        if self.has_average:
            self._write_into(params, self._divisor())

    @contextlib.contextmanager
    def applied(
        self, model: nn.Module | None = None, bn_loader: Iterable[Any] | None = None,
        forward: Forward | None = None,
    ) -> Iterator[nn.Module]:
        """Inside the block ``model`` holds the averaged weights, and with ``bn_loader`` BatchNorm
        statistics recomputed for them (:func:`recalibrate_bn`). On exit, also when the block
        raises, the live weights and BatchNorm buffers are back bit for bit. While nothing has been
        averaged the block sees the live weights (with recalibrated statistics if asked).
        Without ``bn_loader`` on a model with BatchNorm the averaged weights would meet the live
        weights' statistics: a :class:`~polyak.averaging.bn.StaleBatchNormWarning` says so
        (once); ``bn_loader=KEEP_BN_STATS`` keeps them on purpose."""
        model = self.model if model is None else model
        bn_loader = bn_loader_for(self, model, bn_loader,
                                  f"{type(self).__name__}.applied() swapped the average in",
                                  stale=self.has_average)
        params = self._params(model)
        with torch.no_grad():
            live = [p.detach().clone() for p in params]
        try:
            with saved_bn_buffers(model):
                if self.has_average:
                    with torch.no_grad():
                        self._write_into(params, self._divisor())
                if bn_loader is not None:
                    recalibrate_bn(model, bn_loader, forward=forward)
                yield model
        finally:
            with torch.no_grad():
                self._copy_(params, live)

    # ------------------------------------------------------------------ checkpoints
    def _hyper(self) -> dict[str, Any]:
        return {"every": self.every, "start_epoch": self.start_epoch}

    def state_dict(self) -> dict[str, Any]:
        """Counters, hyper-parameters and the average (references to its tensors, as torch's
        state dicts hold: save or deep-copy it before training on)."""
        return {
            "type": type(self).__name__, "hyper": self._hyper(),
            "n_averaged": self.n_averaged, "collected": self.collected,
            "steps": self.steps, "epoch": self.epoch, "average": list(self.average),
            "skipped": self.skipped,
        }

    def check_state_dict(self, state: dict[str, Any]) -> None:
        """Raise ``ValueError`` unless :meth:`load_state_dict` would accept ``state``: another
        class, another set of hyper-parameters, or a model with other parameter shapes. Changes
        nothing (:class:`~polyak.method.Method` checks every piece before loading any)."""
        name = type(self).__name__
        if state.get("type") != name:
            raise ValueError(f"Invalid state_dict: it is from a {state.get('type')}, not a {name}")
        if state.get("hyper") != self._hyper():
            raise ValueError(
                f"Invalid state_dict: it has {state.get('hyper')}, this {name} has {self._hyper()}"
            )
        avg = state["average"]
        got = [tuple(t.shape) for t in avg]
        want = [tuple(s) for s in self._shapes]
        if got != want:
            raise ValueError(
                f"Invalid state_dict: it is from a different model ({len(got)} tensors "
                f"{_brief(got)}; this average holds {len(want)} {_brief(want)})"
            )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (checked first by :meth:`check_state_dict`). The average's
        tensors are converted to this average's dtype: a state saved when averages of bf16
        parameters were kept in bf16 loads exactly into today's float32 average."""
        self.check_state_dict(state)
        with torch.no_grad():
            for a, s in zip(self.average, state["average"]):
                a.copy_(s)
        for key in ("n_averaged", "collected", "steps", "epoch"):
            setattr(self, key, int(state[key]))
        self._carried = False  # a collection carried before the load is not this state's
        self.skipped = int(state.get("skipped", 0))

    def __repr__(self) -> str:
        hyper = ", ".join(f"{k}={v!r}" for k, v in self._hyper().items())
        skipped = f", skipped={self.skipped}" if self.skipped else ""
        return f"{type(self).__name__}({hyper}, n_averaged={self.n_averaged}{skipped})"


@contextlib.contextmanager
def _bn_restored_on_error(model: nn.Module) -> Iterator[None]:
    saved = [(buf, buf.detach().clone()) for m in bn_modules(model)
             for buf in m.buffers(recurse=False)]
    try:
        yield
    except BaseException:
        with torch.no_grad():
            for buf, copy in saved:
                buf.copy_(copy)
        raise


def _brief(shapes: list[tuple[int, ...]], limit: int = 4) -> str:
    shown = ", ".join(str(s) for s in shapes[:limit])
    return f"[{shown}{', ...' if len(shapes) > limit else ''}]"
