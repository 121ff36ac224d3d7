"""Gated memory: learned per-slot write and retain gates, then a content read.

Shapes: ``B`` batch, ``N`` slots, ``W`` word size, ``R`` read heads, ``H`` write heads.

Every step the controller sets, for every slot ``i``, a retain gate ``r_i`` and per head a write gate
``g_{h,i}`` (sigmoids of its interface, so the memory itself learns what to keep and where to write, as the
forget and input gates of an LSTM do for its cell, one cell per slot):

    ``M_i <- r_i M_i + sum_h g_{h,i} v_h``

With ``r = 1, g = 0`` the memory is unchanged; with ``r = 0, g = 1`` (one head) every slot becomes ``v``; an
``r_i = 1 - g_i`` gate pair is the NTM/DNC erase-and-add with a full erase. Reads are the content addressing
of the NTM/DNC on the updated memory, over the slots that hold something (usage > 0). ``retain_bias`` is added to
the retain logits (as the forget-gate bias of an LSTM, Jozefowicz et al. 2015) so that a fresh controller keeps
most of its memory from step to step.

**Growth.** The memory holds ``N = max_memory_size`` slots (the capacity; the interface has gates for all of
them) of which the first ``n`` are in use; slots beyond ``n`` are never written (their write gates are masked
to 0), so they stay empty and, having usage 0, are never read. Usage ``u_i <- r_i u_i + (1 - r_i u_i) w_i`` with
``w_i = 1 - prod_h (1 - g_{h,i})`` is the chance that slot ``i`` holds content (it follows the gates, without
gradient: it only steers reads and growth). ``n`` grows in two ways: within a sequence, the pure step adds one
empty slot (writable from the next step) when every slot in use has usage above ``grow_threshold`` and
``n < N``; between experiences, :meth:`GatedMemory.grow` raises the number of slots every sequence starts with
(a buffer, saved in the ``state_dict``). With ``max_memory_size = memory_size`` (the default) nothing grows.
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

__all__ = ["gated_update", "gated_usage", "masked_content_weights", "slot_mask", "grown_slots", "can_grow",
           "GatedMemoryConfig",
           "GatedInterface", "GatedState", "GatedMemory", "GatedCoreConfig", "GatedCore"]


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


def gated_usage(usage: Tensor, retain_gates: Tensor, write_gates: Tensor) -> Tensor:
    """``u_i <- r_i u_i + (1 - r_i u_i) w_i`` with ``w_i = 1 - prod_h (1 - g_{h,i})``.

    Args:
        usage: ``u`` ``[B, N]`` in ``[0, 1]``.
        retain_gates: ``r`` ``[B, N]``.
        write_gates: ``g`` ``[B, H, N]``.

    Returns:
        ``[B, N]`` in ``[0, 1]``; 0 exactly where the slot was emptied (``r u = 0``) and not written (``g = 0``).
    """
    kept = retain_gates * usage
    written = 1.0 - torch.prod(1.0 - write_gates, dim=1)
    return kept + (1.0 - kept) * written


def masked_content_weights(memory: Tensor, keys: Tensor, strengths: Tensor, readable: Tensor) -> Tensor:
    """``softmax`` over the readable slots of ``beta * cos(k_r, M_i)``; other slots get weight 0.

    Args:
        memory: ``M`` ``[B, N, W]``.
        keys: ``k`` ``[B, R, W]``.
        strengths: ``beta`` ``[B, R]``.
        readable: ``[B, N]`` bool.

    Returns:
        ``[B, R, N]``: rows sum to 1, or are all 0 (with zero gradient) where no slot is readable.
    """
    scores = addr.cosine_similarity(memory, keys) * strengths.unsqueeze(-1)
    mask = readable.unsqueeze(1)
    any_readable = mask.any(-1, keepdim=True)
    scores = torch.where(any_readable, scores.masked_fill(~mask, float("-inf")), torch.zeros_like(scores))
    return scores.softmax(-1) * any_readable


def can_grow(memory_size: int, max_memory_size: int | None) -> bool:
    """Whether a gated memory that starts with ``memory_size`` slots and holds at most ``max_memory_size``
    (``None``: ``memory_size``) can gain slots: the one rule of validation and of the growth plugin."""
    return max_memory_size is not None and int(max_memory_size) > int(memory_size)


def slot_mask(slots: Tensor, capacity: int) -> Tensor:
    """``[B, N]`` bool: slot ``i`` is in use (``i < slots_b``); ``slots [B]`` long."""
    return torch.arange(capacity, device=slots.device) < slots.unsqueeze(-1)


def grown_slots(slots: Tensor, usage: Tensor, threshold: float) -> Tensor:
    """``slots [B]`` plus 1 where ``slots < N`` and every slot in use has ``usage [B, N] > threshold``."""
    capacity = usage.shape[-1]
    full = ((usage > threshold) | ~slot_mask(slots, capacity)).all(-1)
    return slots + (full & (slots < capacity)).to(slots.dtype)


def _check_bias(owner: str, value) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok:
        raise ValueError(f"{owner}.retain_bias: expected a finite number, got {value!r}")


def _check_growth(owner: str, memory_size: int, max_memory_size, grow_threshold) -> None:
    if max_memory_size is not None:
        check_int(owner, "max_memory_size", max_memory_size, memory_size)
    t = grow_threshold
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not 0.0 < t < 1.0:
        raise ValueError(f"{owner}.grow_threshold: expected a finite number in (0, 1), got {t!r}")


@dataclass(frozen=True)
class GatedMemoryConfig:
    """Sizes (``memory_size`` slots in use at the start, W, R, H), the retain-gate logit bias, and growth:
    ``max_memory_size`` (the capacity N, ``>= memory_size``; ``None``: ``memory_size``, no growth) and
    ``grow_threshold`` (in (0, 1): the usage every slot in use must exceed before a new one is added)."""

    memory_size: int
    word_size: int
    num_reads: int = 1
    num_writes: int = 1
    retain_bias: float = 1.0
    max_memory_size: Optional[int] = None
    grow_threshold: float = 0.9

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for field in ("memory_size", "word_size", "num_reads", "num_writes"):
            check_int(owner, field, getattr(self, field), 1)
        _check_bias(owner, self.retain_bias)
        _check_growth(owner, self.memory_size, self.max_memory_size, self.grow_threshold)

    @property
    def capacity(self) -> int:
        """N: the slots the memory holds (``max_memory_size``, or ``memory_size``)."""
        return self.memory_size if self.max_memory_size is None else self.max_memory_size


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
    write_weights: Tensor  # [B, H, N], the last write gates (0 on slots not in use)
    retain_gates: Tensor  # [B, N], the last retain gates
    usage: Tensor  # [B, N] in [0, 1], 0 on empty slots (no gradient)
    slots: Tensor  # [B] long: slots in use (the first ``slots``)


class GatedMemory(nn.Module):
    """Parameter-free gated memory: ``step(interface, prev_state) -> (read_words [B, R, W], next_state)``.

    Buffers (in the ``state_dict``): ``slots`` (0-d long, the slots every sequence starts with; changed only by
    :meth:`grow`) and ``capacity`` (0-d long, N, checked when loading).
    """

    def __init__(self, config: Optional[GatedMemoryConfig] = None, **kwargs) -> None:
        super().__init__()
        self.config = config if config is not None else GatedMemoryConfig(**kwargs)
        c = self.config
        N, R, W, H = c.capacity, c.num_reads, c.word_size, c.num_writes
        self.register_buffer("slots", torch.tensor(c.memory_size))
        self.register_buffer("capacity", torch.tensor(N))
        self._layout = (("read_keys", (R, W)), ("write_vectors", (H, W)), ("read_strengths", (R,)),
                        ("write_gates", (H, N)), ("retain_gates", (N,)))

    @property
    def interface_size(self) -> int:
        """``R (W + 1) + H (W + N) + N`` (N the capacity)."""
        c = self.config
        return c.num_reads * (c.word_size + 1) + c.num_writes * (c.word_size + c.capacity) + c.capacity

    @torch.no_grad()
    def grow(self, n: int = 1) -> int:
        """Add ``n`` empty slots to those every sequence starts with (between experiences); returns the count."""
        check_int("GatedMemory.grow", "n", n, 1)
        used, capacity = int(self.slots), self.config.capacity
        if used + n > capacity:
            raise ValueError(f"GatedMemory.grow: expected n <= {capacity - used} ({used} of max_memory_size "
                             f"{capacity} slots in use), got {n}")
        self.slots.fill_(used + n)
        return used + n

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        """Refuse, in one line naming the size, a memory of another capacity (or a slot count out of range); a
        ``state_dict`` from before growth (no buffers) keeps this module's."""
        capacity, keys = self.config.capacity, (prefix + "slots", prefix + "capacity")
        theirs = int(state_dict[keys[1]]) if keys[1] in state_dict else None
        if theirs is not None and theirs != capacity:
            raise ValueError(f"GatedMemory.max_memory_size: the state_dict holds a memory of {theirs} slots, this "
                             f"model {capacity}; build it with max_memory_size={theirs}")
        used = int(state_dict[keys[0]]) if keys[0] in state_dict else None
        if used is not None and not 1 <= used <= capacity:
            raise ValueError(f"GatedMemory.slots: expected 1..{capacity} slots in use in the state_dict, got {used}")
        legacy = [key for key in keys if key not in state_dict]
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        missing_keys[:] = [key for key in missing_keys if key not in legacy]

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
        """Zero (empty) memory, weights and usage; retain gates 1; ``slots`` in use from the buffer."""
        check_int("GatedMemory.initial_state", "batch_size", batch_size, 1)
        c, N = self.config, self.config.capacity
        kw = dict(device=device, dtype=dtype if dtype is not None else torch.get_default_dtype())
        return GatedState(
            memory=torch.zeros(batch_size, N, c.word_size, **kw),
            read_weights=torch.zeros(batch_size, c.num_reads, N, **kw),
            write_weights=torch.zeros(batch_size, c.num_writes, N, **kw),
            retain_gates=torch.ones(batch_size, N, **kw),
            usage=torch.zeros(batch_size, N, **kw),
            slots=self.slots.to(device).expand(batch_size).clone(),
        )

    def step(self, interface: GatedInterface, prev_state: GatedState) -> Tuple[Tensor, GatedState]:
        """Gated update of the slots in use, content read of the non-empty ones, then the growth rule:
        ``(read_words [B, R, W], next_state)``."""
        in_use = slot_mask(prev_state.slots, self.config.capacity)  # [B, N]
        write_gates = interface.write_gates * in_use.unsqueeze(1).to(interface.write_gates.dtype)
        memory = gated_update(prev_state.memory, interface.retain_gates, write_gates, interface.write_vectors)
        usage = gated_usage(prev_state.usage, interface.retain_gates.detach(), write_gates.detach())
        read_weights = masked_content_weights(memory, interface.read_keys, interface.read_strengths, usage > 0)
        slots = grown_slots(prev_state.slots, usage, self.config.grow_threshold)
        next_state = GatedState(memory, read_weights, write_gates, interface.retain_gates, usage, slots)
        return addr.read_memory(memory, read_weights), next_state

    forward = step


@dataclass(frozen=True)
class GatedCoreConfig(CoreConfig):
    """``GatedCore`` hyper-parameters (``retain_bias``, ``max_memory_size``, ``grow_threshold``: see
    :class:`GatedMemoryConfig`)."""

    retain_bias: float = 1.0
    max_memory_size: Optional[int] = None
    grow_threshold: float = 0.9

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        _check_bias(owner, self.retain_bias)
        _check_growth(owner, self.memory_size, self.max_memory_size, self.grow_threshold)

    def memory_config(self) -> GatedMemoryConfig:
        return GatedMemoryConfig(self.memory_size, self.word_size, self.num_reads, self.num_writes,
                                 float(self.retain_bias), self.max_memory_size, float(self.grow_threshold))


class GatedCore(MemoryCore):
    """Controller + gated memory."""

    config_class = GatedCoreConfig
    memory_class = GatedMemory

    def grow(self, n: int = 1) -> int:
        """:meth:`GatedMemory.grow`: ``n`` more slots for every later sequence; returns the slots in use."""
        return self.memory.grow(n)
