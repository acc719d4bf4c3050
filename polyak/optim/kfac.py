"""KFACSqrt: Kronecker-factored inverse-SQUARE-ROOT preconditioning (stage 1 of TSO-ALRA).

Ida & Fujiwara, "Improving Generalization Performance of Adaptive Learning Rate by Switching from
Block Diagonal Matrix Preconditioning to SGD", eq. 14-18 and Algorithm 1 lines 2-8. Per
Linear / Conv1d / Conv2d layer (``groups == 1``) with weight gradient ``G`` (out x D, the bias as
the last column against a homogeneous 1):

    A <- (1 - gamma) A + gamma A_batch,   B <- (1 - gamma) B + gamma B_batch      (eq. 17-18)
    every T_int steps:  A^(-1/2) = U (max(Lambda, 0) + eps I)^(-1/2) U^T  (eigh), same for B
    W <- W - lr * B^(-1/2) G A^(-1/2)      (eq. 16; = (A kron B)^(-1/2) vec(G), column-major vec)

``gamma = factor_decay`` is the weight of the new estimate, ``T_int = inv_every``,
``eps = damping`` (added to each factor separately, so the preconditioner is exactly
``(A + eps I)^(-1/2) kron (B + eps I)^(-1/2)``). The scaling of ``A_batch`` and ``B_batch`` (K-FAC
conventions, per-example Fisher of the batch-mean loss) is written out in
:mod:`polyak.optim._kfac_factors`. Every other parameter (BatchNorm, embeddings, grouped
convolutions, ...) gets plain SGD with the same ``momentum``/``weight_decay``.

Start of the factors (``factor_init``). With ``"batches"`` (the default) the ``n``-th update of a
layer's factors uses the weight ``gamma_n = max(gamma, 1/n)``: the factors are the running mean of
the first ``1/gamma`` batches' statistics (the first update replaces the identity start), then the
EMA of eq. 17-18; this is the bias-corrected EMA, so the first inverse roots already come from the
data instead of an identity-dominated average (with ``gamma = 0.05`` the identity would keep
``0.95^n`` of the weight after ``n`` steps). ``"identity"`` keeps the plain EMA from ``A = B = I``
(the paper's "mixed into the identity" start). ``gamma = 1`` makes the two the same.

Timing (step counter ``t`` from 1). Factors start at the identity. Statistics are captured during
the forward/backward that precedes a factor step, ``t = 1, 1 + factor_every, ...``, and folded in
at that step; inverse roots are recomputed at ``t = 1, 1 + inv_every, ...`` after the factor
update (the paper's ``t = 0 mod T_int``, shifted so that the first step has roots).

Points beyond the paper (which uses neither):
- ``weight_decay`` is coupled L2: ``G + wd W`` is preconditioned (like ``torch.optim.SGD``);
- ``momentum`` is a heavy-ball buffer on the preconditioned update, ``buf = mu buf + u``
  (the first buffer is ``u``), ``W <- W - lr buf``; for the SGD parameters this is exactly
  ``torch.optim.SGD(momentum=mu, dampening=0)``.

Capture. A forward hook keeps the layer input and registers a tensor hook on the layer output
that receives ``dL/ds`` during backward; it acts only when the module is in training mode, grad
mode is on and the next step is a factor step, so evaluation, ``torch.no_grad()`` and
non-factor steps cost one Python call per layer. A forward without a backward leaves no trace; of
several forward/backward pairs before ``step()`` (SAM's two passes, gradient accumulation) the
LAST one supplies the statistics (gradient accumulation: the last micro-batch; ``B`` assumes a
loss that is the mean over that micro-batch, so a loss divided by ``k`` shrinks ``B`` by
``k^2``); likewise a module called several times in one forward contributes one call's
statistics. Under ``torch.distributed`` (DDP) each rank's batch factors are all-reduced
(:func:`polyak.optim._kfac_factors.combine_ranks`) before they are folded in, so every rank holds
the factors of the global batch and preconditions identically. The output tensor hook is used
instead of ``register_full_backward_hook`` because
full backward hooks break models that modify a layer's output in place
(``Conv2d -> ReLU(inplace=True)``, as in VGG and AlexNet, the paper's models).

Coverage. Every trainable parameter outside the supported layers gets plain SGD; when one of
them is not a normalization layer's scale or shift (those get SGD by design), one ``UserWarning``
at construction names them with the share of parameters preconditioned (e.g. a GRU's weights:
"TSO-ALRA preconditions 1,674 of 39,306 parameters (4.3 %); these get plain SGD: ..."); a
model without any supported layer is said to be trained by plain SGD in the same warning.
``nn.MultiheadAttention`` (as in ``nn.TransformerEncoder``) calls its projections functionally
(``in_proj_weight``, ``out_proj.weight``): nothing can be captured for them, so they get plain SGD
and the warning names the attention modules; the feed-forward Linear layers around them are
preconditioned. A supported layer whose forward did not run in the first step (used
functionally elsewhere) is named in a second ``UserWarning``.
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from polyak.optim import _kfac_factors as kf
from polyak.optim._kfac_coverage import coverage_message

__all__ = ["KFACSqrt"]

_FACTOR_KEYS = ("A", "B", "A_inv_sqrt", "B_inv_sqrt")
FACTOR_INITS = ("batches", "identity")


def _check_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Invalid {name}: {value!r} (allowed: an integer >= 1)")


def _validate(lr, factor_decay, damping, inv_every, factor_every, momentum, weight_decay,
              factor_init="batches") -> None:
    if factor_init not in FACTOR_INITS:
        raise ValueError(f"Invalid factor_init: {factor_init!r} "
                         f"(allowed: {', '.join(map(repr, FACTOR_INITS))})")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"Invalid lr: {lr!r} (allowed: a finite number > 0)")
    if not (isinstance(factor_decay, (int, float)) and 0 < factor_decay <= 1):
        raise ValueError(f"Invalid factor_decay: {factor_decay!r} (allowed: 0 < factor_decay <= 1)")
    if not (isinstance(damping, (int, float)) and math.isfinite(damping) and damping >= 0):
        raise ValueError(f"Invalid damping: {damping!r} (allowed: a finite number >= 0)")
    _check_int("inv_every", inv_every)
    _check_int("factor_every", factor_every)
    if not (isinstance(momentum, (int, float)) and 0 <= momentum < 1):
        raise ValueError(f"Invalid momentum: {momentum!r} (allowed: 0 <= momentum < 1)")
    if not (isinstance(weight_decay, (int, float)) and math.isfinite(weight_decay)
            and weight_decay >= 0):
        raise ValueError(f"Invalid weight_decay: {weight_decay!r} (allowed: a finite number >= 0)")


class _Layer:
    """One preconditioned layer: its module, parameters and forward-hook handle."""

    __slots__ = ("module", "name", "weight", "bias", "handle")

    def __init__(self, module: nn.Module, name: str = "") -> None:
        self.module, self.name = module, name
        self.weight: Tensor = module.weight
        self.bias: Tensor | None = module.bias
        self.handle: Any = None


def _forward_hook(ref: weakref.ref, index: int, module: nn.Module, inputs: tuple, output) -> None:
    opt = ref()
    if opt is None or not opt._collect or not module.training or not torch.is_grad_enabled():
        return
    if isinstance(output, Tensor) and output.requires_grad:
        output.register_hook(partial(_grad_hook, ref, index, inputs[0].detach()))


def _grad_hook(ref: weakref.ref, index: int, x: Tensor, grad: Tensor) -> None:
    opt = ref()
    if opt is None or index >= len(opt._layers):  # released (TSO-ALRA switch) meanwhile
        return
    module = opt._layers[index].module
    dtype = module.weight.dtype
    n = kf.batch_size(module, x)
    with torch.no_grad():
        A = kf.input_factor(module, x, dtype)
        B = kf.grad_factor(module, grad, n, dtype)
    opt._pending[index] = (A, B, n)


def _functional_layers(model: nn.Module) -> set[int]:
    """ids of the Linear modules whose weights ``nn.MultiheadAttention`` uses functionally
    (``out_proj``: its forward is never called)."""
    return {id(m.out_proj) for m in model.modules() if isinstance(m, nn.MultiheadAttention)}


class KFACSqrt(Optimizer):
    """Kronecker-factored ``F^(-1/2)`` preconditioning of a model's Linear/Conv layers.

    Args:
        model: the network; its supported layers are found by ``model.modules()`` and hooked,
            all of ``model.parameters()`` are optimised (one param group).
        lr: learning rate ``eta`` (> 0).
        factor_decay: ``gamma`` of eq. 17-18, the weight of the new batch estimate, in (0, 1].
        damping: ``eps`` added to the eigenvalues of each factor (>= 0).
        inv_every: ``T_int``, steps between inverse-root refreshes (integer >= 1).
        factor_every: steps between factor updates (integer >= 1).
        factor_init: ``"batches"`` (running mean of the first ``1/factor_decay`` updates, then
            the EMA) or ``"identity"`` (the EMA from the identity); see the module docstring.
        momentum: heavy-ball coefficient on the update, in [0, 1) (0: the paper).
        weight_decay: coupled L2 coefficient (>= 0; 0: the paper).
        foreach: multi-tensor (``torch._foreach_*``) path for the momentum and parameter
            updates; ``None`` means ``True``. ``False`` is the single-tensor reference path.

    Per-layer state (``self.state[layer.weight]``): ``A``, ``B``, ``A_inv_sqrt``, ``B_inv_sqrt``,
    ``factor_updates`` (how many batches the factors have seen);
    per parameter: ``momentum_buffer`` when ``momentum > 0``. Parameters it does not cover:
    see "Coverage" in the module docstring.
    """

    label = "KFACSqrt"   # the name the coverage warning gives the optimizer

    def __init__(self, model: nn.Module, *, lr: float = 1e-2, factor_decay: float = 0.05,
                 damping: float = 1e-3, inv_every: int = 100, factor_every: int = 1,
                 momentum: float = 0.0, weight_decay: float = 0.0,
                 foreach: bool | None = None, factor_init: str = "batches") -> None:
        _validate(lr, factor_decay, damping, inv_every, factor_every, momentum, weight_decay,
                  factor_init)
        if not isinstance(model, nn.Module):
            raise TypeError(f"KFACSqrt takes the model (an nn.Module), got {type(model).__name__}")
        defaults = dict(lr=lr, factor_decay=factor_decay, damping=damping, inv_every=inv_every,
                        factor_every=factor_every, momentum=momentum,
                        weight_decay=weight_decay, foreach=foreach, factor_init=factor_init)
        super().__init__(model.parameters(), defaults)
        self._t = 0
        self._collect = True
        self._pending: dict[int, tuple[Tensor, Tensor, int]] = {}
        self._layers = self._find_layers(model)
        self._unseen_checked = False
        covered = [p for lay in self._layers for p in (lay.weight, lay.bias) if p is not None]
        owned = [p for g in self.param_groups for p in g["params"]]
        message = coverage_message(self.label, model, owned, covered)
        if message is not None:   # once per optimizer: what gets plain SGD, and the share
            warnings.warn(message, UserWarning, stacklevel=2)
        self._init_factors()
        ref = weakref.ref(self)
        for i, layer in enumerate(self._layers):
            layer.handle = layer.module.register_forward_hook(partial(_forward_hook, ref, i))

    def _find_layers(self, model: nn.Module) -> list[_Layer]:
        owned = {id(p) for g in self.param_groups for p in g["params"]}
        functional = _functional_layers(model)
        layers, claimed = [], set()
        for name, module in model.named_modules():
            if not kf.is_supported(module) or not module.weight.requires_grad:
                continue
            if id(module.weight) in claimed or id(module.weight) not in owned:
                continue  # a weight tied to an earlier layer keeps that layer's preconditioner
            if id(module) in functional:
                continue  # its forward never runs: no statistics can be captured
            claimed.add(id(module.weight))
            layers.append(_Layer(module, name))
        return layers

    def _warn_unseen(self) -> None:
        """Once, at the first factor update: name the layers whose forward did not run."""
        self._unseen_checked = True
        unseen = [lay.name or type(lay.module).__name__ for i, lay in enumerate(self._layers)
                  if i not in self._pending]
        if self._pending and unseen:
            warnings.warn(f"{type(self).__name__}: no statistics for {', '.join(unseen)} in the "
                          "first step (their forward did not run as a module call: called "
                          "functionally, or unused); they keep identity factors (plain SGD "
                          "direction) until they run", UserWarning, stacklevel=3)

    def _init_factors(self) -> None:
        for layer in self._layers:
            w = layer.weight
            d = w[0].numel() + (layer.bias is not None)
            eye_a = torch.eye(d, dtype=w.dtype, device=w.device)
            eye_b = torch.eye(w.shape[0], dtype=w.dtype, device=w.device)
            self.state[w].update(A=eye_a, B=eye_b, A_inv_sqrt=eye_a.clone(),
                                 B_inv_sqrt=eye_b.clone())

    @property
    def layers(self) -> tuple[nn.Module, ...]:
        """The preconditioned modules, in ``model.modules()`` order."""
        return tuple(layer.module for layer in self._layers)

    def factor_nbytes(self) -> int:
        """Bytes held by the factors and their inverse roots."""
        return sum(self.state[lay.weight][k].nbytes for lay in self._layers for k in _FACTOR_KEYS)

    def remove_hooks(self) -> None:
        """Unhook the model (no more statistics are captured)."""
        for layer in getattr(self, "_layers", ()):
            if layer.handle is not None:
                layer.handle.remove()
                layer.handle = None

    def _release_layers(self) -> None:
        """Unhook and forget every layer and its factor memory: from now on, plain SGD."""
        self.remove_hooks()
        for layer in self._layers:
            for k in _FACTOR_KEYS:
                self.state[layer.weight].pop(k, None)
        self._layers = []
        self._pending.clear()

    def __del__(self) -> None:
        self.remove_hooks()

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update (Algorithm 1, lines 2-8); plain SGD for the non-layer parameters."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._t += 1
        group0 = self.param_groups[0]
        if self._layers:
            self._update_factors(group0)
            if (self._t - 1) % group0["inv_every"] == 0:
                self._refresh_inverses(group0)
        directions = self._layer_directions(group0)
        for group in self.param_groups:
            params, d_p = [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                params.append(p)
                d_p.append(directions.get(id(p), p.grad))
            plain = [id(p) not in directions for p in params]
            if group["foreach"] is False:
                self._apply_single(group, params, d_p, plain)
            else:
                self._apply_foreach(group, params, d_p, plain)
        self._collect = self._t % group0["factor_every"] == 0
        return loss

    def _update_factors(self, group: dict) -> None:
        """Eq. 17-18 with the last captured batch statistics (skipped for unseen layers)."""
        if not self._unseen_checked:
            self._warn_unseen()
        if not self._pending:
            return
        by_weight: dict[float, tuple[list[Tensor], list[Tensor]]] = {}
        pending = kf.combine_ranks(self._pending)  # the identity without torch.distributed
        for i, (A_batch, B_batch) in pending.items():
            st = self.state[self._layers[i].weight]
            st["factor_updates"] = n = st.get("factor_updates", 0) + 1
            gamma = self._factor_weight(group, n)
            factors, batch = by_weight.setdefault(gamma, ([], []))
            factors += [st["A"], st["B"]]
            batch += [A_batch, B_batch]
        self._pending.clear()
        for gamma, (factors, batch) in by_weight.items():
            if group["foreach"] is False:
                for f, b in zip(factors, batch):
                    f.mul_(1.0 - gamma).add_(b, alpha=gamma)
            else:
                torch._foreach_mul_(factors, 1.0 - gamma)
                torch._foreach_add_(factors, batch, alpha=gamma)

    @staticmethod
    def _factor_weight(group: dict, n: int) -> float:
        """The weight of the ``n``-th batch estimate (1-based): ``gamma``, or ``max(gamma, 1/n)``
        when the factors start from the first batches."""
        gamma = group["factor_decay"]
        batches = group.get("factor_init", "identity") == "batches"  # older states: identity
        return max(gamma, 1.0 / n) if batches else gamma

    def _refresh_inverses(self, group: dict) -> None:
        for layer in self._layers:
            st = self.state[layer.weight]
            st["A_inv_sqrt"] = kf.inverse_sqrt(st["A"], group["damping"])
            st["B_inv_sqrt"] = kf.inverse_sqrt(st["B"], group["damping"])

    def _layer_directions(self, group: dict) -> dict[int, Tensor]:
        """``B^(-1/2) (G + wd W) A^(-1/2)`` split back into weight and bias directions (by id)."""
        out: dict[int, Tensor] = {}
        wd = group["weight_decay"]
        for layer in self._layers:
            w, b = layer.weight, layer.bias
            if w.grad is None:
                continue
            g_w = w.grad if wd == 0 else w.grad.add(w, alpha=wd)
            g_b = None
            if b is not None:
                g_b = torch.zeros_like(b) if b.grad is None else b.grad
                g_b = g_b if wd == 0 or b.grad is None else g_b.add(b, alpha=wd)
            st = self.state[w]
            G = kf.homogeneous(g_w, g_b)
            U = torch.mm(torch.mm(st["B_inv_sqrt"], G), st["A_inv_sqrt"])
            d = G.shape[1] - (b is not None)
            out[id(w)] = U[:, :d].reshape(w.shape)
            if b is not None and b.grad is not None:
                out[id(b)] = U[:, d]
        return out

    def _apply_single(self, group: dict, params: list, d_p: list, plain: list) -> None:
        lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
        for p, d, is_plain in zip(params, d_p, plain):
            if wd != 0 and is_plain:
                d = d.add(p, alpha=wd)
            if mu != 0:
                st = self.state[p]
                buf = st.get("momentum_buffer")
                if buf is None:
                    buf = st["momentum_buffer"] = torch.clone(d).detach()
                else:
                    buf.mul_(mu).add_(d)
                d = buf
            p.add_(d, alpha=-lr)

    def _apply_foreach(self, group: dict, params: list, d_p: list, plain: list) -> None:
        if not params:
            return
        lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
        if wd != 0:
            idx = [i for i, is_plain in enumerate(plain) if is_plain]
            if idx:
                decayed = torch._foreach_add([d_p[i] for i in idx], [params[i] for i in idx],
                                             alpha=wd)
                for i, d in zip(idx, decayed):
                    d_p[i] = d
        if mu != 0:
            bufs = [self.state[p].get("momentum_buffer") for p in params]
            if all(b is not None for b in bufs):
                torch._foreach_mul_(bufs, mu)
                torch._foreach_add_(bufs, d_p)
            else:
                for i, (p, b) in enumerate(zip(params, bufs)):
                    if b is None:
                        bufs[i] = self.state[p]["momentum_buffer"] = torch.clone(d_p[i]).detach()
                    else:
                        b.mul_(mu).add_(d_p[i])
            d_p = bufs
        torch._foreach_add_(params, d_p, alpha=-lr)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """torch's optimizer state (factors, inverse roots, buffers) plus the step counter."""
        sd = super().state_dict()
        sd["kfac"] = {"step": self._t, "layers": len(self._layers)}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        sd = dict(state_dict)
        meta = sd.pop("kfac", None)
        if meta is None:
            raise ValueError(f"not a {type(self).__name__} state (no 'kfac' entry)")
        if meta["layers"] != len(self._layers):
            raise ValueError(f"the state has {meta['layers']} preconditioned layers, "
                             f"this optimizer has {len(self._layers)}")
        sd["state"] = {k: {n: v.clone() if isinstance(v, Tensor) else v for n, v in s.items()}
                       for k, s in sd["state"].items()}
        super().load_state_dict(sd)
        self._t = int(meta["step"])
        self._pending.clear()
        self._collect = self._t % self.param_groups[0]["factor_every"] == 0
