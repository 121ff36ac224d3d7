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
    if len(slots) <= 64:  # small batches: a Python pass beats numpy's per-call overhead
        values, later = slots.tolist(), set()
        for i in range(len(values) - 1, -1, -1):
            if values[i] in later:
                values[i] = -1
            elif values[i] >= 0:
                later.add(values[i])
        return np.array(values, dtype=np.int64)
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

    def assign_batch(self, free: np.ndarray, m: int) -> np.ndarray:
        """Slots for ``m`` offered items (``-1`` = dropped) given the lowest free slots ``free`` (ascending)."""
        free = free[:m].astype(np.int64, copy=False)
        n_free = len(free)
        rest = m - n_free
        if rest == 0:  # free slots are distinct: nothing can be overwritten within the batch
            self.seen += m
            return free
        stream_index = self.seen + n_free + np.arange(rest, dtype=np.int64)
        draws = (self.rng.random(rest) * (stream_index + 1)).astype(np.int64)  # U{0..t}, exact for t < 2^53
        replaced = np.where(draws < self.capacity, draws, -1)
        self.seen += m
        return keep_last(np.concatenate([free, replaced.astype(np.int64)]))


class ClassBalancedPolicy(_Policy):
    """Fill free slots; when full, replace a random item of the currently largest class.

    If the offered item's class is itself among the largest, one of its own items is replaced, so
    a full store's class counts never drift apart: they converge to within 1 of each other.
    """

    def assign_batch(self, free: np.ndarray, held_slots: np.ndarray, held_labels: np.ndarray,
                     labels: np.ndarray) -> np.ndarray:
        """Slots for items labelled ``labels`` given the lowest free slots and the held (slot, label) pairs."""
        m = len(labels)
        free = free[:m].astype(np.int64, copy=False)
        slots = np.empty(m, dtype=np.int64)
        slots[:len(free)] = free
        if len(free) < m:
            members = _members(np.concatenate([held_slots, free]), np.concatenate([held_labels, labels[:len(free)]]))
            for i, label in enumerate(labels[len(free):].tolist(), start=len(free)):
                slots[i] = self._victim(members, label)
                members.setdefault(label, []).append(int(slots[i]))
        self.seen += m
        return keep_last(slots)

    def _victim(self, members: dict[int, list[int]], label: int) -> int:
        """Remove and return a random slot of the largest class (``label``'s own if it is among them)."""
        largest = max(len(v) for v in members.values())
        if len(members.get(label, ())) == largest:
            victim_class = label
        else:
            tied = sorted(c for c, v in members.items() if len(v) == largest)
            victim_class = tied[int(self.rng.integers(len(tied)))]
        pool = members[victim_class]
        pick = int(self.rng.integers(len(pool)))
        pool[pick], pool[-1] = pool[-1], pool[pick]
        return pool.pop()


def _members(slots: np.ndarray, labels: np.ndarray) -> dict[int, list[int]]:
    """Slots grouped by label (each list ascending)."""
    order = np.lexsort((slots, labels))
    classes, starts = np.unique(labels[order], return_index=True)
    groups = np.split(slots[order], starts[1:])
    return {int(c): g.tolist() for c, g in zip(classes, groups)}


def make_policy(name: str, capacity: int, seed: int) -> ReservoirPolicy | ClassBalancedPolicy:
    """Build the configured policy."""
    return ReservoirPolicy(capacity, seed) if name == "reservoir" else ClassBalancedPolicy(capacity, seed)
