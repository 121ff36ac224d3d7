"""NTM memory (Graves et al. 2014) with explicit immutable state.

Each head addresses by content, interpolates with its previous weights, shifts circularly and sharpens.
One step writes first (erase then add, addressed on ``M_{t-1}``), then reads from ``M_t``.

Initial state (Collier & Beel 2018, "Implementing Neural Turing Machines", compare these schemes):
``memory_init`` ``"constant"`` fills every cell with ``INITIAL_MEMORY`` (1e-6, no parameters), ``"learned"`` is
``tanh(b)`` with a learned ``b [N, W]`` (Glorot-uniform, as their ``learned_init``), ``"random"`` is
``tanh(z)`` with ``z [N, W] ~ N(0, 0.5^2)`` drawn once when the module is built (a buffer, not trained).
``weight_init`` ``"onehot"`` focuses every head on slot 0, ``"learned"`` is ``softmax(l)`` of learned logits
``l [R + H, N]`` (Glorot-uniform; read heads first).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import addressing as addr
from ._interface import layout_size, split_interface
from ._validation import check_choice, check_int

INITIAL_MEMORY = 1e-6  # value of every memory cell at the start of a sequence ("constant" init)
MEMORY_INITS = ("constant", "learned", "random")
WEIGHT_INITS = ("onehot", "learned")
RANDOM_MEMORY_STD = 0.5  # std of z in the "random" init tanh(z) (Collier & Beel 2018)


@dataclass(frozen=True)
class NTMMemoryConfig:
    """NTM sizes: ``memory_size`` N, ``word_size`` W, ``num_reads`` R, ``num_writes`` H, shifts in
    ``[-shift_range, shift_range]`` (``S = 2 * shift_range + 1``); initial state ``memory_init`` (one of
    ``MEMORY_INITS``) and ``weight_init`` (one of ``WEIGHT_INITS``), see the module docstring."""

    memory_size: int
    word_size: int
    num_reads: int
    num_writes: int = 1
    shift_range: int = 1
    memory_init: str = "constant"
    weight_init: str = "onehot"

    def __post_init__(self) -> None:
        for field in ("memory_size", "word_size", "num_reads", "num_writes"):
            check_int("NTMMemoryConfig", field, getattr(self, field), 1)
        check_int("NTMMemoryConfig", "shift_range", self.shift_range, 0)
        check_choice("NTMMemoryConfig", "memory_init", self.memory_init, MEMORY_INITS)
        check_choice("NTMMemoryConfig", "weight_init", self.weight_init, WEIGHT_INITS)

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


def _glorot(*shape: int) -> Tensor:
    """Glorot-uniform values ``U(-a, a)``, ``a = sqrt(6 / (1 + n))``, ``n = prod(shape)``: the weights of a
    ``1 -> n`` dense layer fed a constant 1 (Collier & Beel's ``learned_init``)."""
    bound = math.sqrt(6.0 / (1 + math.prod(shape)))
    return torch.empty(*shape).uniform_(-bound, bound)


class NTMMemory(nn.Module):
    """NTM memory: ``step(interface, prev_state) -> (read_words [B, R, W], next_state)``.

    Parameter-free with the default initial state; ``memory_init="learned"`` adds ``memory_bias [N, W]``,
    ``weight_init="learned"`` adds ``weight_logits [R + H, N]``, ``memory_init="random"`` a fixed buffer
    ``memory_noise [N, W]`` (drawn from torch's global generator when the module is built).
    """

    def __init__(self, config: Optional[NTMMemoryConfig] = None, **kwargs) -> None:
        super().__init__()
        self.config = config if config is not None else NTMMemoryConfig(**kwargs)
        c = self.config
        self._layout = self._head_layout("read", c.num_reads) + self._head_layout("write", c.num_writes) + (
            ("erase_vectors", (c.num_writes, c.word_size)),
            ("add_vectors", (c.num_writes, c.word_size)),
        )
        n, w = c.memory_size, c.word_size
        if c.memory_init == "learned":
            self.memory_bias = nn.Parameter(_glorot(n, w))
        elif c.memory_init == "random":
            self.register_buffer("memory_noise", torch.randn(n, w) * RANDOM_MEMORY_STD)
        if c.weight_init == "learned":
            self.weight_logits = nn.Parameter(torch.stack([_glorot(n) for _ in range(c.num_reads + c.num_writes)]))

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
        """The state before the first step, ``memory [B, N, W]``, ``read_weights [B, R, N]``,
        ``write_weights [B, H, N]``, as ``memory_init`` and ``weight_init`` say (module docstring); every batch
        row is the same. With ``"learned"`` parts, gradients reach ``memory_bias`` / ``weight_logits``.

        An all-zero memory with all-zero (or uniform) weights would make every row identical and every
        addressing step permutation-symmetric (content weights uniform, a shift of a uniform weighting
        uniform), so the heads could never focus on one slot: the default starts them one-hot on slot 0.
        """
        check_int("NTMMemory.initial_state", "batch_size", batch_size, 1)
        c = self.config
        kw = dict(device=device, dtype=dtype if dtype is not None else torch.get_default_dtype())
        if c.memory_init == "learned":
            memory = torch.tanh(self.memory_bias.to(**kw))
        elif c.memory_init == "random":
            memory = torch.tanh(self.memory_noise.to(**kw))
        else:
            memory = torch.full((c.memory_size, c.word_size), INITIAL_MEMORY, **kw)
        if c.weight_init == "learned":
            weights = torch.softmax(self.weight_logits.to(**kw), dim=-1)
        else:
            weights = torch.zeros(c.num_reads + c.num_writes, c.memory_size, **kw)
            weights[:, 0] = 1.0
        batch = lambda t: t.unsqueeze(0).expand(batch_size, *t.shape).contiguous()  # noqa: E731
        return NTMState(memory=batch(memory), read_weights=batch(weights[: c.num_reads]),
                        write_weights=batch(weights[c.num_reads :]))

    def step(self, interface: NTMInterface, prev_state: NTMState) -> Tuple[Tensor, NTMState]:
        """Write (erase, add) then read: ``(read_words [B, R, W], next_state)``."""
        write_weights = ntm_address(prev_state.memory, interface.write_heads, prev_state.write_weights)
        memory = addr.erase_and_write(
            prev_state.memory, write_weights, interface.erase_vectors, interface.add_vectors
        )
        read_weights = ntm_address(memory, interface.read_heads, prev_state.read_weights)
        return addr.read_memory(memory, read_weights), NTMState(memory, read_weights, write_weights)

    forward = step
