"""Memory that grows between experiences: :class:`MemoryGrowthPlugin`.

A growing memory (the ``gated`` learner built with ``max_memory_size > memory_size``:
:class:`clmem.memory.gated.GatedMemory`) starts every sequence with ``slots`` empty slots in use, a buffer in
its ``state_dict``; :meth:`~clmem.memory.gated.GatedMemory.grow` raises it, under no-grad. This plugin calls it
after every training experience, so each new experience starts with ``slots_per_experience`` more slots (never
more than ``max_memory_size``: once full, it stops growing). The sequence strategies take it as the option
``grow_memory`` (0: off); in a plain Avalanche script pass ``MemoryGrowthPlugin(n)`` in ``plugins``.

State: the slot count after each experience it grew (``history``), saved by ``state_dict`` beside the
model's own buffer, so a resumed trial reports the same history.
"""
from __future__ import annotations

from typing import Any

from avalanche.core import SupervisedPlugin
from torch import nn

from clmem.memory.gated import can_grow

__all__ = ["MemoryGrowthPlugin", "growing_memories"]


def growing_memories(model: nn.Module) -> list[nn.Module]:
    """Modules of ``model`` that can still gain slots: those with ``grow`` and a capacity above their size."""
    return [m for m in model.modules()
            if callable(getattr(m, "grow", None)) and hasattr(m, "slots") and hasattr(m, "capacity")
            and can_grow(m.config.memory_size, int(m.capacity))]


class MemoryGrowthPlugin(SupervisedPlugin):
    """After each training experience, add ``slots_per_experience`` slots to every growing memory of the model
    (capped at its capacity)."""

    def __init__(self, slots_per_experience: int = 1):
        super().__init__()
        if isinstance(slots_per_experience, bool) or not isinstance(slots_per_experience, int) \
                or slots_per_experience < 1:
            raise ValueError(f"MemoryGrowthPlugin.slots_per_experience: expected an int >= 1, "
                             f"got {slots_per_experience!r}")
        self.slots_per_experience = slots_per_experience
        self.history: list[list[int]] = []

    def before_training(self, strategy, **kwargs):
        if not growing_memories(strategy.model):
            raise ValueError(f"strategy.grow_memory: model {type(strategy.model).__name__} has no memory that can "
                             f"grow (expected the gated learner with max_memory_size > memory_size)")

    def after_training_exp(self, strategy, **kwargs):
        sizes = []
        for memory in growing_memories(strategy.model):
            room = int(memory.capacity) - int(memory.slots)
            sizes.append(memory.grow(min(room, self.slots_per_experience)) if room else int(memory.slots))
        self.history.append(sizes)

    def state_dict(self) -> dict[str, Any]:
        return {"slots_per_experience": self.slots_per_experience, "history": [list(h) for h in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("slots_per_experience") != self.slots_per_experience:
            raise ValueError(f"MemoryGrowthPlugin.slots_per_experience: the checkpoint grew by "
                             f"{state.get('slots_per_experience')!r} per experience, this plugin by "
                             f"{self.slots_per_experience}")
        self.history = [list(h) for h in state["history"]]
