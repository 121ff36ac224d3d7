"""Associative memory: content-addressable pattern completion by modern Hopfield retrieval.

Shapes: ``B`` batch, ``N`` pattern slots, ``W`` pattern width, ``R`` cues (read heads), ``H`` patterns stored per
step (write heads).

Stored patterns are the rows of ``M [B, N, W]``. Recall from a cue ``xi_0`` runs ``S`` steps of the update rule of
the continuous modern Hopfield network (Ramsauer et al. 2020, "Hopfield Networks is All You Need"),

    ``p_s = softmax_N(beta * M xi_s + log(u + eps))``,   ``xi_{s+1} = p_s^T M``,

whose fixed points lie next to the stored patterns: a cue holding a fraction of a pattern (the rest zeroed)
converges to the whole pattern in one step when the patterns are well separated (exponential storage capacity
in ``W``, against ``0.14 W`` for the classic Hebbian network). ``u [B, N]`` is the slot occupancy: slots never
written (``u = 0``) are left out of the softmax, so an empty or partly filled memory recalls only what it holds.

Writes store whole patterns in a ring (Hopfield patterns are memorised, not blended): write head ``h`` replaces
slot ``(pointer + h) mod N`` with ``g_h`` times its pattern (``M_i <- (1 - w_i) M_i + w_i v``, ``w = g_h e_i``), and
the pointer then moves ``H`` slots on; once full, the oldest patterns are overwritten. One step writes first,
then recalls from the updated memory. ``AssociativeCore`` puts an LSTM/feed-forward controller in front
(the :class:`~clmem.memory.cores.MemoryCore` plumbing): it emits cues, patterns (``tanh``, so in ``[-1, 1]`` like
``+-1`` patterns), strengths ``beta >= 1`` and write gates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn

from . import addressing as addr
from ._interface import groups_size, split_grouped_interface
from ._validation import check_int
from .cores import CoreConfig, MemoryCore

OCCUPANCY_EPS = 1e-6

__all__ = [
    "associative_attention", "associative_recall", "ring_write_weights", "store_patterns", "occupancy",
    "AssociativeMemoryConfig", "AssociativeInterface", "AssociativeState", "AssociativeMemory",
    "AssociativeCoreConfig", "AssociativeCore",
]


# ----------------------------------------------------------------------------------------------- pure maths
def associative_attention(memory: Tensor, states: Tensor, beta: Tensor, occupancy: Optional[Tensor] = None,
                          eps: float = OCCUPANCY_EPS) -> Tensor:
    """Hopfield attention ``softmax_N(beta * xi . M_i + log(u_i + eps))``.

    Args:
        memory: ``M`` ``[B, N, W]``.
        states: ``xi`` ``[B, R, W]``.
        beta: ``[B, R]`` inverse temperatures (or a float).
        occupancy: ``u`` ``[B, N]`` in ``[0, 1]`` (``None``: every slot counts fully).

    Returns:
        ``[B, R, N]``, rows summing to 1.
    """
    beta = torch.as_tensor(beta, dtype=memory.dtype, device=memory.device)
    scores = torch.matmul(states, memory.transpose(-1, -2))
    scores = scores * (beta.unsqueeze(-1) if beta.dim() else beta)
    if occupancy is not None:
        scores = scores + torch.log(occupancy + eps).unsqueeze(1)
    return torch.softmax(scores, dim=-1)


def associative_recall(memory: Tensor, cues: Tensor, beta: Tensor, steps: int = 1,
                       occupancy: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Complete ``cues [B, R, W]`` from ``memory [B, N, W]`` by ``steps`` Hopfield updates ``xi <- p^T M``.

    Returns ``(recalled [B, R, W], weights [B, R, N])``, the weights being those of the last update.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"associative_recall.steps: expected an int >= 1, got {steps!r}")
    state = cues
    for _ in range(steps):
        weights = associative_attention(memory, state, beta, occupancy)
        state = addr.read_memory(memory, weights)
    return state, weights


def ring_write_weights(position: Tensor, gates: Tensor) -> Tensor:
    """Write weights of ``H`` heads on a ring: head ``h`` writes ``g_h`` on the slot ``h`` after the pointer.

    Args:
        position: one-hot pointer ``[B, N]`` (the next slot to write).
        gates: ``g`` ``[B, H]`` in ``[0, 1]`` (``H <= N``).

    Returns:
        ``[B, H, N]``.
    """
    heads = [torch.roll(position, shifts=h, dims=-1) for h in range(gates.shape[-1])]
    return torch.stack(heads, dim=1) * gates.unsqueeze(-1)


def store_patterns(memory: Tensor, write_weights: Tensor, patterns: Tensor) -> Tensor:
    """Replace slots by patterns: ``M <- M * prod_h (1 - w_h 1^T) + sum_h w_h v_h^T``.

    ``memory [B, N, W]``, ``write_weights [B, H, N]``, ``patterns [B, H, W]`` -> ``[B, N, W]``.
    """
    return addr.erase_and_write(memory, write_weights, torch.ones_like(patterns), patterns)


def occupancy(prev_occupancy: Tensor, write_weights: Tensor) -> Tensor:
    """``u <- 1 - (1 - u) prod_h (1 - w_h)``: ``[B, N]``, ``[B, H, N]`` -> ``[B, N]`` in ``[0, 1]``."""
    return 1.0 - (1.0 - prev_occupancy) * torch.prod(1.0 - write_weights, dim=1)


# ----------------------------------------------------------------------------------------------- the memory
@dataclass(frozen=True)
class AssociativeMemoryConfig:
    """Sizes: N slots, W pattern width, R cues, ``H <= N`` patterns stored per step, ``steps`` Hopfield updates."""

    memory_size: int
    word_size: int
    num_reads: int = 1
    num_writes: int = 1
    steps: int = 1

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for field in ("memory_size", "word_size", "num_reads", "num_writes", "steps"):
            check_int(owner, field, getattr(self, field), 1)
        if self.num_writes > self.memory_size:
            raise ValueError(f"{owner}.num_writes: expected an int <= memory_size ({self.memory_size}), "
                             f"got {self.num_writes}")


class AssociativeInterface(NamedTuple):
    """Parsed interface (activated)."""

    cues: Tensor  # [B, R, W], tanh
    patterns: Tensor  # [B, H, W], tanh
    strengths: Tensor  # [B, R], >= 1 (oneplus)
    write_gates: Tensor  # [B, H] in [0, 1]


class AssociativeState(NamedTuple):
    """Memory state; ``usage`` is the slot occupancy ``u``, ``position`` the one-hot ring pointer."""

    memory: Tensor  # [B, N, W]
    read_weights: Tensor  # [B, R, N]
    write_weights: Tensor  # [B, H, N]
    usage: Tensor  # [B, N]
    position: Tensor  # [B, N]


class AssociativeMemory(nn.Module):
    """Parameter-free memory: ``step(interface, prev_state) -> (recalled [B, R, W], next_state)``."""

    def __init__(self, config: Optional[AssociativeMemoryConfig] = None, **kwargs) -> None:
        super().__init__()
        self.config = config if config is not None else AssociativeMemoryConfig(**kwargs)
        c = self.config
        R, W, H = c.num_reads, c.word_size, c.num_writes
        self._groups = (
            (torch.tanh, (("cues", (R, W)), ("patterns", (H, W)))),
            (addr.oneplus, (("strengths", (R,)),)),
            (torch.sigmoid, (("write_gates", (H,)),)),
        )

    @property
    def interface_size(self) -> int:
        """``(R + H) * W + R + H``."""
        return groups_size(self._groups)

    def parse_interface(self, vector: Tensor) -> AssociativeInterface:
        """``[B, interface_size]`` -> :class:`AssociativeInterface`."""
        return AssociativeInterface(**split_grouped_interface("AssociativeMemory", vector, self._groups))

    def initial_state(self, batch_size: int, device: Optional[torch.device] = None,
                      dtype: Optional[torch.dtype] = None) -> AssociativeState:
        """Empty memory, pointer on slot 0."""
        check_int("AssociativeMemory.initial_state", "batch_size", batch_size, 1)
        c = self.config
        kw = dict(device=device, dtype=dtype if dtype is not None else torch.get_default_dtype())
        position = torch.zeros(batch_size, c.memory_size, **kw)
        position[:, 0] = 1.0
        return AssociativeState(
            memory=torch.zeros(batch_size, c.memory_size, c.word_size, **kw),
            read_weights=torch.zeros(batch_size, c.num_reads, c.memory_size, **kw),
            write_weights=torch.zeros(batch_size, c.num_writes, c.memory_size, **kw),
            usage=torch.zeros(batch_size, c.memory_size, **kw),
            position=position,
        )

    def step(self, interface: AssociativeInterface, prev_state: AssociativeState) -> Tuple[Tensor, AssociativeState]:
        """Store the patterns on the ring, then recall from the cues: ``(recalled [B, R, W], next_state)``."""
        write_weights = ring_write_weights(prev_state.position, interface.write_gates)
        memory = store_patterns(prev_state.memory, write_weights, interface.patterns)
        usage = occupancy(prev_state.usage, write_weights)
        recalled, read_weights = associative_recall(memory, interface.cues, interface.strengths,
                                                    self.config.steps, usage)
        position = torch.roll(prev_state.position, shifts=self.config.num_writes, dims=-1)
        return recalled, AssociativeState(memory, read_weights, write_weights, usage, position)

    forward = step


# ----------------------------------------------------------------------------------------------- the core
@dataclass(frozen=True)
class AssociativeCoreConfig(CoreConfig):
    """``AssociativeCore`` hyper-parameters; ``steps`` Hopfield updates per recall."""

    steps: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(type(self).__name__, "steps", self.steps, 1)

    def memory_config(self) -> AssociativeMemoryConfig:
        return AssociativeMemoryConfig(self.memory_size, self.word_size, self.num_reads, self.num_writes,
                                       self.steps)


class AssociativeCore(MemoryCore):
    """Controller + associative (modern Hopfield) memory."""

    config_class = AssociativeCoreConfig
    memory_class = AssociativeMemory
