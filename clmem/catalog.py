"""Every registry, fully loaded (kept for code that imported registries from here).

Each registry imports the modules that register into it on first use (see
:class:`clmem.registry.Registry`), so importing :mod:`strategies` or :mod:`clmem.models` alone is
enough; this module only loads all three at once.
"""
from __future__ import annotations

from clmem.registries import BENCHMARKS, MODELS, STRATEGIES, TRAINING_OPTIONS

for _registry in (BENCHMARKS, MODELS, STRATEGIES):
    _registry.load_real()

#: The modules each registry imports on first use.
EXTENSIONS: tuple[str, ...] = (*BENCHMARKS.extensions, *MODELS.extensions, *STRATEGIES.extensions)

__all__ = ["BENCHMARKS", "MODELS", "STRATEGIES", "TRAINING_OPTIONS", "EXTENSIONS"]
