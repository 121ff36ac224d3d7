"""Hierarchical memory: chunked slots searched by maximum inner product, then attended inside the chunks.

Shapes: ``B`` batch, ``N`` slots in ``C`` chunks of ``S = N / C`` consecutive slots, ``W`` word size, ``R`` read
heads, ``H`` write heads, ``k`` chunks read per head.

Two levels of different sizes and access costs: the top level holds one summary key per chunk (the mean of its
slots, ``[B, C, W]``), the bottom level the ``N`` slots. An access with key ``q`` and strength ``beta``

1. scores the ``C`` chunk keys by inner product and keeps the ``k`` best (maximum inner product search,
   as in the hierarchical memory networks of Chandar et al. 2016);
2. attends by content inside those ``k`` chunks only: ``w_i = softmax_{i in chunks}(beta * cos(q, M_i))``, and
   ``w_i = 0`` in every other chunk.

An access touches ``C + k S`` vectors instead of ``N``; with one level (``C = 1``) it is the flat content
addressing of the NTM/DNC (:func:`clmem.memory.addressing.content_weights`). The choice of chunks is discrete:
gradients flow through the attention inside the chosen chunks, not through the choice.

Writes address the same way, mixed with a ring pointer that offers a fresh slot every step (like the DNC's
allocation): ``w = g^w (g^a ring + (1 - g^a) c^w)``, then erase and add. One step writes, then reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn

from . import addressing as addr
from ._interface import groups_size, split_grouped_interface
from ._validation import check_int
from .associative import ring_write_weights
from .cores import CoreConfig, MemoryCore

__all__ = [
    "chunk_keys", "top_chunks", "chunk_slots", "hierarchical_weights", "HierarchicalMemoryConfig",
    "HierarchicalInterface", "HierarchicalState", "HierarchicalMemory", "HierarchicalCoreConfig",
    "HierarchicalCore",
]


# ----------------------------------------------------------------------------------------------- pure maths
def chunk_keys(memory: Tensor, num_chunks: int) -> Tensor:
    """Top level: the mean slot of each chunk, ``memory [B, N, W]`` -> ``[B, C, W]`` (``C`` must divide ``N``)."""
    batch, slots, width = memory.shape
    if slots % num_chunks:
        raise ValueError(f"chunk_keys.num_chunks: expected a divisor of N = {slots}, got {num_chunks}")
    return memory.reshape(batch, num_chunks, slots // num_chunks, width).mean(dim=2)


def top_chunks(memory: Tensor, keys: Tensor, num_chunks: int, k: int) -> Tensor:
    """The ``k`` chunks whose mean key has the largest inner product with each key.

    ``memory [B, N, W]``, ``keys [B, R, W]`` -> chunk ids ``[B, R, k]`` (long, best first).
    """
    scores = torch.matmul(keys, chunk_keys(memory, num_chunks).transpose(-1, -2))  # [B, R, C]
    return torch.topk(scores.detach(), k, dim=-1).indices


def chunk_slots(chunks: Tensor, chunk_size: int) -> Tensor:
    """Slot ids of chunks: ``chunks [B, R, k]`` -> ``[B, R, k * S]`` (chunk ``c`` holds ``c S .. c S + S - 1``)."""
    offsets = torch.arange(chunk_size, device=chunks.device)
    return (chunks.unsqueeze(-1) * chunk_size + offsets).flatten(-2)


def hierarchical_weights(memory: Tensor, keys: Tensor, strengths: Tensor, num_chunks: int, k: int,
                         eps: float = addr.EPSILON) -> Tensor:
    """Two-level content weights: softmax of ``beta * cos(q, M_i)`` over the slots of the ``k`` best chunks.

    Args:
        memory: ``M`` ``[B, N, W]``.
        keys: ``q`` ``[B, R, W]``.
        strengths: ``beta`` ``[B, R]``.
        num_chunks: ``C`` (divides N); k: chunks kept per key (``1 <= k <= C``).

    Returns:
        ``[B, R, N]``, each row summing to 1, zero outside the chosen chunks.
    """
    batch, slots, width = memory.shape
    reads = keys.shape[1]
    ids = chunk_slots(top_chunks(memory, keys, num_chunks, k), slots // num_chunks)  # [B, R, kS]
    picked = torch.gather(memory.unsqueeze(1).expand(batch, reads, slots, width), 2,
                          ids.unsqueeze(-1).expand(*ids.shape, width))  # [B, R, kS, W]
    dot = torch.matmul(picked, keys.unsqueeze(-1)).squeeze(-1)  # [B, R, kS]
    key_norm = torch.sqrt((keys * keys).sum(-1, keepdim=True) + eps)
    slot_norm = torch.sqrt((picked * picked).sum(-1) + eps)
    similarity = dot / (key_norm * slot_norm + eps)
    inside = torch.softmax(similarity * strengths.unsqueeze(-1), dim=-1)
    return memory.new_zeros(batch, reads, slots).scatter(-1, ids, inside)


# ----------------------------------------------------------------------------------------------- the memory
@dataclass(frozen=True)
class HierarchicalMemoryConfig:
    """Sizes: N slots in ``num_chunks`` chunks (dividing N), ``read_chunks`` chunks searched per access."""

    memory_size: int
    word_size: int
    num_reads: int = 1
    num_writes: int = 1
    num_chunks: int = 1
    read_chunks: int = 1

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for field in ("memory_size", "word_size", "num_reads", "num_writes", "num_chunks", "read_chunks"):
            check_int(owner, field, getattr(self, field), 1)
        check_chunks(owner, self.memory_size, self.num_writes, self.num_chunks, self.read_chunks)

    @property
    def chunk_size(self) -> int:
        """``S = N / C``."""
        return self.memory_size // self.num_chunks


def check_chunks(owner: str, memory_size: int, num_writes: int, num_chunks: int, read_chunks: int) -> None:
    """One-line ``ValueError`` unless C divides N, ``read_chunks <= C`` and ``H <= N``."""
    if memory_size % num_chunks:
        raise ValueError(f"{owner}.num_chunks: expected a divisor of memory_size ({memory_size}), got {num_chunks}")
    if read_chunks > num_chunks:
        raise ValueError(f"{owner}.read_chunks: expected an int <= num_chunks ({num_chunks}), got {read_chunks}")
    if num_writes > memory_size:
        raise ValueError(f"{owner}.num_writes: expected an int <= memory_size ({memory_size}), got {num_writes}")


class HierarchicalInterface(NamedTuple):
    """Parsed interface (activated)."""

    read_keys: Tensor  # [B, R, W]
    write_keys: Tensor  # [B, H, W]
    write_vectors: Tensor  # [B, H, W]
    read_strengths: Tensor  # [B, R], >= 1
    write_strengths: Tensor  # [B, H], >= 1
    erase_vectors: Tensor  # [B, H, W] in [0, 1]
    allocation_gates: Tensor  # [B, H] in [0, 1]
    write_gates: Tensor  # [B, H] in [0, 1]


class HierarchicalState(NamedTuple):
    """Memory state; ``position`` is the one-hot ring pointer ``[B, N]``."""

    memory: Tensor  # [B, N, W]
    read_weights: Tensor  # [B, R, N]
    write_weights: Tensor  # [B, H, N]
    position: Tensor  # [B, N]


class HierarchicalMemory(nn.Module):
    """Parameter-free two-level memory: ``step(interface, prev_state) -> (read_words [B, R, W], next_state)``."""

    def __init__(self, config: Optional[HierarchicalMemoryConfig] = None, **kwargs) -> None:
        super().__init__()
        self.config = config if config is not None else HierarchicalMemoryConfig(**kwargs)
        c = self.config
        R, W, H = c.num_reads, c.word_size, c.num_writes
        self._groups = (
            (None, (("read_keys", (R, W)), ("write_keys", (H, W)), ("write_vectors", (H, W)))),
            (addr.oneplus, (("read_strengths", (R,)), ("write_strengths", (H,)))),
            (torch.sigmoid, (("erase_vectors", (H, W)), ("allocation_gates", (H,)), ("write_gates", (H,)))),
        )

    @property
    def interface_size(self) -> int:
        """``R (W + 1) + H (3 W + 3)``."""
        return groups_size(self._groups)

    def parse_interface(self, vector: Tensor) -> HierarchicalInterface:
        """``[B, interface_size]`` -> :class:`HierarchicalInterface`."""
        return HierarchicalInterface(**split_grouped_interface("HierarchicalMemory", vector, self._groups))

    def initial_state(self, batch_size: int, device: Optional[torch.device] = None,
                      dtype: Optional[torch.dtype] = None) -> HierarchicalState:
        """Zero memory and weights, pointer on slot 0."""
        check_int("HierarchicalMemory.initial_state", "batch_size", batch_size, 1)
        c = self.config
        kw = dict(device=device, dtype=dtype if dtype is not None else torch.get_default_dtype())
        position = torch.zeros(batch_size, c.memory_size, **kw)
        position[:, 0] = 1.0
        return HierarchicalState(
            memory=torch.zeros(batch_size, c.memory_size, c.word_size, **kw),
            read_weights=torch.zeros(batch_size, c.num_reads, c.memory_size, **kw),
            write_weights=torch.zeros(batch_size, c.num_writes, c.memory_size, **kw),
            position=position,
        )

    def address(self, memory: Tensor, keys: Tensor, strengths: Tensor) -> Tensor:
        """Two-level content weights ``[B, K, N]`` for ``keys [B, K, W]`` (see :func:`hierarchical_weights`)."""
        c = self.config
        return hierarchical_weights(memory, keys, strengths, c.num_chunks, c.read_chunks)

    def step(self, interface: HierarchicalInterface,
             prev_state: HierarchicalState) -> Tuple[Tensor, HierarchicalState]:
        """Write (content or fresh ring slot), then read: ``(read_words [B, R, W], next_state)``."""
        c = self.config
        content = self.address(prev_state.memory, interface.write_keys, interface.write_strengths)
        ring = ring_write_weights(prev_state.position, torch.ones_like(interface.write_gates))
        write_weights = addr.write_weights(content, ring, interface.allocation_gates, interface.write_gates)
        memory = addr.erase_and_write(prev_state.memory, write_weights, interface.erase_vectors,
                                      interface.write_vectors)
        read_weights = self.address(memory, interface.read_keys, interface.read_strengths)
        position = torch.roll(prev_state.position, shifts=c.num_writes, dims=-1)
        next_state = HierarchicalState(memory, read_weights, write_weights, position)
        return addr.read_memory(memory, read_weights), next_state

    forward = step


# ----------------------------------------------------------------------------------------------- the core
@dataclass(frozen=True)
class HierarchicalCoreConfig(CoreConfig):
    """``HierarchicalCore`` hyper-parameters (``num_chunks`` must divide ``memory_size``)."""

    num_chunks: int = 4
    read_chunks: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        check_int(owner, "num_chunks", self.num_chunks, 1)
        check_int(owner, "read_chunks", self.read_chunks, 1)
        check_chunks(owner, self.memory_size, self.num_writes, self.num_chunks, self.read_chunks)

    def memory_config(self) -> HierarchicalMemoryConfig:
        return HierarchicalMemoryConfig(self.memory_size, self.word_size, self.num_reads, self.num_writes,
                                        self.num_chunks, self.read_chunks)


class HierarchicalCore(MemoryCore):
    """Controller + two-level chunked memory."""

    config_class = HierarchicalCoreConfig
    memory_class = HierarchicalMemory
