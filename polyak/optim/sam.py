"""SAM (Foret et al., ICLR 2021, Eq. 2 and Algorithm 1) and ASAM (Kwon et al., ICML 2021, Eq. 9).

The sharpness-aware base of "averaged SAM" in the parameter-averaging paper (Nitanda et al.).
docs/methods.md section 4, following the authors' code (davda54/sam) where it is more precise:

    first step:   n = || g ||_2           over ALL parameters   (ASAM: || |w| * g ||_2)
                  e = rho / (n + 1e-12) * g                     (ASAM: * w^2)
                  remember w;  w <- w + e
    second step:  w <- remembered w;  base step with the gradient taken at w + e

``rho=0`` is the base optimizer exactly. BatchNorm running statistics must come from the clean
forward pass only: give ``model=`` and ``step(closure)`` restores them after the second pass
(or wrap your own second pass in ``with frozen_bn_stats(model):``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.parameter import UninitializedBuffer
from torch.optim import Optimizer

from polyak.optim._functional import by_device_and_dtype, check, check_nonneg, use_foreach
from polyak.optim._wrapper import OptimizerWrapper

__all__ = ["SAM", "frozen_bn_stats"]


@contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """Within the block, forward passes in train mode do not change the running statistics
    (``running_mean``, ``running_var``, ``num_batches_tracked``) of any BatchNorm (or InstanceNorm
    with ``track_running_stats``) layer of ``model``: they are restored exactly on exit.
    Normalisation inside the block still uses the batch statistics, as in training."""
    saved: list[tuple[Tensor, Tensor]] = []
    for module in model.modules():
        if isinstance(module, _NormBase) and module.track_running_stats:
            for buf in (module.running_mean, module.running_var, module.num_batches_tracked):
                if isinstance(buf, Tensor) and not isinstance(buf, UninitializedBuffer):
                    saved.append((buf, buf.clone()))
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)


def _flat_params(params: Iterable[Any]) -> list[Tensor]:
    out: list[Tensor] = []
    for item in params:
        out.extend(item["params"] if isinstance(item, dict) else [item])
    return out


def _build_base(params: Any, base_optimizer: Any, base_kwargs: dict[str, Any]) -> Optimizer:
    if isinstance(base_optimizer, type) and issubclass(base_optimizer, Optimizer):
        return base_optimizer(params, **base_kwargs)
    if not isinstance(base_optimizer, Optimizer):
        check("base_optimizer", base_optimizer, False,
              "a torch.optim.Optimizer subclass, or an instance built on the same params")
    if base_kwargs:
        raise ValueError(f"Invalid base optimizer arguments {sorted(base_kwargs)}: only allowed "
                         "when base_optimizer is a class (an instance is already configured)")
    given = {id(p) for p in _flat_params(params)}
    own = {id(p) for group in base_optimizer.param_groups for p in group["params"]}
    if given != own:
        raise ValueError("Invalid params: with a base_optimizer instance, params must be exactly "
                         "the tensors that instance optimizes")
    return base_optimizer


class SAM(OptimizerWrapper):
    """Sharpness-aware minimization around any base optimizer (``adaptive=True``: ASAM).

    ``base_optimizer`` is a class, built as ``base_optimizer(params, **base_kwargs)``, or an
    instance already built on ``params``. SAM shares its ``param_groups`` (each group gains
    ``rho`` and ``adaptive`` keys), ``state`` and ``state_dict`` with the base. The perturbation
    loops use the multi-tensor path unless the base's ``defaults["foreach"]`` is False.

    Contract of ``step(closure)``: ``closure()`` does a forward AND backward pass and returns the
    loss (it need not zero the gradients: ``step`` does). ``step`` calls it twice - at ``w``
    (clean pass), then at ``w + e`` - and returns the clean loss; do not call ``backward`` before
    ``step``. With ``model=`` the second pass leaves BatchNorm running statistics untouched. For
    a hand-written loop use ``first_step``/``second_step`` and ``frozen_bn_stats``.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], base_optimizer: Any,
                 rho: float = 0.05, adaptive: bool = False, *, model: nn.Module | None = None,
                 **base_kwargs: Any) -> None:
        check_nonneg("rho", rho)
        check("adaptive", adaptive, isinstance(adaptive, bool), "True or False")
        check("model", model, model is None or isinstance(model, nn.Module),
              "None or a torch.nn.Module")
        params = list(params)
        base = _build_base(params, base_optimizer, base_kwargs)
        for group in base.param_groups:
            check_nonneg("rho", group.setdefault("rho", rho))
            group.setdefault("adaptive", adaptive)
        super().__init__(base)
        self.base_optimizer = base
        self.model = model
        self._backup: dict[Tensor, Tensor] = {}
        self._perturbed: list[Tensor] | None = None

    def _foreach(self, tensors: list[Tensor]) -> bool:
        return use_foreach(self.defaults.get("foreach"), tensors)

    def _groups_with_grad(self) -> list[tuple[dict[str, Any], list[Tensor]]]:
        return [(g, [p for p in g["params"] if p.grad is not None]) for g in self.param_groups]

    def _grad_norm(self, groups: list[tuple[dict[str, Any], list[Tensor]]],
                   foreach: bool) -> Tensor:
        """Global L2 norm of ``g`` (of ``|w|*g`` in adaptive groups) over all groups."""
        norms: list[Tensor] = []
        for group, ps in groups:
            grads = [p.grad for p in ps]
            if foreach:
                if group["adaptive"]:
                    grads = torch._foreach_abs(ps)
                    torch._foreach_mul_(grads, [p.grad for p in ps])
                norms.extend(torch._foreach_norm(grads))
            else:
                if group["adaptive"]:
                    grads = [p.abs().mul_(g) for p, g in zip(ps, grads)]
                norms.extend(torch.linalg.vector_norm(g) for g in grads)
        device = norms[0].device
        dtype = torch.float64 if any(n.dtype == torch.float64 for n in norms) else torch.float32
        return torch.linalg.vector_norm(torch.stack([n.to(device, dtype) for n in norms]))

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Remember ``w`` and move to ``w + e``; parameters without a gradient are not moved."""
        groups = [(g, ps) for g, ps in self._groups_with_grad() if ps]
        self._perturbed = [p for _, ps in groups for p in ps]
        if groups:
            foreach = self._foreach(self._perturbed)
            norm = self._grad_norm(groups, foreach)
            for group, ps in groups:
                self._perturb(ps, group["rho"] / (norm + 1e-12), group["adaptive"], foreach)
        if zero_grad:
            self.zero_grad()

    def _perturb(self, ps: list[Tensor], scale: Tensor, adaptive: bool, foreach: bool) -> None:
        for p in ps:
            if p not in self._backup:
                self._backup[p] = torch.empty_like(p)
        backups = [self._backup[p] for p in ps]
        grads = [p.grad for p in ps]
        if foreach:
            for p_, g_, b_ in by_device_and_dtype([ps, grads, backups]):
                torch._foreach_copy_(b_, p_)
                e = torch._foreach_mul(g_, scale.to(p_[0].device))
                if adaptive:
                    torch._foreach_mul_(e, p_)
                    torch._foreach_mul_(e, p_)
                torch._foreach_add_(p_, e)
            return
        for p, g, b in zip(ps, grads, backups):
            b.copy_(p)
            e = g.mul(scale.to(p.device))
            if adaptive:
                e.mul_(p).mul_(p)
            p.add_(e)

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Restore the ``w`` remembered by ``first_step``, then one base step with the current
        gradients (those taken at ``w + e``)."""
        if self._perturbed is None:
            raise RuntimeError("SAM.second_step() called without a first_step() before it")
        self.restore()
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def restore(self) -> None:
        """Move back to the ``w`` remembered by ``first_step`` without a base step (a step that
        is dropped, e.g. an overflowed mixed-precision step). A no-op without ``first_step``."""
        if self._perturbed is None:
            return
        ps, self._perturbed = self._perturbed, None
        backups = [self._backup[p] for p in ps]
        if ps and self._foreach(ps):
            for p_, b_ in by_device_and_dtype([ps, backups]):
                torch._foreach_copy_(p_, b_)
        else:
            for p, b in zip(ps, backups):
                p.copy_(b)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Clean pass, ``first_step``, pass at ``w + e``, ``second_step``; returns clean loss."""
        if closure is None:
            raise ValueError(
                "SAM.step needs a closure that runs the forward and backward pass and returns "
                "the loss, e.g. `def closure(): loss = loss_fn(model(x), y); loss.backward(); "
                "return loss`; it is called twice")
        self.zero_grad()
        with torch.enable_grad():
            loss = closure()
        self.first_step(zero_grad=True)
        frozen = frozen_bn_stats(self.model) if self.model is not None else nullcontext()
        with torch.enable_grad(), frozen:
            closure()
        self.second_step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state_dict (its groups carry ``rho`` and ``adaptive``)."""
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_optimizer.load_state_dict(state_dict)
