"""One registry of Avalanche strategies by name, with declared options.

Avalanche's built-ins are registered here; clmem's own strategies join with
``@STRATEGIES.register(name, options)``. Use it from a plain Avalanche script::

    from strategies import create_strategy
    strategy = create_strategy("replay", model=model, optimizer=optimizer,
                               criterion=torch.nn.CrossEntropyLoss(), evaluator=my_evaluator,
                               train_mb_size=32, mem_size=200)
"""
from __future__ import annotations

from typing import Any

from clmem.options import ConfigError, Opt, defaults
from clmem.registry import Registry

STRATEGIES = Registry("strategy")

#: Options every strategy takes; the runner turns optimizer/lr/momentum/weight_decay into the
#: optimizer, the rest go to the strategy's constructor.
TRAINING_OPTIONS: dict[str, Opt] = {
    "train_epochs": Opt(int, 1, min=1),
    "train_mb_size": Opt(int, 32, min=1),
    "eval_mb_size": Opt(int, 256, min=1),
    "optimizer": Opt(str, "sgd", choices=("sgd", "adam")),
    "lr": Opt(float, 0.01, min=0.0),
    "momentum": Opt(float, 0.0, min=0.0, max=1.0),
    "weight_decay": Opt(float, 0.0, min=0.0),
}
_LOOP_KEYS = ("train_epochs", "train_mb_size", "eval_mb_size")


def _avalanche(class_name: str):
    def build(**kwargs):
        import avalanche.training.supervised as supervised

        return getattr(supervised, class_name)(**kwargs)

    build.__name__ = f"build_{class_name}"
    return build


def _register_builtin(name: str, class_name: str, options: dict[str, Opt], description: str):
    STRATEGIES.register(name, options, description)(_avalanche(class_name))


_MEM = {"mem_size": Opt(int, 200, min=1, help="replay buffer size (samples)")}
_register_builtin("naive", "Naive", {}, "fine-tuning, no protection against forgetting")
_register_builtin("cumulative", "Cumulative", {}, "retrain on all data seen so far (upper bound)")
_register_builtin("ewc", "EWC", {
    "ewc_lambda": Opt(float, 10.0, min=0.0),
    "mode": Opt(str, "separate", choices=("separate", "online")),
    "decay_factor": Opt(float, None, min=0.0, max=1.0, nullable=True),
}, "Elastic Weight Consolidation (Kirkpatrick et al. 2017)")
_register_builtin("si", "SynapticIntelligence", {
    "si_lambda": Opt(float, 1.0, min=0.0), "eps": Opt(float, 1e-7, min=0.0),
}, "Synaptic Intelligence (Zenke et al. 2017)")
_register_builtin("lwf", "LwF", {
    "alpha": Opt(float, 1.0, min=0.0), "temperature": Opt(float, 2.0, min=1e-6),
}, "Learning without Forgetting (Li & Hoiem 2016)")
_register_builtin("replay", "Replay", dict(_MEM), "experience replay, class-balanced buffer")
_register_builtin("gem", "GEM", {
    "patterns_per_exp": Opt(int, 64, min=1), "memory_strength": Opt(float, 0.5, min=0.0),
}, "Gradient Episodic Memory (Lopez-Paz & Ranzato 2017)")
_register_builtin("agem", "AGEM", {
    "patterns_per_exp": Opt(int, 64, min=1), "sample_size": Opt(int, 64, min=1),
}, "Averaged GEM (Chaudhry et al. 2019)")
_register_builtin("der", "DER", {
    **_MEM,
    "batch_size_mem": Opt(int, None, min=1, nullable=True),
    "alpha": Opt(float, 0.1, min=0.0),
    "beta": Opt(float, 0.5, min=0.0),
}, "Dark Experience Replay++ (Buzzega et al. 2020)")
_register_builtin("gdumb", "GDumb", dict(_MEM), "GDumb: greedy buffer, retrain from scratch")


def strategy_options(name: str) -> dict[str, Opt]:
    """All options of strategy ``name``: the shared training options plus its own."""
    return {**TRAINING_OPTIONS, **STRATEGIES.get(name).options}


def check_options(name: str, options: dict[str, Any], path: str = "strategy") -> dict[str, Any]:
    """Validate ``options`` for strategy ``name`` and fill in defaults (own options only)."""
    entry = STRATEGIES.get(name, f"{path}.name")
    declared = {**entry.options, **{k: TRAINING_OPTIONS[k] for k in _LOOP_KEYS}}
    out = {k: v for k, v in defaults(entry.options).items()}
    for key, value in options.items():
        if key not in declared:
            valid = ", ".join(sorted(declared)) or "none"
            raise ConfigError(f"{path}.{key}", f"unknown option of strategy {name!r} (expected one of: {valid})")
        out[key] = declared[key].check(f"{path}.{key}", value)
    return out


def create_strategy(name: str, *, model, optimizer, criterion, evaluator=None, plugins=None,
                    device="cpu", **options):
    """Build the strategy ``name`` around ``model``/``optimizer``/``criterion``.

    ``options`` are the strategy's own (e.g. ``mem_size``) plus ``train_epochs``,
    ``train_mb_size`` and ``eval_mb_size``; unknown or ill-typed options raise
    :class:`clmem.options.ConfigError` naming the option. ``evaluator`` is an Avalanche
    ``EvaluationPlugin`` (Avalanche's default when ``None``).
    """
    kwargs = {k: TRAINING_OPTIONS[k].default for k in _LOOP_KEYS}
    kwargs.update(check_options(name, options))
    if evaluator is not None:
        kwargs["evaluator"] = evaluator
    entry = STRATEGIES.get(name)
    return entry.builder(model=model, optimizer=optimizer, criterion=criterion,
                         plugins=list(plugins or []), device=device, **kwargs)
