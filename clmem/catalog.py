"""Every registry, with every module that registers into it imported.

Import registries from here (not from their defining modules) so that benchmarks, models and
strategies contributed by other packages of clmem are known — in the driver and in Ray workers.
To contribute one, register it in your module and add the module to :data:`EXTENSIONS`.
"""
from __future__ import annotations

import importlib

from clmem.benchmarks import BENCHMARKS
from clmem.models import MODELS
from strategies.registry import STRATEGIES, TRAINING_OPTIONS

#: Modules that register benchmarks, models or strategies when imported.
EXTENSIONS: tuple[str, ...] = ("clmem.tasks.streams", "clmem.learners.registry", "strategies.sequence", "strategies.clmem_strategies")

for _module in EXTENSIONS:
    importlib.import_module(_module)

__all__ = ["BENCHMARKS", "MODELS", "STRATEGIES", "TRAINING_OPTIONS", "EXTENSIONS"]
