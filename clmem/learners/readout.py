"""Read-out adapters between a learner's output and a stream's targets."""
from __future__ import annotations

from torch import Tensor, nn


class AnswerStep(nn.Module):
    """A sequence learner whose answer is its **last** step: ``x [B, T, D]`` -> ``logits [B, V]``.

    The bAbI ``sequence`` layout is left-padded so the answer step is step ``T - 1``; wrapped this way,
    a sequence learner is an ordinary classifier to every Avalanche strategy, metric and plugin.
    Attributes of the inner learner (``memory_trace``, ``reset_state`` …) stay reachable as ``.learner``.
    """

    def __init__(self, learner: nn.Module):
        super().__init__()
        self.learner = learner

    def forward(self, x: Tensor) -> Tensor:
        out = self.learner(x)
        if isinstance(out, tuple):  # (logits, state)
            out = out[0]
        return out[:, -1] if out.dim() == 3 else out
