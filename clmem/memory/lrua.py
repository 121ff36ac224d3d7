"""Least Recently Used Access memory (Santoro et al. 2016, MANN) with explicit immutable state.

One step: the least-used slot (from ``w^u_{t-1}``) is zeroed ("prior to writing to memory, the least used memory
location is computed from w^u_{t-1} and is set to zero"); write head ``h`` writes with
``w^w_h = sigma(alpha_h) w^r_{t-1,h} + (1 - sigma(alpha_h)) w^lu_{t-1,h}`` (``w^lu_h`` = the h-th least-used slot);
read heads address ``M_t`` by content; usage ``w^u_t = gamma w^u_{t-1} + sum w^r_t + sum w^w_t``. With
``num_writes = num_reads`` every read head also writes and the least-used slots are the ``n = num_reads`` smallest
usages, as in the paper's ``m(w^u, n)`` and its public reference implementations.
Key strengths are an extension (``beta = 1`` recovers the paper's plain softmax of cosine similarities).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn

from . import addressing as addr
from ._interface import groups_size, split_grouped_interface
from ._validation import check_fraction, check_int


@dataclass(frozen=True)
class LRUAMemoryConfig:
    """LRUA sizes: N, W, R read heads, ``H <= R`` write heads (write head h reuses read head h's weights),
    ``usage_decay`` gamma in ``[0, 1)``."""

    memory_size: int
    word_size: int
    num_reads: int
    num_writes: int = 1
    usage_decay: float = 0.95

    def __post_init__(self) -> None:
        for field in ("memory_size", "word_size", "num_reads", "num_writes"):
            check_int("LRUAMemoryConfig", field, getattr(self, field), 1)
        if self.num_writes > self.num_reads or self.num_writes > self.memory_size:
            raise ValueError(f"LRUAMemoryConfig.num_writes: expected an int <= num_reads ({self.num_reads}) "
                             f"and <= memory_size ({self.memory_size}), got {self.num_writes}")
        check_fraction("LRUAMemoryConfig", "usage_decay", self.usage_decay)


class LRUAInterface(NamedTuple):
    """Parsed LRUA interface."""

    read_keys: Tensor  # [B, R, W]
    read_strengths: Tensor  # [B, R], >= 1 (oneplus)
    write_vectors: Tensor  # [B, H, W]
    write_gates: Tensor  # [B, H], sigma(alpha) in [0, 1]


class LRUAState(NamedTuple):
    """LRUA memory state."""

    memory: Tensor  # [B, N, W]
    read_weights: Tensor  # [B, R, N]
    write_weights: Tensor  # [B, H, N]
    usage: Tensor  # [B, N]


class LRUAMemory(nn.Module):
    """Parameter-free LRUA memory: ``step(interface, prev_state) -> (read_words [B, R, W], next_state)``."""

    def __init__(self, config: Optional[LRUAMemoryConfig] = None, **kwargs) -> None:
        super().__init__()
        self.config = config if config is not None else LRUAMemoryConfig(**kwargs)
        c = self.config
        R, W, H = c.num_reads, c.word_size, c.num_writes
        self._groups = (  # fields grouped by nonlinearity, so each is applied once per step
            (None, (("read_keys", (R, W)), ("write_vectors", (H, W)))),
            (addr.oneplus, (("read_strengths", (R,)),)),
            (torch.sigmoid, (("write_gates", (H,)),)),
        )

    @property
    def interface_size(self) -> int:
        """``R * (W + 1) + H * (W + 1)``."""
        return groups_size(self._groups)

    def parse_interface(self, vector: Tensor) -> LRUAInterface:
        """``[B, interface_size]`` -> ``LRUAInterface`` (oneplus strengths, sigmoid gates)."""
        return LRUAInterface(**split_grouped_interface("LRUAMemory", vector, self._groups))

    def initial_state(
        self, batch_size: int, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
    ) -> LRUAState:
        """Zero memory, weights and usage."""
        check_int("LRUAMemory.initial_state", "batch_size", batch_size, 1)
        c = self.config
        kw = dict(device=device, dtype=dtype if dtype is not None else torch.get_default_dtype())
        return LRUAState(
            memory=torch.zeros(batch_size, c.memory_size, c.word_size, **kw),
            read_weights=torch.zeros(batch_size, c.num_reads, c.memory_size, **kw),
            write_weights=torch.zeros(batch_size, c.num_writes, c.memory_size, **kw),
            usage=torch.zeros(batch_size, c.memory_size, **kw),
        )

    def step(self, interface: LRUAInterface, prev_state: LRUAState) -> Tuple[Tensor, LRUAState]:
        """Zero the least-used slot, write, read, update usage: ``(read_words [B, R, W], next_state)``."""
        c = self.config
        prev_lu_weights = addr.least_used_weights(prev_state.usage, c.num_writes)  # [B, H, N]
        write_weights = addr.lrua_write_weights(
            prev_state.read_weights[:, : c.num_writes], prev_lu_weights, interface.write_gates
        )
        cleared = prev_state.memory * (1.0 - prev_lu_weights[:, 0]).unsqueeze(-1)  # the least-used slot only
        memory = torch.baddbmm(cleared, write_weights.transpose(1, 2), interface.write_vectors)
        read_weights = addr.content_weights(memory, interface.read_keys, interface.read_strengths)
        usage = addr.lrua_usage(prev_state.usage, read_weights, write_weights, c.usage_decay)
        next_state = LRUAState(memory, read_weights, write_weights, usage)
        return addr.read_memory(memory, read_weights), next_state

    forward = step
