"""The three registries (benchmarks, models, strategies), defined without importing torch or Avalanche.

Each starts with the module that defines its built-in entries; that module names further registering
modules (:meth:`clmem.registry.Registry.extend`), all imported on first lookup. ``clmem validate`` and
``clmem list`` may fill them from a manifest instead (:mod:`clmem.manifest`), so checking a file needs
neither torch nor Avalanche.
"""
from __future__ import annotations

from clmem.options import Opt
from clmem.registry import Registry

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

BENCHMARKS = Registry("benchmark", extensions=("clmem.benchmarks",))
MODELS = Registry("model", extensions=("clmem.models",))
STRATEGIES = Registry("strategy", extensions=("strategies.registry",), shared=TRAINING_OPTIONS)
ALL = (BENCHMARKS, MODELS, STRATEGIES)

__all__ = ["ALL", "BENCHMARKS", "MODELS", "STRATEGIES", "TRAINING_OPTIONS"]
