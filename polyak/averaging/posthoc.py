"""Post-hoc averages: a weight per snapshot, then one streaming pass over the snapshot files.

docs/posthoc.md and docs/methods.md, "Post-hoc averages". A post-hoc average of the stored
iterates ``theta_0 .. theta_{N-1}`` (snapshot ``i`` taken at optimizer step ``s_i`` in epoch
``e_i``) is ``sum_i w_i theta_i``; each family below returns the ``w_i`` (a list of floats, one per
snapshot, zero outside the window, summing to 1). A window ``[start, end]`` (inclusive, None for
open) selects snapshots by ``by="epoch"`` (``e_i``), ``"step"`` (``s_i``) or ``"index"`` (``i``);
the ``m`` selected snapshots are renumbered ``k = 1..m`` in order.

- :func:`uniform_weights`: ``1/m`` on the window: ``Uniform(start_epoch=a)`` (SWA, Gadam,
  averaged SGD) when the snapshots are taken where it collects (the same ``every``).
- :func:`end_only_weights`: the uniform average from ``start`` to the end of training, PWA's
  "aggregated at the end only" arm (PWA Table 1c: the same run, averaged once, nothing injected).
- :func:`ema_weights`: the EMA ``ema <- d ema + (1-d) theta`` run over the window's snapshots,
  ``w_k = alpha_k prod_{j>k} (1 - alpha_j)`` with ``alpha_1 = 1`` (the first one copied) and
  ``alpha_k = 1 - d_k`` after; ``bias_correction=True``: ``alpha_1 = 1 - d`` and all divided by
  ``1 - d^m``; ``warmup=True``: ``d_k = min(d, 1 - (1 + (k-1)/warmup_gamma)^(-warmup_power))``:
  exactly polyak's online :class:`~polyak.averaging.EMA` with the same options and ``every``.
  ``half_life=h`` means ``d = 0.5^(1/h)``, ``h`` counted in snapshots.
- :func:`latest_weights`: ``1/k`` on the ``k`` latest snapshots (latest-weight averaging).
- :func:`pwa_weights`: PWA's exponential weighting of a phase (PWA eq. 3, Alg. 1):
  ``w_k = (1-gamma) gamma^(m-k) / (1-gamma^m)``, ``gamma = gamma0^(ref_epochs/m)`` by default,
  the weights :class:`~polyak.averaging.PhaseWise` gives a phase of ``m`` epochs.

:func:`reconstruct` applies weights (or a :class:`~polyak.averaging.PowerEMAFit` of the stored
power-EMA profiles) to the snapshot files one at a time: its memory is one accumulator (the
result, one model's parameters in the stored dtype) plus one snapshot file, whatever the number
of snapshots. :func:`copy_to` and :func:`applied` put the result into a model, BatchNorm
statistics recomputed on a loader (:func:`~polyak.averaging.recalibrate_bn`) when given.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from polyak.averaging._tensors import is_sharded as _is_sharded
from polyak.averaging._tensors import local as _local
from polyak.averaging.bn import Forward, recalibrate_bn, saved_bn_buffers
from polyak.averaging.phasewise import phase_weights
from polyak.averaging.power_ema import power_ema_fit
from polyak.averaging.snapshot_dir import SnapshotDir, SnapshotInfo, local_shapes
from polyak.distributed import is_distributed, rank, world_size

__all__ = ["FAMILIES", "select", "uniform_weights", "end_only_weights", "ema_weights",
           "latest_weights", "pwa_weights", "reconstruct", "reconstruct_many", "copy_to", "applied"]

_BY = ("epoch", "step", "index")


# ---------------------------------------------------------------------- families
def _entries(snapshots: Any) -> list[SnapshotInfo]:
    entries = list(getattr(snapshots, "entries", snapshots))
    if not entries:
        raise ValueError("Invalid snapshots: there are none")
    return entries


def _bound(value: int | None, name: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"Invalid {name}: {value!r} (None or an integer)")
    return value


def select(snapshots: Any, start: int | None = None, end: int | None = None, *,
           by: str = "epoch") -> list[int]:
    """Positions of the snapshots whose ``by`` (epoch, step or index) lies in ``[start, end]``;
    a ValueError when none does."""
    if by not in _BY:
        raise ValueError(f"Invalid by: {by!r} (allowed: {', '.join(map(repr, _BY))})")
    start, end = _bound(start, "start"), _bound(end, "end")
    entries = _entries(snapshots)
    keys = [getattr(e, by) for e in entries]
    chosen = [i for i, k in enumerate(keys) if (start is None or k >= start)
              and (end is None or k <= end)]
    if not chosen:
        raise ValueError(f"Invalid window: no snapshot has {by} in [{start}, {end}] (the "
                         f"snapshots span {by} {keys[0]}..{keys[-1]})")
    return chosen


def _spread(n: int, chosen: list[int], values: Sequence[float]) -> list[float]:
    out = [0.0] * n
    for i, v in zip(chosen, values):
        out[i] = float(v)
    return out


def uniform_weights(snapshots: Any, start: int | None = None, end: int | None = None, *,
                    by: str = "epoch") -> list[float]:
    """``1/m`` on each of the ``m`` snapshots in ``[start, end]``."""
    chosen = select(snapshots, start, end, by=by)
    return _spread(len(_entries(snapshots)), chosen, [1.0 / len(chosen)] * len(chosen))


def end_only_weights(snapshots: Any, start: int | None = None, *, by: str = "epoch"
                     ) -> list[float]:
    """The uniform average from ``start`` to the last snapshot ("aggregated at the end only")."""
    return uniform_weights(snapshots, start, None, by=by)


def latest_weights(snapshots: Any, k: int) -> list[float]:
    """``1/k`` on each of the ``k`` latest snapshots."""
    n = len(_entries(snapshots))
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"Invalid k: {k!r} (an integer from 1 to the {n} snapshots)")
    return [0.0] * (n - k) + [1.0 / k] * k


def _check_unit(value: float, name: str, low_open: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not ((0.0 < value) if low_open else (0.0 <= value)) or value >= 1.0:
        allowed = "0 < {0} < 1" if low_open else "0 <= {0} < 1"
        raise ValueError(f"Invalid {name}: {value!r} (allowed: {allowed.format(name)})")
    return float(value)


def _decay(decay: float | None, half_life: float | None) -> float:
    if (decay is None) == (half_life is None):
        raise ValueError("ema_weights needs exactly one of decay and half_life")
    if half_life is None:
        return _check_unit(decay, "decay")
    ok = isinstance(half_life, (int, float)) and not isinstance(half_life, bool)
    if not ok or not math.isfinite(half_life) or half_life <= 0:
        raise ValueError(f"Invalid half_life: {half_life!r} (a number of snapshots > 0)")
    return 0.5 ** (1.0 / half_life)


def ema_weights(
    snapshots: Any, decay: float | None = None, *, half_life: float | None = None,
    bias_correction: bool = False, warmup: bool = False, warmup_gamma: float = 1.0,
    warmup_power: float = 2 / 3, start: int | None = None, end: int | None = None,
    by: str = "epoch",
) -> list[float]:
    """The weights of an EMA run over the snapshots in ``[start, end]`` (module docstring)."""
    d = _decay(decay, half_life)
    for name, value in (("warmup_gamma", warmup_gamma), ("warmup_power", warmup_power)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value <= 0:
            raise ValueError(f"Invalid {name}: {value!r} (a finite number > 0)")
    chosen = select(snapshots, start, end, by=by)
    m = len(chosen)
    decays = [min(d, 1.0 - (1.0 + k / warmup_gamma) ** -warmup_power) if warmup else d
              for k in range(m)]
    alphas = [1.0 - dk for dk in decays]
    if not bias_correction:
        alphas[0] = 1.0
    weights, keep = [0.0] * m, 1.0
    for k in range(m - 1, -1, -1):   # w_k = alpha_k prod_{j>k} (1 - alpha_j)
        weights[k] = alphas[k] * keep
        keep *= 1.0 - alphas[k]
    if bias_correction and not warmup:
        weights = [w / (1.0 - d ** m) for w in weights]
    return _spread(len(_entries(snapshots)), chosen, weights)


def pwa_weights(
    snapshots: Any, start: int | None = None, end: int | None = None, *,
    gamma: float | None = None, gamma0: float = 0.9, ref_epochs: float = 80, by: str = "epoch",
) -> list[float]:
    """PWA's weights of a phase made of the ``m`` snapshots in ``[start, end]``: ``gamma``, or
    ``gamma0^(ref_epochs/m)`` as :class:`~polyak.averaging.PhaseWise` computes it."""
    chosen = select(snapshots, start, end, by=by)
    if gamma is None:
        _check_unit(gamma0, "gamma0", low_open=True)
        ok = isinstance(ref_epochs, (int, float)) and not isinstance(ref_epochs, bool)
        if not ok or not math.isfinite(ref_epochs) or ref_epochs <= 0:
            raise ValueError(f"Invalid ref_epochs: {ref_epochs!r} (a finite number > 0)")
        gamma = gamma0 ** (ref_epochs / len(chosen))
    gamma = _check_unit(gamma, "gamma", low_open=True)
    return _spread(len(_entries(snapshots)), chosen, phase_weights(len(chosen), gamma))


#: the families by name (for a command line): each takes the snapshots, then its arguments, and
#: gives what :func:`reconstruct` takes ("power-ema" a :class:`PowerEMAFit`).
FAMILIES = {"uniform": uniform_weights, "end-only": end_only_weights, "ema": ema_weights,
            "latest": latest_weights, "pwa": pwa_weights, "power-ema": power_ema_fit}


# ---------------------------------------------------------------------- reconstruction
Terms = dict[int, list[tuple[int, float]]]   # snapshot index -> [(part, coefficient)]


def _coefficients(values: Any, n: int, name: str) -> list[float]:
    values = list(values)
    if len(values) != n or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                   and math.isfinite(v) for v in values):
        raise ValueError(f"Invalid {name}: {len(values)} values (one finite number per snapshot, "
                         f"{n} of them)")
    return [float(v) for v in values]


def _terms(snaps: SnapshotDir, average: Any) -> Terms:
    """The nonzero coefficients of every stored tensor group: part 0 the iterate, part 1+k
    the k-th profile. ``average``: iterate weights, a :class:`PowerEMAFit` (its
    ``profile_weights``) or both (:class:`_Both`)."""
    if isinstance(average, _Both):
        weights, profile_weights = average.weights, average.profile_weights
    elif hasattr(average, "profile_weights"):
        weights, profile_weights = None, average.profile_weights
    else:
        weights, profile_weights = average, None
    terms: Terms = {}
    n, k = len(snaps), len(snaps.gammas)
    if weights is not None:
        for i, w in enumerate(_coefficients(weights, n, "weights")):
            if w:
                terms.setdefault(i, []).append((0, w))
    if profile_weights is not None:
        rows = list(profile_weights)
        if len(rows) != n:
            raise ValueError(f"Invalid profile_weights: {len(rows)} rows (one per snapshot, {n})")
        for i, row in enumerate(rows):
            for part, w in enumerate(_coefficients(row, k, f"profile_weights[{i}]"), start=1):
                if w:
                    terms.setdefault(i, []).append((part, w))
    if not terms:
        raise ValueError("Invalid weights: every coefficient is zero (or none was given)")
    return terms


def _open(snapshots: Any) -> SnapshotDir:
    return snapshots if isinstance(snapshots, SnapshotDir) else SnapshotDir(snapshots)


def _plan(snaps: SnapshotDir, model: nn.Module | None) -> tuple[list[int | None], bool]:
    """The ranks whose files to read, and whether the result is this rank's shards only."""
    if model is not None:
        shapes = [tuple(p.shape) for p in model.parameters()]
        if shapes != snaps.shapes:
            raise ValueError(f"Invalid model: its parameter shapes {shapes[:4]}... are not those "
                             f"of the snapshots {snaps.shapes[:4]}... ({snaps.directory})")
        if any(_is_sharded(p) for p in model.parameters()):
            if not (snaps.sharded and is_distributed() and world_size() == snaps.world_size):
                raise ValueError(f"Invalid model: it is sharded (FSDP2) but the snapshots in "
                                 f"{snaps.directory} are not this process group's shards")
            return [rank()], True
    return snaps.ranks(), False


def _add_file(accs: list[list[Tensor]], term_sets: list[Terms], index: int,
              payload: dict[str, Any], places: list[Any]) -> None:
    parts = [payload["iterate"], *payload["profiles"]]
    keep = [i for i, p in enumerate(places) if p is not None]
    for acc, terms in zip(accs, term_sets):
        dst = [acc[i] if places[i][0] < 0 else acc[i].narrow(*places[i]) for i in keep]
        for part, c in terms.get(index, ()):
            torch._foreach_add_(dst, [parts[part][i] for i in keep], alpha=c)


@torch.no_grad()
def reconstruct_many(snapshots: Any, averages: Sequence[Any], *, model: nn.Module | None = None
                     ) -> list[dict[str, Tensor]]:
    """:func:`reconstruct` of several averages in ONE pass over the files (each read once);
    memory: one accumulator per average plus one snapshot file."""
    snaps = _open(snapshots)
    term_sets = [_terms(snaps, a) for a in averages]
    ranks, local = _plan(snaps, model)
    shapes = local_shapes(snaps.manifest, ranks[0]) if local else snaps.shapes
    dtypes = [getattr(torch, p["snapshot_dtype"]) for p in snaps.manifest["parameters"]]
    accs = [[torch.zeros(s, dtype=d) for s, d in zip(shapes, dtypes)] for _ in term_sets]
    for index in sorted({i for terms in term_sets for i in terms}):
        for r in ranks:
            payload = snaps.load(index, r)
            places = [(-1, 0, 0)] * len(shapes) if local else snaps.placements(r)
            _add_file(accs, term_sets, index, payload, places)
            del payload
    return [dict(zip(snaps.names, acc)) for acc in accs]


def reconstruct(snapshots: SnapshotDir | str | os.PathLike, weights: Any = None, *,
                profile_weights: Sequence[Sequence[float]] | None = None,
                model: nn.Module | None = None) -> dict[str, Tensor]:
    """``sum_i weights[i] * iterate_i + sum_i sum_k profile_weights[i][k] * profile_k,i`` over the
    snapshots: ``{parameter name: tensor}`` in the stored dtype, on the CPU.

    ``weights``: one number per snapshot (a family above), or a
    :class:`~polyak.averaging.PowerEMAFit` (its profile coefficients). Snapshots whose
    coefficients are all zero are not read. ``model`` (optional) is checked against the stored
    shapes; when its parameters are FSDP2 shards (under ``torch.distributed``, the process group
    that wrote the snapshots), each rank reads only its own files and gets its own shards, for
    :func:`copy_to`/:func:`applied` on that model. Otherwise sharded snapshots are assembled into
    full tensors (one rank's file at a time).
    """
    average = weights if profile_weights is None else _Both(weights, profile_weights)
    return reconstruct_many(snapshots, [average], model=model)[0]


class _Both:
    """Iterate weights and profile weights together (``reconstruct(w, profile_weights=...)``)."""

    def __init__(self, weights: Any, profile_weights: Any) -> None:
        self.weights, self.profile_weights = weights, profile_weights


def _check_state(model: nn.Module, state: dict[str, Tensor]) -> list[tuple[Tensor, Tensor]]:
    params = list(model.parameters())
    values = list(state.values())
    want = [tuple(_local(p).shape) for p in params]
    got = [tuple(t.shape) for t in values]
    if got != want:
        raise ValueError(f"Invalid state: its {len(got)} tensors {got[:4]}... do not fit the "
                         f"model's {len(want)} parameters {want[:4]}... (for an FSDP2 model pass "
                         "model= to reconstruct)")
    return list(zip(params, values))


@torch.no_grad()
def copy_to(model: nn.Module, state: dict[str, Tensor], bn_loader: Iterable[Any] | None = None,
            forward: Forward | None = None) -> nn.Module:
    """Write ``state`` (from :func:`reconstruct`) into ``model``'s trainable parameters for good
    (``requires_grad=False`` ones are left as they are, as the averages do) and, with
    ``bn_loader``, recompute its BatchNorm statistics; returns ``model``."""
    for p, t in _check_state(model, state):
        if p.requires_grad:
            _local(p).copy_(t)
    if bn_loader is not None:
        recalibrate_bn(model, bn_loader, forward=forward)
    return model


@contextlib.contextmanager
def applied(model: nn.Module, state: dict[str, Tensor], bn_loader: Iterable[Any] | None = None,
            forward: Forward | None = None) -> Iterator[nn.Module]:
    """Inside the block ``model`` holds ``state`` (BatchNorm recalibrated on ``bn_loader``);
    on exit, also when the block raises, its parameters and BatchNorm buffers are back bit for
    bit, as with a weight average's ``applied``."""
    pairs = _check_state(model, state)
    with torch.no_grad():
        live = [_local(p).detach().clone() for p, _ in pairs]
    try:
        with saved_bn_buffers(model):
            copy_to(model, state, bn_loader, forward)
            yield model
    finally:
        with torch.no_grad():
            for (p, _), saved in zip(pairs, live):
                _local(p).copy_(saved)
