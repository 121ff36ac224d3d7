"""DNC memory access (Graves et al. 2016) with explicit immutable state, following DeepMind's ``MemoryAccess``.

One step: usage update (free gates, previous reads/writes) -> write weights (content + allocation) ->
erase-and-write -> temporal link and precedence -> read weights (content, forward, backward) -> read words.

``step`` composes the pure functions of ``addressing`` (the specification). ``step_vector`` (used by ``DNCCore``)
takes the raw interface vector; with one write head and the optional C kernels (``_native_dnc``) it runs the
interface activations and everything but the link as three hand-differentiated nodes around the link step, and
inside an unroll with a ``LinkTape`` the whole step as one node (``_native_step``); both tested equal to ``step``,
values and gradients, in float64.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn

from . import _native_dnc as native
from . import _native_step as native_step
from . import addressing as addr
from . import dnc_improved as improved
from ._interface import groups_size, split_grouped_interface
from .link_tape import LinkTape
from ._validation import check_int


@dataclass(frozen=True)
class DNCMemoryConfig:
    """DNC memory sizes: ``memory_size`` N, ``word_size`` W, ``num_reads`` R, ``num_writes`` H; and the options of
    ``dnc_improved`` (Csordás & Schmidhuber 2019), all off by default: ``masked_content`` (a sigmoid mask per head
    on key and memory before the cosine), ``dealloc_erase`` (freed cells are erased before the write),
    ``link_sharpness`` (forward/backward weights raised to a learned power ``>= 1`` per read and write head)."""

    memory_size: int
    word_size: int
    num_reads: int
    num_writes: int = 1
    masked_content: bool = False
    dealloc_erase: bool = False
    link_sharpness: bool = False

    def __post_init__(self) -> None:
        for field in ("memory_size", "word_size", "num_reads", "num_writes"):
            check_int("DNCMemoryConfig", field, getattr(self, field), 1)
        for field in IMPROVEMENTS:
            if not isinstance(getattr(self, field), bool):
                raise ValueError(f"DNCMemoryConfig.{field}: expected a bool, got {getattr(self, field)!r}")

    @property
    def improved(self) -> bool:
        """Whether any ``dnc_improved`` option is on (then the pure-torch step runs: no C kernel has them)."""
        return any(getattr(self, field) for field in IMPROVEMENTS)


#: the ``DNCMemoryConfig`` options of ``dnc_improved``
IMPROVEMENTS = ("masked_content", "dealloc_erase", "link_sharpness")


class DNCInterface(NamedTuple):
    """Parsed DNC interface (``read_modes`` last dim is ``[backward_1..H, forward_1..H, content]``)."""

    read_keys: Tensor  # [B, R, W]
    read_strengths: Tensor  # [B, R], >= 1
    write_keys: Tensor  # [B, H, W]
    write_strengths: Tensor  # [B, H], >= 1
    erase_vectors: Tensor  # [B, H, W] in [0, 1]
    write_vectors: Tensor  # [B, H, W]
    free_gates: Tensor  # [B, R] in [0, 1]
    allocation_gates: Tensor  # [B, H] in [0, 1]
    write_gates: Tensor  # [B, H] in [0, 1]
    read_modes: Tensor  # [B, R, 1 + 2H], softmax
    read_masks: Optional[Tensor] = None  # [B, R, W] in [0, 1] (masked_content)
    write_masks: Optional[Tensor] = None  # [B, H, W] in [0, 1] (masked_content)
    link_sharpness: Optional[Tensor] = None  # [B, R, 2H] >= 1, [forward_1..H, backward_1..H] (link_sharpness)


class DNCState(NamedTuple):
    """DNC memory state."""

    memory: Tensor  # [B, N, W]
    read_weights: Tensor  # [B, R, N]
    write_weights: Tensor  # [B, H, N]
    usage: Tensor  # [B, N]
    link: Tensor  # [B, H, N, N]
    precedence: Tensor  # [B, H, N]


class DNCMemory(nn.Module):
    """Parameter-free DNC memory: ``step(interface, prev_state) -> (read_words [B, R, W], next_state)``."""

    def __init__(self, config: Optional[DNCMemoryConfig] = None, **kwargs) -> None:
        super().__init__()
        self.config = config if config is not None else DNCMemoryConfig(**kwargs)
        c = self.config
        R, W, H = c.num_reads, c.word_size, c.num_writes
        masks = (("read_masks", (R, W)), ("write_masks", (H, W))) if c.masked_content else ()
        sharpness = (("link_sharpness", (R, 2 * H)),) if c.link_sharpness else ()
        self._groups = (  # fields grouped by nonlinearity, so each is applied once per step
            (None, (("read_keys", (R, W)), ("write_keys", (H, W)), ("write_vectors", (H, W)),
                    ("read_modes", (R, 1 + 2 * H)))),
            (addr.oneplus, (("read_strengths", (R,)), ("write_strengths", (H,)), *sharpness)),
            (torch.sigmoid, (("erase_vectors", (H, W)), ("free_gates", (R,)), ("allocation_gates", (H,)),
                             ("write_gates", (H,)), *masks)),
        )
        self._layout = self._native_layout()

    @property
    def interface_size(self) -> int:
        """Length of the flat interface vector: ``R*W + R + 3*H*W + H + R + 2*H + R*(1 + 2H)``, plus ``(R + H)*W``
        with ``masked_content`` and ``2*R*H`` with ``link_sharpness``."""
        return groups_size(self._groups)

    def parse_interface(self, vector: Tensor) -> DNCInterface:
        """``[B, interface_size]`` -> ``DNCInterface`` (oneplus strengths, sigmoid gates/erase, softmax modes)."""
        fields = split_grouped_interface("DNCMemory", vector, self._groups)
        fields["read_modes"] = torch.softmax(fields["read_modes"], dim=-1)
        return DNCInterface(**fields)

    def initial_state(
        self, batch_size: int, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
    ) -> DNCState:
        """All-zero state (memory, weights, usage, link, precedence)."""
        check_int("DNCMemory.initial_state", "batch_size", batch_size, 1)
        c = self.config
        B, N, W, R, H = batch_size, c.memory_size, c.word_size, c.num_reads, c.num_writes
        kw = dict(device=device, dtype=dtype if dtype is not None else torch.get_default_dtype())
        return DNCState(
            memory=torch.zeros(B, N, W, **kw),
            read_weights=torch.zeros(B, R, N, **kw),
            write_weights=torch.zeros(B, H, N, **kw),
            usage=torch.zeros(B, N, **kw),
            link=torch.zeros(B, H, N, N, **kw),
            precedence=torch.zeros(B, H, N, **kw),
        )

    @staticmethod
    def _content(memory: Tensor, keys: Tensor, strengths: Tensor, masks: Optional[Tensor]) -> Tensor:
        """Content weights ``[B, heads, N]``, masked when ``masks`` (``masked_content``) is given."""
        if masks is None:
            return addr.content_weights(memory, keys, strengths)
        return improved.masked_content_weights(memory, keys, strengths, masks)

    def _next_write_weights(self, interface: DNCInterface, prev_memory: Tensor, usage: Tensor) -> Tensor:
        """Write weights ``[B, H, N]`` from content lookup on ``M_{t-1}`` and allocation from ``u_t``."""
        content = self._content(prev_memory, interface.write_keys, interface.write_strengths, interface.write_masks)
        allocation = addr.write_allocation_weights(
            usage, interface.allocation_gates * interface.write_gates, self.config.num_writes
        )
        return addr.write_weights(content, allocation, interface.allocation_gates, interface.write_gates)

    def step(
        self, interface: DNCInterface, prev_state: DNCState, tape: Optional[LinkTape] = None
    ) -> Tuple[Tensor, DNCState]:
        """One memory step: ``(read_words [B, R, W], next_state)``.

        With a ``tape`` (from ``start_unroll``) the link matrix lives in the tape and ``prev_state.link`` /
        ``next_state.link`` are the tape's step tokens; ``finish_unroll`` puts the real link back.
        """
        usage = addr.update_usage(
            prev_state.usage, prev_state.write_weights, interface.free_gates, prev_state.read_weights
        )
        prev_memory = prev_state.memory
        if self.config.dealloc_erase:  # freed cells are erased before the write (and its content lookup)
            prev_memory = improved.erase_freed(prev_memory, interface.free_gates, prev_state.read_weights)
        write_weights = self._next_write_weights(interface, prev_memory, usage)
        memory = addr.erase_and_write(prev_memory, write_weights, interface.erase_vectors, interface.write_vectors)
        if tape is None:
            link, forward, backward = addr.temporal_link_step(
                prev_state.link, prev_state.precedence, write_weights, prev_state.read_weights
            )
        else:
            forward, backward, link = tape.step(
                prev_state.link, prev_state.precedence, write_weights, prev_state.read_weights
            )
        if interface.link_sharpness is not None:
            h = self.config.num_writes
            forward = improved.sharpen_directional(forward, interface.link_sharpness[..., :h])
            backward = improved.sharpen_directional(backward, interface.link_sharpness[..., h:])
        precedence = addr.update_precedence(prev_state.precedence, write_weights)
        content = self._content(memory, interface.read_keys, interface.read_strengths, interface.read_masks)
        read_weights = addr.read_weights(content, forward, backward, interface.read_modes)
        next_state = DNCState(memory, read_weights, write_weights, usage, link, precedence)
        return addr.read_memory(memory, read_weights), next_state

    def _native_layout(self) -> Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]:
        """``(ranges, pre offsets, post offsets)`` of the flat interface for ``_native_dnc``: one ``(start, length,
        kind, group)`` quadruple per field (kind 0 raw, 1 oneplus, 2 sigmoid, 3 softmax over ``group``)."""
        ranges, offsets, start = [], {}, 0
        for activation, layout in self._groups:
            kind = 0 if activation is None else (1 if activation is addr.oneplus else 2)
            for name, shape in layout:
                size = math.prod(shape)
                offsets[name] = start
                ranges += [start, size, 3 if name == "read_modes" else kind, shape[-1]]
                start += size
        return (tuple(ranges), tuple(offsets[f] for f in native.PRE_FIELDS),
                tuple(offsets[f] for f in native.POST_FIELDS))

    def step_vector(
        self, vector: Tensor, prev_state: DNCState, tape: Optional[LinkTape] = None
    ) -> Tuple[Tensor, DNCState]:
        """``step(parse_interface(vector), prev_state, tape)`` for a raw interface ``vector [B, interface_size]``.

        With one write head, no ``dnc_improved`` option and the optional C kernels (``_native_dnc``) this runs as
        three hand-differentiated
        nodes (interface activations, the memory before the link step, the reads after it) around the link step,
        or with a ``tape`` as one node for the whole step, with the same values and gradients as the composed pure
        functions (tested in float64)."""
        if (self.config.num_writes != 1 or self.config.improved or vector.dim() != 2
                or vector.shape[-1] != self.interface_size or not native.usable(vector, prev_state.memory)):
            return self.step(self.parse_interface(vector), prev_state, tape)
        ranges, pre, post = self._layout
        s = prev_state
        if tape is not None:  # the whole step as one node (same kernels and gradients, fewer autograd nodes)
            read_words, memory, read_weights, write_weights, usage, precedence, link = native_step.DNCStep.apply(
                tape, vector, s.usage, s.write_weights, s.read_weights, s.memory, s.precedence, s.link,
                (native.ranges_array(ranges), pre, post), addr.EPSILON)
            return read_words, DNCState(memory, read_weights, write_weights, usage, link, precedence)
        act = native.Activate.apply(vector, native.ranges_array(ranges))
        usage, write_weights, memory, precedence = native.PreLink.apply(
            s.usage, s.write_weights, s.read_weights, s.memory, s.precedence, act, pre, addr.EPSILON)
        if tape is None:
            link, forward, backward = addr.temporal_link_step(s.link, s.precedence, write_weights, s.read_weights)
        else:
            forward, backward, link = tape.step(s.link, s.precedence, write_weights, s.read_weights)
        shape = s.read_weights.shape
        read_weights, read_words = native.PostLink.apply(memory, act, forward.reshape(shape),
                                                         backward.reshape(shape), post, addr.EPSILON)
        return read_words, DNCState(memory, read_weights, write_weights, usage, link, precedence)

    def start_unroll(self, state: DNCState, steps: int) -> Tuple[DNCState, LinkTape]:
        """A ``LinkTape`` for ``steps`` calls of ``step(..., tape=tape)`` starting from ``state`` (whose link is
        then the tape's first token). Without autograd no checkpoints are kept."""
        segment = None if torch.is_grad_enabled() else steps + 1
        return state, LinkTape(state.link, steps, segment)

    def finish_unroll(self, state: DNCState, tape: LinkTape) -> DNCState:
        """``state`` with the tape's final link ``[B, H, N, N]`` in place of the token."""
        return state._replace(link=tape.final_link(state.link))

    forward = step
