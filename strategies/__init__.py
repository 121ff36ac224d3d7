"""Avalanche strategies and plugins of clmem, importable into any Avalanche script."""
from strategies.registry import (
    STRATEGIES,
    TRAINING_OPTIONS,
    check_options,
    create_strategy,
    strategy_options,
)

__all__ = ["STRATEGIES", "TRAINING_OPTIONS", "check_options", "create_strategy", "strategy_options"]
