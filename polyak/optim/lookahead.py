"""Lookahead (Zhang, Lucas, Hinton & Ba, NeurIPS 2019, Algorithm 1): k steps forward, 1 step back.

A baseline of the phase-wise aggregation paper (Kobayashi, Table 1c: "LA", k=5) and combinable
with Gadam (Granziol et al., supplement, "Gadam and Lookahead"). docs/methods.md section 3. Slow
weights ``phi`` are copied from the fast weights ``theta`` at construction; after every ``k``
steps of the inner optimizer

    phi <- phi + alpha * (theta - phi);   theta <- phi

The inner optimizer's state (momentum, Adam moments) is left as it is (the paper's default; the
authors' code also offers pulling the momentum back, which is not done here). The slow weights and
the step counter are part of ``state_dict`` (a known bug elsewhere lost them on checkpoint).

The weights Lookahead produces are the slow ones: the Lookahead authors evaluate ``phi``, not the
fast weights of a cycle in progress. :meth:`eval` puts the slow weights into the parameters and
:meth:`train` puts the fast ones back (the evaluation-point protocol of schedule-free optimizers,
which :meth:`polyak.method.Method.eval_weights` follows); :meth:`to_slow` ends Lookahead, leaving
the model at its slow weights for the inner optimizer to go on from (Gadam + Lookahead's switch).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from polyak.optim._functional import (
    by_device_and_dtype,
    check,
    check_foreach,
    is_real,
    use_foreach,
)
from polyak.optim._wrapper import OptimizerWrapper

__all__ = ["Lookahead"]


class Lookahead(OptimizerWrapper):
    """Wraps any ``optimizer``: its ``param_groups`` (the same list), ``state`` and ``zero_grad``
    are Lookahead's, so LR schedulers can be built on the Lookahead object itself.

    ``step(closure)`` runs one inner step (passing ``closure`` on) and, on every ``k``-th call,
    the slow-weight sync. Returns what the inner step returns.
    """

    def __init__(self, optimizer: Optimizer, k: int = 5, alpha: float = 0.5, *,
                 foreach: bool | None = None) -> None:
        check("optimizer", optimizer, isinstance(optimizer, Optimizer),
              "a torch.optim.Optimizer instance")
        check("k", k, isinstance(k, int) and not isinstance(k, bool) and k >= 1,
              "an integer k >= 1")
        check("alpha", alpha, is_real(alpha) and 0 < alpha <= 1, "0 < alpha <= 1")
        check_foreach(foreach)
        super().__init__(optimizer)
        self.optimizer = optimizer
        self.k = k
        self.alpha = float(alpha)
        self.foreach = foreach
        self.step_count = 0
        self._fast: list[Tensor] | None = None  # the fast weights while eval() shows the slow
        self._slow: dict[Tensor, Tensor] = {}
        for p in self._all_params():
            self._slow[p] = p.detach().clone()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the inner optimizer; its slow weights start at the current values."""
        super().add_param_group(param_group)
        for p in self.param_groups[-1]["params"]:
            self._slow[p] = p.detach().clone()

    def slow_weights(self) -> list[Tensor]:
        """The slow weights, in the order of ``param_groups`` (live tensors: do not modify)."""
        return [self._slow_of(p) for p in self._all_params()]

    def _slow_of(self, p: Tensor) -> Tensor:
        if p not in self._slow:  # a group added to the inner optimizer directly
            self._slow[p] = p.detach().clone()
        return self._slow[p]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One inner step; every ``k``-th call also ``slow += alpha*(fast - slow); fast = slow``."""
        loss = self.optimizer.step() if closure is None else self.optimizer.step(closure)
        self.step_count += 1
        if self.step_count % self.k == 0:
            self.sync()
        return loss

    @torch.no_grad()
    def sync(self) -> None:
        """The slow step, done by ``step`` every ``k`` inner steps; public for manual schedules."""
        fast = self._all_params()
        slow = [self._slow_of(p) for p in fast]
        if use_foreach(self.foreach, fast):
            for fast_, slow_ in by_device_and_dtype([fast, slow]):
                torch._foreach_lerp_(slow_, fast_, self.alpha)
                torch._foreach_copy_(fast_, slow_)
        else:
            for f, s in zip(fast, slow):
                s.lerp_(f, self.alpha)
                f.copy_(s)

    @torch.no_grad()
    def eval(self) -> None:
        """Put the slow weights into the parameters (the fast ones are kept for :meth:`train`)."""
        if self._fast is not None:
            return
        params = self._all_params()
        self._fast = [p.detach().clone() for p in params]
        for p in params:
            p.copy_(self._slow_of(p))

    @torch.no_grad()
    def train(self) -> None:
        """Put back the fast weights :meth:`eval` set aside (a no-op outside :meth:`eval`)."""
        if self._fast is None:
            return
        for p, f in zip(self._all_params(), self._fast):
            p.copy_(f)
        self._fast = None

    @torch.no_grad()
    def to_slow(self) -> None:
        """Put the slow weights into the parameters for good (Lookahead ends: e.g.
        ``SwitchOptimizer(lambda la: la.optimizer, at_epoch=..., on_switch=Lookahead.to_slow)``
        continues with the inner optimizer from the weights Lookahead reports)."""
        self.train()
        for p in self._all_params():
            p.copy_(self._slow_of(p))

    def state_dict(self) -> dict[str, Any]:
        """Inner optimizer's state_dict plus the slow weights, the step counter, k and alpha."""
        return {
            "inner": self.optimizer.state_dict(),
            "slow": [s.clone() for s in self.slow_weights()],
            "step_count": self.step_count,
            "k": self.k,
            "alpha": self.alpha,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore everything ``state_dict`` saved (k and alpha included, as torch restores
        a group's hyper-parameters)."""
        params = self._all_params()
        slow = state_dict["slow"]
        if len(slow) != len(params):
            raise ValueError(
                f"Lookahead state has {len(slow)} slow weights; this optimizer has "
                f"{len(params)} parameters")
        self.optimizer.load_state_dict(state_dict["inner"])
        params = self._all_params()
        self._slow = {p: s.detach().to(device=p.device, dtype=p.dtype).clone()
                      for p, s in zip(params, slow)}
        self.step_count = int(state_dict["step_count"])
        self.k = int(state_dict["k"])
        self.alpha = float(state_dict["alpha"])
