"""Gated memory: learned per-slot write and retain gates, then a content read.

Shapes: ``B`` batch, ``N`` slots, ``W`` word size, ``R`` read heads, ``H`` write heads.

Every step the controller sets, for every slot ``i``, a retain gate ``r_i`` and per head a write gate
``g_{h,i}`` (sigmoids of its interface, so the memory itself learns what to keep and where to write, as the
forget and input gates of an LSTM do for its cell, one cell per slot):

    ``M_i <- r_i M_i + sum_h g_{h,i} v_h``

With ``r = 1, g = 0`` the memory is unchanged; with ``r = 0, g = 1`` (one head) every slot becomes ``v``; an
``r_i = 1 - g_i`` gate pair is the NTM/DNC erase-and-add with a full erase. Reads are the content addressing
of the NTM/DNC on the updated memory. ``retain_bias`` is added to the retain logits (as the forget-gate bias of
an LSTM, Jozefowicz et al. 2015) so that a fresh controller keeps most of its memory from step to step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn

from . import addressing as addr
from ._interface import split_interface
from ._validation import check_int
from .cores import CoreConfig, MemoryCore

__all__ = ["gated_update", "GatedMemoryConfig", "GatedInterface", "GatedState", "GatedMemory",
           "GatedCoreConfig", "GatedCore"]


def gated_update(memory: Tensor, retain_gates: Tensor, write_gates: Tensor, content: Tensor) -> Tensor:
    """``M_i <- r_i M_i + sum_h g_{h,i} v_h``.

    Args:
        memory: ``M`` ``[B, N, W]``.
        retain_gates: ``r`` ``[B, N]`` in ``[0, 1]``.
        write_gates: ``g`` ``[B, H, N]`` in ``[0, 1]``.
        content: ``v`` ``[B, H, W]``.

    Returns:
        ``[B, N, W]``.
    """
    return torch.baddbmm(memory * retain_gates.unsqueeze(-1), write_gates.transpose(1, 2), content)


def _check_bias(owner: str, value) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok:
        raise ValueError(f"{owner}.retain_bias: expected a finite number, got {value!r}")


@dataclass(frozen=True)
class GatedMemoryConfig:
    """Sizes N, W, R, H and the retain-gate logit bias."""

    memory_size: int
    word_size: int
    num_reads: int = 1
    num_writes: int = 1
    retain_bias: float = 1.0

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for field in ("memory_size", "word_size", "num_reads", "num_writes"):
            check_int(owner, field, getattr(self, field), 1)
        _check_bias(owner, self.retain_bias)


class GatedInterface(NamedTuple):
    """Parsed interface (activated)."""

    read_keys: Tensor  # [B, R, W]
    write_vectors: Tensor  # [B, H, W]
    read_strengths: Tensor  # [B, R], >= 1
    write_gates: Tensor  # [B, H, N] in [0, 1]
    retain_gates: Tensor  # [B, N] in [0, 1]


class GatedState(NamedTuple):
    """Memory state."""

    memory: Tensor  # [B, N, W]
    read_weights: Tensor  # [B, R, N]
    write_weights: Tensor  # [B, H, N], the last write gates
    retain_gates: Tensor  # [B, N], the last retain gates


class GatedMemory(nn.Module):
    """Parameter-free gated memory: ``step(interface, prev_state) -> (read_words [B, R, W], next_state)``."""

    def __init__(self, config: Optional[GatedMemoryConfig] = None, **kwargs) -> None:
        super().__init__()
        self.config = config if config is not None else GatedMemoryConfig(**kwargs)
        c = self.config
        N, R, W, H = c.memory_size, c.num_reads, c.word_size, c.num_writes
        self._layout = (("read_keys", (R, W)), ("write_vectors", (H, W)), ("read_strengths", (R,)),
                        ("write_gates", (H, N)), ("retain_gates", (N,)))

    @property
    def interface_size(self) -> int:
        """``R (W + 1) + H (W + N) + N``."""
        c = self.config
        return c.num_reads * (c.word_size + 1) + c.num_writes * (c.word_size + c.memory_size) + c.memory_size

    def parse_interface(self, vector: Tensor) -> GatedInterface:
        """``[B, interface_size]`` -> :class:`GatedInterface` (oneplus strengths, sigmoid gates)."""
        raw = split_interface("GatedMemory", vector, self._layout)
        return GatedInterface(
            read_keys=raw["read_keys"], write_vectors=raw["write_vectors"],
            read_strengths=addr.oneplus(raw["read_strengths"]), write_gates=torch.sigmoid(raw["write_gates"]),
            retain_gates=torch.sigmoid(raw["retain_gates"] + self.config.retain_bias),
        )

    def initial_state(self, batch_size: int, device: Optional[torch.device] = None,
                      dtype: Optional[torch.dtype] = None) -> GatedState:
        """Zero memory and weights; retain gates 1."""
        check_int("GatedMemory.initial_state", "batch_size", batch_size, 1)
        c = self.config
        kw = dict(device=device, dtype=dtype if dtype is not None else torch.get_default_dtype())
        return GatedState(
            memory=torch.zeros(batch_size, c.memory_size, c.word_size, **kw),
            read_weights=torch.zeros(batch_size, c.num_reads, c.memory_size, **kw),
            write_weights=torch.zeros(batch_size, c.num_writes, c.memory_size, **kw),
            retain_gates=torch.ones(batch_size, c.memory_size, **kw),
        )

    def step(self, interface: GatedInterface, prev_state: GatedState) -> Tuple[Tensor, GatedState]:
        """Gated update, then content read: ``(read_words [B, R, W], next_state)``."""
        memory = gated_update(prev_state.memory, interface.retain_gates, interface.write_gates,
                              interface.write_vectors)
        read_weights = addr.content_weights(memory, interface.read_keys, interface.read_strengths)
        next_state = GatedState(memory, read_weights, interface.write_gates, interface.retain_gates)
        return addr.read_memory(memory, read_weights), next_state

    forward = step


@dataclass(frozen=True)
class GatedCoreConfig(CoreConfig):
    """``GatedCore`` hyper-parameters."""

    retain_bias: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_bias(type(self).__name__, self.retain_bias)

    def memory_config(self) -> GatedMemoryConfig:
        return GatedMemoryConfig(self.memory_size, self.word_size, self.num_reads, self.num_writes,
                                 float(self.retain_bias))


class GatedCore(MemoryCore):
    """Controller + gated memory."""

    config_class = GatedCoreConfig
    memory_class = GatedMemory
