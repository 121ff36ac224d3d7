"""Checkpointing an Avalanche strategy through ``state_dict``s, never by pickling the strategy.

A strategy is *resumable* from the end of an experience when its whole state lives in its model,
its optimizer, Avalanche's clock and plugins that implement ``state_dict``/``load_state_dict``
(all of clmem's plugins do). Avalanche's built-in strategies other than ``Naive`` keep state that
has no ``state_dict`` (replay buffers as datasets, EWC importances, a frozen LwF model, …); for
them :func:`resumability` says why not, and a retried trial restarts from its first experience.
"""
from __future__ import annotations

from typing import Any

#: Plugins that hold no training state worth restoring (the evaluator's metric history is lost
#: on resume; clmem's own metrics come from R, which is checkpointed; PeriodicEval holds only its
#: settings).
STATELESS_PLUGINS = {"EvaluationPlugin", "PeriodicEval"}
#: Strategy classes whose state is entirely model + optimizer + plugins.
PLAIN_STRATEGIES = {"Naive"}
_CLOCK_FIELDS = ("train_iterations", "train_exp_counter", "train_exp_epochs",
                 "train_exp_iterations", "train_epoch_iterations", "total_iterations")


def _stateful_plugins(strategy) -> list:
    return [p for p in strategy.plugins
            if type(p).__name__ not in STATELESS_PLUGINS and type(p).__name__ != "Clock"]


def resumability(strategy) -> tuple[bool, str]:
    """(True, "") when :func:`strategy_state` captures all of ``strategy``'s state, else (False, why)."""
    name = type(strategy).__name__
    if name not in PLAIN_STRATEGIES and not getattr(strategy, "clmem_resumable", False):
        return False, f"strategy class {name} keeps state without a state_dict"
    for plugin in _stateful_plugins(strategy):
        if not (hasattr(plugin, "state_dict") and hasattr(plugin, "load_state_dict")):
            return False, f"plugin {type(plugin).__name__} has no state_dict/load_state_dict"
    return True, ""


def _clock(strategy):
    return next((p for p in strategy.plugins if type(p).__name__ == "Clock"), None)


def strategy_state(strategy) -> dict[str, Any]:
    """Model, optimizer, clock and plugin states of a resumable strategy (tensors and plain data)."""
    clock = _clock(strategy)
    return {
        "model": strategy.model.state_dict(),
        "optimizer": strategy.optimizer.state_dict(),
        "clock": {f: getattr(clock, f) for f in _CLOCK_FIELDS if clock is not None and hasattr(clock, f)},
        "plugins": [p.state_dict() for p in _stateful_plugins(strategy)],
    }


def load_strategy_state(strategy, state: dict[str, Any]) -> None:
    """Restore what :func:`strategy_state` saved into a freshly built strategy of the same config."""
    strategy.model.load_state_dict(state["model"])
    strategy.optimizer.load_state_dict(state["optimizer"])
    clock = _clock(strategy)
    for field, value in state["clock"].items():
        setattr(clock, field, value)
    plugins = _stateful_plugins(strategy)
    if len(plugins) != len(state["plugins"]):
        raise ValueError(f"checkpoint has {len(state['plugins'])} plugin states, strategy has {len(plugins)} plugins")
    for plugin, plugin_state in zip(plugins, state["plugins"]):
        plugin.load_state_dict(plugin_state)
