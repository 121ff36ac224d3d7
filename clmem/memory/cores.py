"""Controller + memory cores: ``NTMCore``, ``DNCCore`` and ``MANNCore`` (LRUA).

Per step: ``controller([x_t, r_{t-1}])`` -> clip -> linear interface -> ``memory.step`` -> read words ``r_t``;
output ``y_t = clip(Linear([controller_out, r_t]))`` (as DeepMind's DNC). State is explicit and immutable.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Any, List, NamedTuple, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ._validation import (check_batch_input, check_bool, check_choice, check_fraction, check_int,
                          check_positive_float)
from .controller import CONTROLLER_KINDS, Controller, ControllerState
from .dnc import DNCMemory, DNCMemoryConfig
from .dnc_improved import LayerNormController
from .lrua import LRUAMemory, LRUAMemoryConfig
from .ntm import MEMORY_INITS as NTM_MEMORY_INITS, WEIGHT_INITS as NTM_WEIGHT_INITS, NTMMemory, NTMMemoryConfig


@dataclass(frozen=True)
class CoreConfig:
    """Shared core hyper-parameters.

    ``clip_value=None`` disables clipping of controller and core outputs. ``checkpoint_every`` trades compute for
    memory when training: ``k >= 1`` recomputes the unroll in segments of ``k`` steps during backward
    (``torch.utils.checkpoint``), ``0`` never does, ``None`` (default) decides per call: on for a DNC whose link
    state ``B*H*N*N`` has at least 2**23 elements, with segments of ``ceil(sqrt(T))`` steps. A memory with
    ``start_unroll`` (the DNC: its link matrices go to a ``LinkTape``, which recomputes only them) is never
    checkpointed with ``0`` or ``None``; ``checkpoint_segment`` then only reports the generic policy.
    """

    input_size: int
    output_size: int
    hidden_size: int = 64
    controller: str = "lstm"
    memory_size: int = 128
    word_size: int = 20
    num_reads: int = 1
    num_writes: int = 1
    clip_value: Optional[float] = 20.0
    checkpoint_every: Optional[int] = None

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if self.checkpoint_every is not None:
            check_int(owner, "checkpoint_every", self.checkpoint_every, 0)
        for field in ("input_size", "output_size", "hidden_size", "memory_size", "word_size", "num_reads",
                      "num_writes"):
            check_int(owner, field, getattr(self, field), 1)
        check_choice(owner, "controller", self.controller, CONTROLLER_KINDS)
        check_positive_float(owner, "clip_value", self.clip_value, allow_none=True)


def check_robust(owner: str, layer_norm: Any, bypass_dropout: Any) -> None:
    """Validate the rsDNC options (Franke et al. 2018) of a core config: one line naming the field."""
    check_bool(owner, "layer_norm", layer_norm)
    check_fraction(owner, "bypass_dropout", bypass_dropout)


@dataclass(frozen=True)
class DNCCoreConfig(CoreConfig):
    """``DNCCore`` hyper-parameters, with the improvements of ``dnc_improved`` (all off by default):
    ``masked_content``, ``dealloc_erase``, ``link_sharpness`` (see ``DNCMemoryConfig``), ``layer_norm`` (a
    layer-normalised controller) and ``bypass_dropout`` (dropout probability on the controller output where it
    bypasses the memory into the output layer, in training only; rsDNC)."""

    masked_content: bool = False
    dealloc_erase: bool = False
    link_sharpness: bool = False
    layer_norm: bool = False
    bypass_dropout: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_robust(type(self).__name__, self.layer_norm, self.bypass_dropout)
        try:
            self.memory_config()
        except ValueError as exc:  # re-raise under this class's name, still one line naming the field
            raise ValueError(str(exc).replace("DNCMemoryConfig.", f"{type(self).__name__}.", 1)) from None

    def memory_config(self) -> DNCMemoryConfig:
        return DNCMemoryConfig(self.memory_size, self.word_size, self.num_reads, self.num_writes,
                               self.masked_content, self.dealloc_erase, self.link_sharpness)


@dataclass(frozen=True)
class NTMCoreConfig(CoreConfig):
    """``NTMCore`` hyper-parameters; ``shift_range`` s allows shifts in ``[-s, s]``; ``memory_init`` and
    ``weight_init`` choose the initial memory and head weights (see :mod:`clmem.memory.ntm`)."""

    shift_range: int = 1
    memory_init: str = "constant"
    weight_init: str = "onehot"

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        check_int(owner, "shift_range", self.shift_range, 0)
        check_choice(owner, "memory_init", self.memory_init, NTM_MEMORY_INITS)
        check_choice(owner, "weight_init", self.weight_init, NTM_WEIGHT_INITS)

    def memory_config(self) -> NTMMemoryConfig:
        return NTMMemoryConfig(self.memory_size, self.word_size, self.num_reads, self.num_writes, self.shift_range,
                               self.memory_init, self.weight_init)


@dataclass(frozen=True)
class MANNCoreConfig(CoreConfig):
    """``MANNCore`` (LRUA) hyper-parameters; needs ``num_writes <= num_reads``."""

    usage_decay: float = 0.95

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        if self.num_writes > self.num_reads or self.num_writes > self.memory_size:
            raise ValueError(f"{owner}.num_writes: expected an int <= num_reads ({self.num_reads}) "
                             f"and <= memory_size ({self.memory_size}), got {self.num_writes}")
        check_fraction(owner, "usage_decay", self.usage_decay)

    def memory_config(self) -> LRUAMemoryConfig:
        return LRUAMemoryConfig(self.memory_size, self.word_size, self.num_reads, self.num_writes,
                                float(self.usage_decay))


class CoreState(NamedTuple):
    """Core state: controller state, memory state (``NTMState``/``DNCState``/``LRUAState``), ``read_words``
    ``[B, R, W]`` from the previous step."""

    controller_state: ControllerState
    memory_state: Any
    read_words: Tensor


class CoreTrace(NamedTuple):
    """Per-step addressing trace (detached, for plots); ``usage`` is ``None`` for the NTM (no usage)."""

    read_weights: Tensor  # [B, T, R, N]
    write_weights: Tensor  # [B, T, H, N]
    usage: Optional[Tensor]  # [B, T, N]


def detach_state(state: Any) -> Any:
    """Detach every tensor of a (nested) NamedTuple state, for truncated BPTT."""
    if isinstance(state, Tensor):
        return state.detach()
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        return type(state)(*(detach_state(item) for item in state))
    if isinstance(state, (tuple, list)):
        return type(state)(detach_state(item) for item in state)
    return state


AUTO_CHECKPOINT_ELEMENTS = 1 << 23


class MemoryCore(nn.Module):
    """Base class: controller + memory module; subclasses set ``config_class`` and ``memory_class``."""

    config_class: type = CoreConfig
    memory_class: type = DNCMemory

    def __init__(self, config: Optional[CoreConfig] = None, **kwargs: Any) -> None:
        super().__init__()
        if config is None:
            config = self.config_class(**kwargs)
        elif kwargs or not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__}: pass either a {self.config_class.__name__} or keyword "
                            f"arguments, not both")
        self.config = config
        read_size = config.num_reads * config.word_size
        self.memory = self.memory_class(config.memory_config())
        # a config with ``layer_norm`` (DNC, sparse DNC) gets the layer-normalised controller
        controller = LayerNormController if getattr(config, "layer_norm", False) else Controller
        self.controller = controller(config.input_size + read_size, config.hidden_size, config.controller)
        self.interface_layer = nn.Linear(config.hidden_size, self.memory.interface_size)
        self.output_layer = nn.Linear(config.hidden_size + read_size, config.output_size)

    def _clip(self, x: Tensor) -> Tensor:
        clip = self.config.clip_value
        return x if clip is None else x.clamp(-clip, clip)

    def initial_state(
        self, batch_size: int, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
    ) -> CoreState:
        """Zero state on ``device`` with ``dtype`` (default: the parameters' dtype)."""
        if dtype is None:
            dtype = self.output_layer.weight.dtype
        c = self.config
        return CoreState(
            controller_state=self.controller.initial_state(batch_size, device, dtype),
            memory_state=self.memory.initial_state(batch_size, device, dtype),
            read_words=torch.zeros(batch_size, c.num_reads, c.word_size, device=device, dtype=dtype),
        )

    def step(self, x_t: Tensor, prev_state: CoreState, tape: Any = None) -> Tuple[Tensor, CoreState]:
        """One time step: ``x_t [B, input_size]`` -> ``(y_t [B, output_size], next_state)``; ``tape`` is the
        memory's unroll helper inside ``forward`` (``None`` for a standalone step)."""
        controller_output, state = self._memory_step(x_t, prev_state, tape)
        return self._output(controller_output, state.read_words), state

    def _memory_step(self, x_t: Tensor, prev_state: CoreState, tape: Any = None) -> Tuple[Tensor, CoreState]:
        """``step`` without the output layer: ``(clipped controller output [B, hidden], next_state)``."""
        batch_size = x_t.shape[0]
        controller_input = torch.cat([x_t, prev_state.read_words.reshape(batch_size, -1)], dim=-1)
        controller_output, controller_state = self.controller(controller_input, prev_state.controller_state)
        controller_output = self._clip(controller_output)
        vector = self.interface_layer(controller_output)
        if hasattr(self.memory, "step_vector"):  # the DNC parses (and activates) the raw interface itself
            read_words, memory_state = self.memory.step_vector(vector, prev_state.memory_state, tape)
            return controller_output, CoreState(controller_state, memory_state, read_words)
        interface = self.memory.parse_interface(vector)
        if tape is None:
            read_words, memory_state = self.memory.step(interface, prev_state.memory_state)
        else:
            read_words, memory_state = self.memory.step(interface, prev_state.memory_state, tape=tape)
        return controller_output, CoreState(controller_state, memory_state, read_words)

    def _output(self, controller_output: Tensor, read_words: Tensor) -> Tensor:
        """``clip(Linear([controller_output, read_words]))`` for ``[..., hidden]`` and ``[..., R, W]`` inputs; in
        training, a config's ``bypass_dropout`` drops units of ``controller_output`` on this path only (the
        interface, i.e. the memory path, sees them all)."""
        dropout = getattr(self.config, "bypass_dropout", 0.0)
        if dropout and self.training:
            controller_output = F.dropout(controller_output, dropout, training=True)
        flat_reads = read_words.reshape(*read_words.shape[:-2], -1)
        return self._clip(self.output_layer(torch.cat([controller_output, flat_reads], dim=-1)))

    def forward(
        self, x: Tensor, state: Optional[CoreState] = None, return_trace: bool = False
    ) -> Union[Tuple[Tensor, CoreState], Tuple[Tensor, CoreState, CoreTrace]]:
        """Batch-first unroll: ``x [B, T, input_size]`` -> ``(y [B, T, output_size], final_state[, trace])``."""
        if x.dim() != 3 or x.shape[-1] != self.config.input_size or x.shape[1] < 1:
            raise ValueError(f"{type(self).__name__}.forward: expected x of shape [B, T>=1, "
                             f"{self.config.input_size}], got {tuple(x.shape)}")
        check_batch_input(f"{type(self).__name__}.forward", x, self.output_layer.weight.dtype)
        if state is None:
            state = self.initial_state(x.shape[0], device=x.device, dtype=x.dtype)
        segment = self.checkpoint_segment(x, state)
        if self.config.checkpoint_every in (None, 0) and hasattr(self.memory, "start_unroll"):
            # the memory keeps its large state (the DNC link) in a tape that recomputes only that state, so
            # no segment of the network is recomputed
            memory_state, tape = self.memory.start_unroll(state.memory_state, x.shape[1])
            y, state, memory_states = self._unroll(x, state._replace(memory_state=memory_state), return_trace,
                                                   tape)
            state = state._replace(memory_state=self.memory.finish_unroll(state.memory_state, tape))
        elif segment is None:
            y, state, memory_states = self._unroll(x, state, return_trace)
        else:
            pieces, memory_states = [], []
            for start in range(0, x.shape[1], segment):
                y_part, state, states_part = checkpoint(
                    self._unroll, x[:, start : start + segment], state, return_trace,
                    use_reentrant=False, preserve_rng_state=False,
                )
                pieces.append(y_part)
                memory_states.extend(states_part)
            y = torch.cat(pieces, dim=1)
        if not return_trace:
            return y, state
        return y, state, self._trace(memory_states)

    def _unroll(
        self, x: Tensor, state: CoreState, record: bool, tape: Any = None
    ) -> Tuple[Tensor, CoreState, List[Any]]:
        """Run ``step`` over ``x [B, T, D]``; returns outputs, final state and (if ``record``) detached memory
        states."""
        controller_outputs, read_words, memory_states = [], [], []
        for t in range(x.shape[1]):
            controller_output, state = self._memory_step(x[:, t], state, tape)
            controller_outputs.append(controller_output)
            read_words.append(state.read_words)
            if record:
                memory_states.append(detach_state(state.memory_state))
        # the output layer does not feed back into the recurrence: one batched layer for all steps
        y = self._output(torch.stack(controller_outputs, dim=1), torch.stack(read_words, dim=1))
        return y, state, memory_states

    def checkpoint_segment(self, x: Tensor, state: CoreState) -> Optional[int]:
        """Segment length ``forward`` uses for gradient checkpointing on ``x [B, T, D]`` from ``state``, or ``None``
        for a plain unroll (see ``CoreConfig.checkpoint_every``)."""
        every = self.config.checkpoint_every
        if every == 0 or not torch.is_grad_enabled() or x.shape[1] < 2:
            return None
        if every is not None:
            return every
        link = getattr(state.memory_state, "link", None)
        if link is None or link.numel() < AUTO_CHECKPOINT_ELEMENTS:
            return None
        return math.ceil(math.sqrt(x.shape[1]))

    @staticmethod
    def _trace(memory_states: list) -> CoreTrace:
        usage = None
        if hasattr(memory_states[0], "usage"):
            usage = torch.stack([s.usage for s in memory_states], dim=1)
        return CoreTrace(
            read_weights=torch.stack([s.read_weights for s in memory_states], dim=1),
            write_weights=torch.stack([s.write_weights for s in memory_states], dim=1),
            usage=usage,
        )

    @staticmethod
    def detach_state(state: CoreState) -> CoreState:
        """Detach a state from the autograd graph (truncated BPTT)."""
        return detach_state(state)


class DNCCore(MemoryCore):
    """Differentiable Neural Computer core (Graves et al. 2016)."""

    config_class = DNCCoreConfig
    memory_class = DNCMemory


class NTMCore(MemoryCore):
    """Neural Turing Machine core (Graves et al. 2014)."""

    config_class = NTMCoreConfig
    memory_class = NTMMemory


class MANNCore(MemoryCore):
    """Memory-augmented neural network with LRUA memory (Santoro et al. 2016)."""

    config_class = MANNCoreConfig
    memory_class = LRUAMemory
