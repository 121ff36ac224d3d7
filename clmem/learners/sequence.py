"""Memory cores as sequence learners: ``forward(x [B, T, D]) -> logits [B, T, O]``.

The cores of :mod:`clmem.memory` return ``(y, state)``; :class:`CoreSequenceLearner` keeps only ``y`` (the state
starts at zero for every batch). :func:`make_sequence_learner` builds a learner by name: ``lstm``, ``ntm``,
``dnc``, ``mann`` and, when :mod:`clmem.memory.sparse` imports, ``sparse_dnc``.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import Tensor, nn

from clmem.memory import DNCCore, MANNCore, MemoryCore, NTMCore

from .lstm import LSTMLearner

CORES: Dict[str, type] = {"ntm": NTMCore, "dnc": DNCCore, "mann": MANNCore}
try:  # optional: sparse access memory (needs its own dependencies)
    from clmem.memory import SparseDNCCore

    CORES["sparse_dnc"] = SparseDNCCore
except ImportError:  # pragma: no cover - depends on the installation
    pass


class CoreSequenceLearner(nn.Module):
    """Wraps a ``MemoryCore`` so that ``forward(x)`` returns the logits only."""

    def __init__(self, core: MemoryCore) -> None:
        super().__init__()
        if not isinstance(core, MemoryCore):
            raise TypeError(f"CoreSequenceLearner: expected a MemoryCore, got {type(core).__name__}")
        self.core = core
        self.config = core.config

    def forward(self, x: Tensor, state: Optional[Any] = None) -> Tensor:
        logits, _ = self.core(x, state)
        return logits

    @torch.no_grad()
    def memory_trace(self, x: Tensor):
        """Per-step read/write weights and usage (``CoreTrace``) of the core on ``x [B, T, D]``."""
        _, _, trace = self.core(x, return_trace=True)
        return trace


def make_sequence_learner(kind: str, input_size: int, output_size: int, **options: Any) -> nn.Module:
    """A sequence learner of ``kind`` (``lstm`` or a key of :data:`CORES`); ``options`` go to its config."""
    if kind == "lstm":
        return LSTMLearner(input_size=input_size, output_size=output_size, **options)
    if kind not in CORES:
        raise ValueError(f"sequence learner kind: expected one of {('lstm', *CORES)}, got {kind!r}")
    return CoreSequenceLearner(CORES[kind](input_size=input_size, output_size=output_size, **options))
