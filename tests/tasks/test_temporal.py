from itertools import permutations

import numpy as np
import pytest

from clmem.tasks.temporal import (
    ORDERS,
    TemporalConfig,
    TemporalProblem,
    TemporalTask,
    answer,
    answer_before,
    answer_first,
    answer_order,
    chronological,
    encode_problem,
)

EVENTS = ((3, 5), (1, 2), (0, 9), (2, 7))  # (event, time): in time order 1, 3, 2, 0


def _brute_force(events, kind, query):
    """The answer by pairwise time comparisons only (no sorting)."""
    time = dict(events)
    if kind == "first":
        a, b = query
        return a if time[a] < time[b] else b
    if kind == "before":
        e, k = query
        earlier = lambda x: sum(time[y] < time[x] for y in time)  # how many events happened before x
        (found,) = [x for x in time if earlier(x) == earlier(e) - k]
        return found
    for index, perm in enumerate(permutations(range(3))):
        if all(time[query[perm[i]]] < time[query[perm[i + 1]]] for i in range(2)):
            return index


def test_answers_by_hand():
    assert chronological(EVENTS) == [1, 3, 2, 0]
    assert answer_first(EVENTS, 3, 0) == 3 and answer_first(EVENTS, 0, 1) == 1
    assert answer_before(EVENTS, 0, 2) == 3 and answer_before(EVENTS, 2, 1) == 3
    assert ORDERS[3] == (1, 2, 0) and answer_order(EVENTS, 0, 1, 2) == 3  # 1 (t=2), then 2 (t=7), then 0 (t=9)
    assert answer_order(EVENTS, 1, 3, 2) == 0 and answer(EVENTS, "order", (2, 3, 1)) == ORDERS.index((2, 1, 0))
    with pytest.raises(ValueError, match=r"^answer_before\.k: expected 1 <= k <= 0 for event 1, got 1$"):
        answer_before(EVENTS, 1, 1)
    with pytest.raises(ValueError, match=r"^answer\.kind: expected one of"):
        answer(EVENTS, "after", (1, 2))


@pytest.mark.parametrize("kind", ["first", "before", "order"])
def test_sampled_answers_equal_brute_force(kind):
    task = TemporalTask(num_event_types=7, min_events=3, max_events=6, max_time=10, max_k=2, seed=4)
    for _ in range(40):
        problem = task.sample_problem(kind)
        ids = [e for e, _ in problem.events]
        times = [t for _, t in problem.events]
        assert len(set(ids)) == len(ids) and len(set(times)) == len(times) and max(times) < 10
        assert problem.kind == kind and problem.answer == _brute_force(problem.events, kind, problem.query)
        if kind == "before":
            assert 1 <= problem.query[1] <= 2


def test_encoding_by_hand():
    config = TemporalConfig(num_event_types=4, min_events=3, max_events=4, max_time=10, max_k=2)
    V, Tm, K = 4, 10, 2
    slots, k_block, flags = V + Tm, 4 * V + Tm, 4 * V + Tm + K
    problem = TemporalProblem(EVENTS, "before", (0, 2), 3)
    x, y, mask = encode_problem(problem, config)
    assert x.shape == (6, config.input_size) and config.input_size == 4 * 4 + 10 + 2 + 5
    assert np.flatnonzero(x[0]).tolist() == [3, V + 5, flags]  # event 3 at time 5
    assert np.flatnonzero(x[4]).tolist() == [slots + 0, k_block + 1, flags + 2]  # before: event 0, k = 2
    assert np.flatnonzero(x[5]).tolist() == [flags + 4]  # answer step
    assert y.tolist() == [0] * 5 + [3] and mask.tolist() == [False] * 5 + [True]
    order = encode_problem(TemporalProblem(EVENTS, "order", (0, 1, 2), 3), config)[0]
    assert np.flatnonzero(order[4]).tolist() == [slots + 0, slots + V + 1, slots + 2 * V + 2, flags + 3]


def test_shuffle_and_classes():
    in_order = TemporalTask(shuffle=False, seed=0)
    assert all(list(p.events) == sorted(p.events, key=lambda e: e[1]) for p in in_order.sample(10)[1])
    shuffled = TemporalTask(seed=0).sample(10)[1]
    assert any(list(p.events) != sorted(p.events, key=lambda e: e[1]) for p in shuffled)
    assert TemporalTask(num_event_types=4, min_events=3, max_events=3, max_k=1).num_classes == 6
    batch, problems = TemporalTask(seed=1, query_kinds=("order",)).sample(5)
    assert batch.inputs.shape[-1] == TemporalConfig().input_size and {p.kind for p in problems} == {"order"}
    assert (batch.targets[batch.mask] == batch.targets.new_tensor([p.answer for p in problems])).all()


def test_seeded_determinism():
    assert TemporalTask(seed=3).sample(4)[1] == TemporalTask(seed=3).sample(4)[1]
    assert TemporalTask(seed=3).sample(4)[1] != TemporalTask(seed=4).sample(4)[1]


@pytest.mark.parametrize("field, value", [
    ("num_event_types", 2), ("min_events", 2), ("max_events", 2.5), ("max_time", 5), ("max_k", 0), ("max_k", 4),
    ("shuffle", 1), ("query_kinds", ("after",)), ("query_kinds", "first"), ("max_events", 9),
])
def test_bad_config_values_name_the_field_in_one_line(field, value):
    with pytest.raises(ValueError, match=rf"^TemporalConfig\.{field}: expected [^\n]*$"):
        TemporalConfig(**{field: value})


def test_config_relations_are_named():
    with pytest.raises(ValueError, match=r"^TemporalConfig\.max_events: expected >= min_events \(5\), got 4$"):
        TemporalConfig(min_events=5, max_events=4)
    with pytest.raises(ValueError, match=r"^TemporalConfig\.max_time: expected an int >= max_events \(6\), got 5$"):
        TemporalConfig(max_time=5)
    with pytest.raises(ValueError, match=r"^TemporalTask\.kind: expected one of \('first',\), got 'order'$"):
        TemporalTask(query_kinds=("first",)).sample_problem("order")
