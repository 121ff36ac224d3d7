"""Insertion policies: which slot (if any) each offered item goes to.

A policy sees the occupancy of the store and the labels held, and maps a batch of ``m`` offered
items to slots (``-1`` = not stored).  Items of a batch are placed in order, so when two items of
one batch target the same slot only the later one survives and the earlier one is reported ``-1``.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np


def keep_last(slots: np.ndarray) -> np.ndarray:
    """Set to ``-1`` every entry whose slot is targeted again later in the batch."""
    out = slots.copy()
    valid = np.flatnonzero(slots >= 0)
    if len(valid) == 0:
        return out
    reversed_slots = slots[valid][::-1]
    _, first_in_reversed = np.unique(reversed_slots, return_index=True)
    survivors = valid[len(valid) - 1 - first_in_reversed]
    mask = np.zeros(len(slots), dtype=bool)
    mask[survivors] = True
    out[~mask] = -1
    return out


class _Policy:
    """Shared state: a seeded generator and the number of items ever offered."""

    def __init__(self, capacity: int, seed: int) -> None:
        self.capacity = capacity
        self.rng = np.random.default_rng(seed)
        self.seen = 0

    def state(self) -> dict[str, Any]:
        """Checkpointable state (the generator state is kept as JSON: 128-bit ints)."""
        return {"seen": self.seen, "rng": json.dumps(self.rng.bit_generator.state)}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state`."""
        self.seen = int(state["seen"])
        self.rng.bit_generator.state = json.loads(state["rng"])


class ReservoirPolicy(_Policy):
    """Vitter's algorithm R over every item ever offered.

    Free slots (lowest first) are filled first; once full, the item with 0-based stream index ``t``
    draws ``j ~ U{0..t}`` and replaces slot ``j`` if ``j < capacity``.  Without removals every item
    seen so far is held with probability ``capacity / seen``; removals free slots that the next
    items fill, which biases the sample towards recent items.
    """

    def assign_batch(self, occupied: np.ndarray, m: int) -> np.ndarray:
        """Slots for ``m`` offered items (``-1`` = dropped)."""
        free = np.flatnonzero(~occupied)[:m]
        n_free = len(free)
        rest = m - n_free
        if rest == 0:  # free slots are distinct: nothing can be overwritten within the batch
            self.seen += m
            return free.astype(np.int64)
        stream_index = self.seen + n_free + np.arange(rest, dtype=np.int64)
        draws = self.rng.integers(0, stream_index + 1) if rest else np.empty(0, dtype=np.int64)
        replaced = np.where(draws < self.capacity, draws, -1)
        self.seen += m
        return keep_last(np.concatenate([free.astype(np.int64), replaced.astype(np.int64)]))


class ClassBalancedPolicy(_Policy):
    """Fill free slots; when full, replace a random item of the currently largest class.

    If the offered item's class is itself among the largest, one of its own items is replaced, so
    a full store's class counts never drift apart: they converge to within 1 of each other.
    """

    def assign_batch(self, occupied: np.ndarray, held_labels: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Slots for the offered items with labels ``labels`` given the labels currently held."""
        work = np.where(occupied, held_labels, -1).astype(np.int64)
        is_free = ~occupied.copy()
        classes, counts = np.unique(work[~is_free], return_counts=True)
        count = dict(zip(classes.tolist(), counts.tolist()))
        free = list(np.flatnonzero(is_free)[::-1])
        slots = np.empty(len(labels), dtype=np.int64)
        for i, label in enumerate(labels.tolist()):
            slots[i] = free.pop() if free else self._victim(work, count, label)
            work[slots[i]] = label
            count[label] = count.get(label, 0) + 1
        self.seen += len(labels)
        return keep_last(slots)

    def _victim(self, work: np.ndarray, count: dict[int, int], label: int) -> int:
        """Pick the slot to overwrite for an item of class ``label`` and update ``count``."""
        largest = max(count.values())
        if count.get(label, 0) == largest:
            victim_class = label
        else:
            tied = sorted(c for c, n in count.items() if n == largest)
            victim_class = tied[int(self.rng.integers(len(tied)))]
        candidates = np.flatnonzero(work == victim_class)
        count[victim_class] -= 1
        return int(candidates[self.rng.integers(len(candidates))])


def make_policy(name: str, capacity: int, seed: int) -> ReservoirPolicy | ClassBalancedPolicy:
    """Build the configured policy."""
    return ReservoirPolicy(capacity, seed) if name == "reservoir" else ClassBalancedPolicy(capacity, seed)
