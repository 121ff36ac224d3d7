"""Controllers for memory-augmented cores: an LSTM or a feed-forward network with explicit state.

Public API (kept stable for other cores, e.g. ``SparseDNCCore``)::

    ctrl = Controller(input_size=10, hidden_size=64, kind="lstm")   # or kind="feedforward"
    state = ctrl.initial_state(batch_size, device=None, dtype=None)  # ControllerState
    output, next_state = ctrl(x_t, state)                            # x_t [B, D] -> output [B, hidden_size]
    ctrl.output_size                                                 # == hidden_size

The state is a ``ControllerState(hidden, cell)`` NamedTuple of ``[B, hidden_size]`` tensors for the LSTM.
The feed-forward controller is stateless; its state holds two empty ``[B, 0]`` tensors so that every core can
treat both kinds alike (detach, stack, move to a device).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn

from ._validation import check_choice, check_int

CONTROLLER_KINDS = ("lstm", "feedforward")


class ControllerState(NamedTuple):
    """Recurrent controller state: ``hidden`` and ``cell`` are ``[B, hidden_size]`` (``[B, 0]`` if feed-forward)."""

    hidden: Tensor
    cell: Tensor


@dataclass(frozen=True)
class ControllerConfig:
    """Controller hyper-parameters.

    Attributes:
        input_size: D, size of the controller input (task input plus previous read words).
        hidden_size: size of the controller output (and of the LSTM state).
        kind: ``"lstm"`` (one ``nn.LSTMCell``) or ``"feedforward"`` (``tanh(Linear(x))``).
    """

    input_size: int
    hidden_size: int = 64
    kind: str = "lstm"

    def __post_init__(self) -> None:
        check_int("ControllerConfig", "input_size", self.input_size, 1)
        check_int("ControllerConfig", "hidden_size", self.hidden_size, 1)
        check_choice("ControllerConfig", "kind", self.kind, CONTROLLER_KINDS)


class Controller(nn.Module):
    """LSTM or feed-forward controller; state is passed explicitly and never stored on ``self``."""

    def __init__(self, input_size: int, hidden_size: int = 64, kind: str = "lstm") -> None:
        super().__init__()
        self.config = ControllerConfig(input_size=input_size, hidden_size=hidden_size, kind=kind)
        self.cell: nn.Module = self._make_cell(input_size, hidden_size, kind)

    @staticmethod
    def _make_cell(input_size: int, hidden_size: int, kind: str) -> nn.Module:
        """The cell ``forward`` steps: ``cell(x, (h, c)) -> (h, c)`` for the LSTM, ``cell(x)`` otherwise."""
        return nn.LSTMCell(input_size, hidden_size) if kind == "lstm" else nn.Linear(input_size, hidden_size)

    @property
    def output_size(self) -> int:
        """Size of the controller output, ``hidden_size``."""
        return self.config.hidden_size

    @property
    def state_size(self) -> int:
        """Size of ``hidden``/``cell`` in the state (0 for the stateless feed-forward controller)."""
        return self.config.hidden_size if self.config.kind == "lstm" else 0

    def initial_state(
        self,
        batch_size: int,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> ControllerState:
        """Zero state ``ControllerState(hidden [B, S], cell [B, S])`` with ``S = state_size``."""
        check_int("Controller.initial_state", "batch_size", batch_size, 1)
        if dtype is None:
            dtype = next(self.parameters()).dtype
        zeros = torch.zeros(batch_size, self.state_size, device=device, dtype=dtype)
        return ControllerState(hidden=zeros, cell=zeros.clone())

    def forward(self, inputs: Tensor, prev_state: ControllerState) -> Tuple[Tensor, ControllerState]:
        """One step: ``inputs [B, input_size]`` -> ``(output [B, hidden_size], next_state)``."""
        if self.config.kind == "lstm":
            hidden, cell = self.cell(inputs, (prev_state.hidden, prev_state.cell))
            return hidden, ControllerState(hidden=hidden, cell=cell)
        output = torch.tanh(self.cell(inputs))
        return output, prev_state

    step = forward

    @staticmethod
    def detach_state(state: ControllerState) -> ControllerState:
        """Cut the autograd graph of a state (truncated BPTT)."""
        return ControllerState(hidden=state.hidden.detach(), cell=state.cell.detach())
