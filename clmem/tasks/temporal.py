"""Temporal reasoning: a sequence of timestamped events (distinct event types at distinct times, presented in a
random order with ``shuffle``), then one question about their order in time:

* **first** — of two events ``(a, b)``, which happened first; the answer is that event's id;
* **before** — which event happened ``k`` events before event ``e`` (``k`` counts events in time order, not
  time units); the answer is an event id;
* **order** — the time order of three events ``(a, b, c)``; the answer is the index in :data:`ORDERS` of the
  slots sorted by time (e.g. ``b`` then ``a`` then ``c`` is ``(1, 0, 2)``, index 2).

Encoding (``D = V + max_time + 3 V + max_k + 5``, ``V = num_event_types``): an event block (one-hot), a time
block (one-hot timestamp), three query-slot blocks ``a, b, c`` (one-hot event ids), a ``k`` block (one-hot
``k - 1``), then flags (event, first query, before query, order query, answer). An event is one step (event,
time, event flag); the query one step (its slots, ``k`` for ``before``, its kind's flag); then one answer step.
``targets [T]`` hold the answer at the answer step, where ``mask`` is True; answers are classes
``0..num_classes-1`` with ``num_classes = max(V, 6)`` (event ids, or an order index).
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ._common import SequenceBatch, check_choice, check_int, check_range, pad_batch

__all__ = [
    "QUERY_KINDS", "ORDERS", "TemporalProblem", "TemporalConfig", "TemporalTask", "chronological", "answer_first",
    "answer_before", "answer_order", "answer", "encode_problem",
]

QUERY_KINDS = ("first", "before", "order")
#: The orders of three query slots, by index (the ``order`` answer).
ORDERS: Tuple[Tuple[int, int, int], ...] = tuple(permutations(range(3)))
Event = Tuple[int, int]  # (event id, time)


class TemporalProblem(NamedTuple):
    """``events`` ``(event id, time)`` in presentation order; ``query`` the slots (``first``: ``(a, b)``,
    ``before``: ``(e, k)``, ``order``: ``(a, b, c)``); ``answer`` the target class."""

    events: Tuple[Event, ...]
    kind: str
    query: Tuple[int, ...]
    answer: int


def chronological(events: Sequence[Event]) -> List[int]:
    """Event ids sorted by time."""
    return [e for e, _ in sorted(events, key=lambda ev: ev[1])]


def answer_first(events: Sequence[Event], a: int, b: int) -> int:
    """Whichever of events ``a`` and ``b`` happened first."""
    time = dict(events)
    return a if time[a] < time[b] else b


def answer_before(events: Sequence[Event], e: int, k: int) -> int:
    """The event ``k`` events before ``e`` in time order (``k >= 1``); ``ValueError`` when there is none."""
    order = chronological(events)
    position = order.index(e) - k
    if k < 1 or position < 0:
        raise ValueError(f"answer_before.k: expected 1 <= k <= {order.index(e)} for event {e}, got {k}")
    return order[position]


def answer_order(events: Sequence[Event], a: int, b: int, c: int) -> int:
    """Index in :data:`ORDERS` of the slots ``(0, 1, 2)`` of ``a, b, c`` sorted by time."""
    time = dict(events)
    slots = (a, b, c)
    return ORDERS.index(tuple(sorted(range(3), key=lambda s: time[slots[s]])))


def answer(events: Sequence[Event], kind: str, query: Sequence[int]) -> int:
    """The answer to a ``kind`` query over ``events``."""
    check_choice("answer", "kind", kind, QUERY_KINDS)
    fn = {"first": answer_first, "before": answer_before, "order": answer_order}[kind]
    return fn(events, *query)


@dataclass(frozen=True)
class TemporalConfig:
    """``min_events``–``max_events`` events of distinct types out of ``num_event_types`` at distinct times in
    ``0..max_time-1``; ``before`` queries ask ``k`` in ``1..max_k`` events back; ``shuffle`` presents the events in
    a random order (else in time order)."""

    num_event_types: int = 8
    min_events: int = 4
    max_events: int = 6
    max_time: int = 16
    max_k: int = 2
    shuffle: bool = True
    query_kinds: Tuple[str, ...] = QUERY_KINDS

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_int(owner, "num_event_types", self.num_event_types, 3)
        check_int(owner, "min_events", self.min_events, 3)
        check_int(owner, "max_events", self.max_events, 3)
        check_range(owner, "min_events", "max_events", self.min_events, self.max_events)
        if self.max_events > self.num_event_types:
            raise ValueError(f"{owner}.max_events: expected an int <= num_event_types ({self.num_event_types}), "
                             f"got {self.max_events}")
        if isinstance(self.max_time, bool) or not isinstance(self.max_time, int) or self.max_time < self.max_events:
            raise ValueError(f"{owner}.max_time: expected an int >= max_events ({self.max_events}), "
                             f"got {self.max_time!r}")
        check_int(owner, "max_k", self.max_k, 1)
        if self.max_k >= self.min_events:
            raise ValueError(f"{owner}.max_k: expected an int < min_events ({self.min_events}), got {self.max_k}")
        if not isinstance(self.shuffle, bool):
            raise ValueError(f"{owner}.shuffle: expected true or false, got {self.shuffle!r}")
        if (not isinstance(self.query_kinds, tuple) or not self.query_kinds
                or any(k not in QUERY_KINDS for k in self.query_kinds)):
            raise ValueError(f"{owner}.query_kinds: expected a non-empty tuple of {QUERY_KINDS}, "
                             f"got {self.query_kinds!r}")

    @property
    def input_size(self) -> int:
        return 4 * self.num_event_types + self.max_time + self.max_k + 5

    @property
    def num_classes(self) -> int:
        return max(self.num_event_types, len(ORDERS))


def encode_problem(problem: TemporalProblem, config: TemporalConfig) -> Tuple[np.ndarray, ...]:
    """``(x [T, D], y [T] int64, mask [T])``, ``T = len(events) + 2``; the answer is the target of the last step."""
    V, Tm, K = config.num_event_types, config.max_time, config.max_k
    slots, k_block, flags = V + Tm, 4 * V + Tm, 4 * V + Tm + K
    x = np.zeros((len(problem.events) + 2, config.input_size), np.float32)
    for i, (event, time) in enumerate(problem.events):
        x[i, event] = x[i, V + time] = x[i, flags] = 1.0
    query = x[len(problem.events)]
    if problem.kind == "before":
        e, k = problem.query
        query[slots + e] = query[k_block + k - 1] = 1.0
    else:
        for s, event in enumerate(problem.query):
            query[slots + s * V + event] = 1.0
    query[flags + 1 + QUERY_KINDS.index(problem.kind)] = 1.0
    x[-1, flags + 4] = 1.0
    y = np.zeros(len(x), np.int64)
    y[-1] = problem.answer
    mask = np.zeros(len(x), bool)
    mask[-1] = True
    return x, y, mask


class TemporalTask:
    """Seeded generator of temporal-reasoning problems and their sequence encoding."""

    def __init__(self, config: Optional[TemporalConfig] = None, seed: int = 0, **kwargs) -> None:
        if config is None:
            config = TemporalConfig(**kwargs)
        elif kwargs:
            raise TypeError("TemporalTask: pass either a TemporalConfig or keyword arguments, not both")
        self.config = config
        self.rng = np.random.default_rng(seed)

    input_size = property(lambda self: self.config.input_size)
    num_classes = property(lambda self: self.config.num_classes)

    def _events(self) -> Tuple[Event, ...]:
        c = self.config
        n = int(self.rng.integers(c.min_events, c.max_events + 1))
        ids = self.rng.choice(c.num_event_types, n, replace=False)
        times = np.sort(self.rng.choice(c.max_time, n, replace=False))
        events = [(int(e), int(t)) for e, t in zip(ids, times)]
        order = self.rng.permutation(n) if c.shuffle else np.arange(n)
        return tuple(events[i] for i in order)

    def _query(self, events: Tuple[Event, ...], kind: str) -> Tuple[int, ...]:
        ids = [e for e, _ in events]
        if kind == "before":
            k = int(self.rng.integers(1, self.config.max_k + 1))
            later = chronological(events)[k:]
            return later[int(self.rng.integers(len(later)))], k
        picked = self.rng.choice(len(ids), 2 if kind == "first" else 3, replace=False)
        return tuple(ids[int(i)] for i in picked)

    def sample_problem(self, kind: Optional[str] = None) -> TemporalProblem:
        """A problem with a ``kind`` query (default: drawn uniformly from ``config.query_kinds``)."""
        kinds = self.config.query_kinds
        if kind is None:
            kind = kinds[int(self.rng.integers(len(kinds)))]
        check_choice("TemporalTask", "kind", kind, kinds)
        events = self._events()
        query = self._query(events, kind)
        return TemporalProblem(events, kind, query, answer(events, kind, query))

    def encode(self, problem: TemporalProblem) -> Tuple[np.ndarray, ...]:
        """:func:`encode_problem` at this task's sizes."""
        return encode_problem(problem, self.config)

    def sample(self, batch_size: int, kind: Optional[str] = None) -> Tuple[SequenceBatch, List[TemporalProblem]]:
        """A batch padded at the end (answer steps marked by ``mask``) and its problems."""
        check_int("TemporalTask", "batch_size", batch_size, 1)
        problems = [self.sample_problem(kind) for _ in range(batch_size)]
        return pad_batch([self.encode(p) for p in problems]), problems
