"""Base of the optimizer wrappers (Lookahead, SAM): an ``Optimizer`` that owns no param groups.

``param_groups``, ``state`` and ``defaults`` are the wrapped optimizer's own objects (the same
list, dict and dict), so torch LR schedulers, ``zero_grad`` and anything else that edits
``param_groups`` act on the optimizer that does the update. ``isinstance(w, Optimizer)`` holds,
which ``torch.optim.lr_scheduler.LRScheduler`` requires.

Private: nothing here is part of the public API.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from torch import Tensor
from torch.optim import Optimizer

_HOOK_DICTS = (
    "_optimizer_step_pre_hooks",
    "_optimizer_step_post_hooks",
    "_optimizer_state_dict_pre_hooks",
    "_optimizer_state_dict_post_hooks",
    "_optimizer_load_state_dict_pre_hooks",
    "_optimizer_load_state_dict_post_hooks",
)


class OptimizerWrapper(Optimizer):
    """Delegates groups, state, defaults, ``zero_grad`` and ``add_param_group`` to ``inner``.

    ``Optimizer.__init__`` is not called on purpose: it would build a second, separate list of
    param groups. Only its hook registries and the step-hook patching are set up here.
    """

    def __init__(self, inner: Optimizer) -> None:
        self._inner = inner
        for name in _HOOK_DICTS:
            setattr(self, name, OrderedDict())
        self._patch_step_function()

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self._inner.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self._inner.param_groups = value

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self._inner.state

    @state.setter
    def state(self, value: Any) -> None:
        self._inner.state = value

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self._inner.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self._inner.defaults = value

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._inner.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self._inner.add_param_group(param_group)

    def _all_params(self) -> list[Tensor]:
        """Every parameter of every group, in order (the order of ``state_dict``)."""
        return [p for group in self.param_groups for p in group["params"]]

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._inner!r})"
