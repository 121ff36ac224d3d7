"""NTM memory (Graves et al. 2014) with explicit immutable state.

Each head addresses by content, interpolates with its previous weights, shifts circularly and sharpens.
One step writes first (erase then add, addressed on ``M_{t-1}``), then reads from ``M_t``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import addressing as addr
from ._interface import layout_size, split_interface
from ._validation import check_int



INITIAL_MEMORY = 1e-6  # value of every memory cell at the start of a sequence

@dataclass(frozen=True)
class NTMMemoryConfig:
    """NTM sizes: ``memory_size`` N, ``word_size`` W, ``num_reads`` R, ``num_writes`` H, shifts in
    ``[-shift_range, shift_range]`` (``S = 2 * shift_range + 1``)."""

    memory_size: int
    word_size: int
    num_reads: int
    num_writes: int = 1
    shift_range: int = 1

    def __post_init__(self) -> None:
        for field in ("memory_size", "word_size", "num_reads", "num_writes"):
            check_int("NTMMemoryConfig", field, getattr(self, field), 1)
        check_int("NTMMemoryConfig", "shift_range", self.shift_range, 0)

    @property
    def num_shifts(self) -> int:
        """``S = 2 * shift_range + 1``."""
        return 2 * self.shift_range + 1


class NTMHeadParams(NamedTuple):
    """Addressing parameters for a group of ``K`` heads (``K`` = R or H)."""

    keys: Tensor  # [B, K, W]
    strengths: Tensor  # [B, K], >= 1 (oneplus)
    interpolation_gates: Tensor  # [B, K] in [0, 1]
    shifts: Tensor  # [B, K, S], softmax
    sharpening: Tensor  # [B, K], gamma >= 1 (1 + softplus)


class NTMInterface(NamedTuple):
    """Parsed NTM interface."""

    read_heads: NTMHeadParams
    write_heads: NTMHeadParams
    erase_vectors: Tensor  # [B, H, W] in [0, 1]
    add_vectors: Tensor  # [B, H, W]


class NTMState(NamedTuple):
    """NTM memory state."""

    memory: Tensor  # [B, N, W]
    read_weights: Tensor  # [B, R, N]
    write_weights: Tensor  # [B, H, N]


def ntm_address(memory: Tensor, heads: NTMHeadParams, prev_weights: Tensor) -> Tensor:
    """Full NTM addressing for ``K`` heads: content -> interpolate -> shift -> sharpen, ``[B, K, N]``."""
    content = addr.content_weights(memory, heads.keys, heads.strengths)
    gated = addr.interpolate(content, prev_weights, heads.interpolation_gates)
    shifted = addr.circular_shift(gated, heads.shifts)
    return addr.sharpen(shifted, heads.sharpening)


class NTMMemory(nn.Module):
    """Parameter-free NTM memory: ``step(interface, prev_state) -> (read_words [B, R, W], next_state)``."""

    def __init__(self, config: Optional[NTMMemoryConfig] = None, **kwargs) -> None:
        super().__init__()
        self.config = config if config is not None else NTMMemoryConfig(**kwargs)
        c = self.config
        self._layout = self._head_layout("read", c.num_reads) + self._head_layout("write", c.num_writes) + (
            ("erase_vectors", (c.num_writes, c.word_size)),
            ("add_vectors", (c.num_writes, c.word_size)),
        )

    def _head_layout(self, prefix: str, num_heads: int) -> tuple:
        c = self.config
        return (
            (f"{prefix}_keys", (num_heads, c.word_size)),
            (f"{prefix}_strengths", (num_heads,)),
            (f"{prefix}_interpolation_gates", (num_heads,)),
            (f"{prefix}_shifts", (num_heads, c.num_shifts)),
            (f"{prefix}_sharpening", (num_heads,)),
        )

    @property
    def interface_size(self) -> int:
        """``(R + H) * (W + S + 3) + 2 * H * W``."""
        return layout_size(self._layout)

    @staticmethod
    def _heads(raw: dict, prefix: str) -> NTMHeadParams:
        return NTMHeadParams(
            keys=raw[f"{prefix}_keys"],
            strengths=addr.oneplus(raw[f"{prefix}_strengths"]),
            interpolation_gates=torch.sigmoid(raw[f"{prefix}_interpolation_gates"]),
            shifts=torch.softmax(raw[f"{prefix}_shifts"], dim=-1),
            sharpening=1.0 + F.softplus(raw[f"{prefix}_sharpening"]),
        )

    def parse_interface(self, vector: Tensor) -> NTMInterface:
        """``[B, interface_size]`` -> ``NTMInterface`` with the NTM nonlinearities applied."""
        raw = split_interface("NTMMemory", vector, self._layout)
        return NTMInterface(
            read_heads=self._heads(raw, "read"),
            write_heads=self._heads(raw, "write"),
            erase_vectors=torch.sigmoid(raw["erase_vectors"]),
            add_vectors=raw["add_vectors"],
        )

    def initial_state(
        self, batch_size: int, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
    ) -> NTMState:
        """Memory filled with ``INITIAL_MEMORY`` (1e-6) and every head focused on slot 0.

        With an all-zero memory and all-zero weights every row is identical and a location-based
        shift of a uniform (or zero) weighting stays uniform, so the heads could never focus on one
        slot; a one-hot start lets shifts address slots one by one (the copy task needs it).
        """
        check_int("NTMMemory.initial_state", "batch_size", batch_size, 1)
        c = self.config
        kw = dict(device=device, dtype=dtype if dtype is not None else torch.get_default_dtype())

        def focused(heads: int) -> Tensor:
            weights = torch.zeros(batch_size, heads, c.memory_size, **kw)
            weights[..., 0] = 1.0
            return weights

        return NTMState(
            memory=torch.full((batch_size, c.memory_size, c.word_size), INITIAL_MEMORY, **kw),
            read_weights=focused(c.num_reads),
            write_weights=focused(c.num_writes),
        )

    def step(self, interface: NTMInterface, prev_state: NTMState) -> Tuple[Tensor, NTMState]:
        """Write (erase, add) then read: ``(read_words [B, R, W], next_state)``."""
        write_weights = ntm_address(prev_state.memory, interface.write_heads, prev_state.write_weights)
        memory = addr.erase_and_write(
            prev_state.memory, write_weights, interface.erase_vectors, interface.add_vectors
        )
        read_weights = ntm_address(memory, interface.read_heads, prev_state.read_weights)
        return addr.read_memory(memory, read_weights), NTMState(memory, read_weights, write_weights)

    forward = step
