"""The checkpoint of :class:`polyak.method.Method`: ``state_dict`` and an all-or-nothing load.

Loading checks everything that can be checked before it changes anything, so a refused state
leaves the Method (optimizer state, averages, triggers, switches, counters) as it was:

1. the state is a Method state (every entry there);
2. it is from the same recipe: a Method built by a recipe knows its ``recipe``, the base
   optimizer and averaging (``"sgdm+phasewise"``; ``pwa`` and ``sgdm+phasewise`` are the same),
   and refuses a state of another with one line naming both. Other hyper-parameters may differ
   (``sgdm:lr=0.05`` loads into ``sgdm``): they are in the state and come with it, as torch's
   optimizers restore their groups' hyper-parameters. A hand-built Method (``recipe=None``), or
   a state saved by one, skips this check;
3. the pieces match: the number of switches and observers, which of averaging / triggers exist,
   the optimizer's
   class (after the switches the state has taken), and each piece's own checks
   (``check_state_dict`` of the averages and triggers; a piece of your own is checked by its
   ``check_state_dict(state)`` when it has one);
4. then the optimizer loads (torch's ``Optimizer.load_state_dict`` checks its groups before it
   changes anything), and after it every other piece, already checked.

Private: the API is ``Method.state_dict`` / ``Method.load_state_dict``.
"""

from __future__ import annotations

from typing import Any

_ENTRIES = ("optimizer", "base_lrs", "steps", "epochs_done", "averaging_started", "should_stop",
            "averaging", "averaging_trigger", "stop_trigger", "switches")
_PIECES = ("averaging", "averaging_trigger", "stop_trigger")


def state_of(method: Any) -> dict[str, Any]:
    """Everything :func:`load_into` restores, plus what identifies the Method's recipe."""
    def sd(obj: Any) -> Any:
        return obj.state_dict() if obj is not None else None
    return {
        "recipe": method.recipe, "name": method.name,
        "optimizer_type": type(method.optimizer).__name__,
        "optimizer": method.optimizer.state_dict(), "base_lrs": list(method.base_lrs),
        "steps": method.steps, "epochs_done": method.epochs_done,
        "skipped_steps": method.skipped_steps, "scaler": sd(method.scaler),
        "averaging_started": method.averaging_started, "should_stop": method.should_stop,
        "averaging": sd(method.averaging), "averaging_trigger": sd(method.averaging_trigger),
        "stop_trigger": sd(method.stop_trigger),
        "switches": [s.state_dict() for s in method.switches],
        "observers": [o.state_dict() for o in method.observers],
    }


def _check_piece(obj: Any, state: Any) -> None:
    check = getattr(obj, "check_state_dict", None)
    if callable(check):
        check(state)


def _check_recipe(method: Any, state: dict[str, Any]) -> None:
    theirs, ours = state.get("recipe"), method.recipe
    if theirs is not None and ours is not None and theirs != ours:
        raise ValueError(
            f"Invalid state_dict: it is from recipe {state.get('name') or theirs!r} ({theirs}), "
            f"this Method is {method.name or ours!r} ({ours}); a state loads into a Method of "
            "the same base optimizer and averaging (its other hyper-parameters may differ)")


def _target_optimizer(method: Any, state: dict[str, Any]) -> Any:
    """The optimizer the state is for: this Method's, through the switches the state took."""
    target = method.optimizer
    for i, (switch, sw_state) in enumerate(zip(method.switches, state["switches"])):
        done = sw_state.get("done_epoch")
        if done is not None and switch.done_epoch is None:
            target = switch.to(target)
        elif done is None and switch.done_epoch is not None:
            raise ValueError(f"Invalid state_dict: switch {i} has not happened in it, but this "
                             f"Method switched after epoch {switch.done_epoch}; load it into a "
                             "freshly built Method")
        if switch.trigger is not None and sw_state.get("trigger") is not None:
            _check_piece(switch.trigger, sw_state["trigger"])
    kind = state.get("optimizer_type")
    if kind is not None and kind != type(target).__name__:
        raise ValueError(f"Invalid state_dict: it is a state of {kind}, this Method's "
                         f"optimizer is {type(target).__name__}")
    return target


def check_state(method: Any, state: Any) -> Any:
    """Every check of the module docstring; returns the optimizer the state loads into."""
    missing = [k for k in _ENTRIES if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"Invalid state_dict: not a Method state (no {', '.join(missing)})")
    _check_recipe(method, state)
    if len(state["switches"]) != len(method.switches):
        raise ValueError(f"Invalid state_dict: it has {len(state['switches'])} switches, this "
                         f"Method has {len(method.switches)}")
    observed = state.get("observers", [])   # (a state saved before observers existed: none)
    if len(observed) != len(method.observers):
        raise ValueError(f"Invalid state_dict: it holds {len(observed)} observers' states, this "
                         f"Method has {len(method.observers)} observers")
    for observer, obs_state in zip(method.observers, observed):
        _check_piece(observer, obs_state)
    for name in _PIECES:
        obj = getattr(method, name)
        if (obj is None) != (state[name] is None):
            raise ValueError(f"Invalid state_dict: its {name} does not match this Method's "
                             f"({'none' if state[name] is None else 'one'} in the state, "
                             f"{'none' if obj is None else type(obj).__name__} here)")
        if obj is not None:
            _check_piece(obj, state[name])
    scaler, scaler_state = method.scaler, state.get("scaler")
    if scaler is not None and scaler_state is not None and not scaler_state \
            and getattr(scaler, "is_enabled", lambda: True)():
        raise ValueError("Invalid state_dict: its GradScaler state is empty (saved from a "
                         "disabled GradScaler), this Method's GradScaler is enabled")
    return _target_optimizer(method, state)


def load_into(method: Any, state: dict[str, Any]) -> None:
    """Check (:func:`check_state`), then load every piece: all of the state or none of it."""
    target = check_state(method, state)
    target.load_state_dict(state["optimizer"])   # torch checks its groups before changing
    method.optimizer = target
    for switch, sw_state in zip(method.switches, state["switches"]):
        switch.load_state_dict(sw_state)
    for name in _PIECES:
        obj = getattr(method, name)
        if obj is not None:
            obj.load_state_dict(state[name])
    for observer, obs_state in zip(method.observers, state.get("observers", [])):
        observer.load_state_dict(obs_state)
    if method.scaler is not None and state.get("scaler") is not None:
        method.scaler.load_state_dict(state["scaler"])
    method.base_lrs = list(state["base_lrs"])
    method.steps, method.epochs_done = state["steps"], state["epochs_done"]
    method.skipped_steps = int(state.get("skipped_steps", 0))
    method.averaging_started = state["averaging_started"]
    method.should_stop = state["should_stop"]
