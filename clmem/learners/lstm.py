"""LSTM baseline sequence learner: ``forward(x [B, T, D]) -> logits [B, T, O]``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from torch import Tensor, nn

from clmem.memory._validation import check_batch_input
from clmem.tasks._common import check_int


@dataclass(frozen=True)
class LSTMLearnerConfig:
    """``num_layers`` stacked LSTM layers of ``hidden_size`` units, then a linear read-out."""

    input_size: int
    output_size: int
    hidden_size: int = 128
    num_layers: int = 1

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for field in ("input_size", "output_size", "hidden_size", "num_layers"):
            check_int(owner, field, getattr(self, field), 1)


class LSTMLearner(nn.Module):
    """Batch-first LSTM + linear output layer."""

    def __init__(self, config: Optional[LSTMLearnerConfig] = None, **kwargs: Any) -> None:
        super().__init__()
        if config is None:
            config = LSTMLearnerConfig(**kwargs)
        elif kwargs:
            raise TypeError("LSTMLearner: pass either a LSTMLearnerConfig or keyword arguments, not both")
        self.config = config
        self.lstm = nn.LSTM(config.input_size, config.hidden_size, config.num_layers, batch_first=True)
        self.output_layer = nn.Linear(config.hidden_size, config.output_size)

    def forward(self, x: Tensor, state: Optional[tuple] = None) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.config.input_size:
            raise ValueError(f"LSTMLearner.forward: expected x of shape [B, T, {self.config.input_size}], "
                             f"got {tuple(x.shape)}")
        check_batch_input("LSTMLearner.forward", x, self.output_layer.weight.dtype)
        hidden, _ = self.lstm(x, state)
        return self.output_layer(hidden)
