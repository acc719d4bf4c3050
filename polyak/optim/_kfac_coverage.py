"""Which parameters K-FAC preconditions, said once per optimizer (TSO-ALRA, KFACSqrt).

K-FAC's Kronecker factors exist for layers computing ``s = W a`` as a module call: ``nn.Linear``,
``nn.Conv1d`` and ``nn.Conv2d`` with ``groups == 1`` (:func:`polyak.optim._kfac_factors.
is_supported`). Every other trainable parameter gets plain SGD. That is by design for the scales
and shifts of normalization layers (BatchNorm, LayerNorm, GroupNorm, InstanceNorm, RMSNorm:
vectors acting elementwise, which K-FAC implementations leave to the base update), and it is
said for the rest (recurrent layers, embeddings, grouped convolutions, attention projections,
bare ``nn.Parameter``): one ``UserWarning`` naming them, with the share of the parameters that
is preconditioned, e.g. "TSO-ALRA preconditions 1,674 of 39,306 parameters (4.3 %); these get
plain SGD: embed.weight, gru.weight_ih_l0, ...".
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

__all__ = ["coverage_message"]

NORMALIZATION = (_BatchNorm, _InstanceNorm, nn.LayerNorm, nn.GroupNorm,
                 *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))
_LISTED = 8   # names listed before "and N more"


def _normalization_params(model: nn.Module) -> set[int]:
    return {id(p) for m in model.modules() if isinstance(m, NORMALIZATION)
            for p in m.parameters(recurse=False)}


def coverage_message(label: str, model: nn.Module, owned: Iterable[Tensor],
                     covered: Iterable[Tensor]) -> str | None:
    """The warning for ``model`` when some trainable parameter of ``owned`` (the optimizer's)
    other than a normalization layer's is not in ``covered`` (the preconditioned weights and
    biases), or when nothing is covered; ``None`` when every other parameter is covered."""
    owned_ids = {id(p) for p in owned if p.requires_grad}
    covered_ids = {id(p) for p in covered} & owned_ids
    norms = _normalization_params(model)
    named = [(n, p) for n, p in model.named_parameters() if id(p) in owned_ids]
    plain = [n for n, p in named if id(p) not in covered_ids and id(p) not in norms]
    if not plain and covered_ids:
        return None
    total = sum(p.numel() for _, p in named)
    done = sum(p.numel() for _, p in named if id(p) in covered_ids)
    share = 100.0 * done / total if total else 0.0
    listed = ", ".join(plain[:_LISTED]) + (f" and {len(plain) - _LISTED} more"
                                           if len(plain) > _LISTED else "")
    text = f"{label} preconditions {done:,} of {total:,} parameters ({share:.1f} %)"
    if plain:
        text += f"; these get plain SGD: {listed}"
    attention = [n or "model" for n, m in model.named_modules()
                 if isinstance(m, nn.MultiheadAttention)]
    if attention:
        text += (". nn.MultiheadAttention computes its projections functionally, so their "
                 f"inputs and output gradients cannot be captured: {', '.join(attention)} "
                 "(in_proj and out_proj) get plain SGD")
    if not covered_ids:
        return text + (". The model has no Linear/Conv1d/Conv2d (groups=1) layer to "
                       "precondition: every parameter gets plain SGD")
    return text + (" (K-FAC covers Linear, Conv1d and Conv2d layers with groups=1 called as "
                   "modules; normalization layers' scales and shifts get plain SGD by design)")
