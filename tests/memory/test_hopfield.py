"""Modern Hopfield memory: retrieval maths, gradcheck, buffer persistence and write policies."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clmem.memory.hopfield import HopfieldConfig, HopfieldMemory, hopfield_retrieve

KEYS = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
VALUES = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]], dtype=torch.float64)


def test_large_beta_retrieves_nearest_pattern_exactly():
    query = torch.tensor([[0.9, 0.2, 0.1], [0.1, 0.3, 0.8]], dtype=torch.float64)
    out = hopfield_retrieve(query, KEYS, VALUES, beta=1000.0)
    torch.testing.assert_close(out, VALUES[[0, 2]], rtol=0, atol=1e-12)


def test_zero_beta_gives_mean_of_values():
    query = torch.tensor([[0.9, 0.2, 0.1]], dtype=torch.float64)
    out = hopfield_retrieve(query, KEYS, VALUES, beta=0.0, steps=3)
    torch.testing.assert_close(out, torch.tensor([[3.0, 5.0]], dtype=torch.float64))


def test_hand_computed_softmax_and_keys_only_iteration():
    query = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    e = torch.exp(torch.tensor(1.0, dtype=torch.float64))  # scores (1, 0, 0) at beta = 1
    expected = torch.stack([e * VALUES[0] + VALUES[1] + VALUES[2]]) / (e + 2)
    torch.testing.assert_close(hopfield_retrieve(query, KEYS, VALUES, beta=1.0), expected)
    one = hopfield_retrieve(query, KEYS, beta=1.0)  # keys-only: xi <- K^T softmax(beta K xi)
    torch.testing.assert_close(one, torch.tensor([[e, 1.0, 1.0]], dtype=torch.float64) / (e + 2))
    torch.testing.assert_close(hopfield_retrieve(query, KEYS, beta=1.0, steps=2),
                               hopfield_retrieve(one, KEYS, beta=1.0))


def test_gradcheck_retrieve():
    gen = torch.Generator().manual_seed(0)
    query = torch.randn(2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    keys = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    values = torch.randn(5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v: hopfield_retrieve(q, k, v, beta=0.7, steps=3),
                                    (query, keys, values))


def test_buffers_persist_and_change_only_through_write():
    memory = HopfieldMemory(HopfieldConfig(capacity=4, key_size=3, value_size=2, beta=1000.0))
    assert torch.equal(memory(KEYS.float()), torch.zeros(3, 2))
    slots = memory.write(KEYS, VALUES)
    assert slots.tolist() == [0, 1, 2] and int(memory.filled) == 3
    assert list(memory.parameters()) == []
    snapshot = {name: buf.clone() for name, buf in memory.named_buffers()}
    query = KEYS.float().clone().requires_grad_(True)
    out = memory(query)
    out.sum().backward()  # gradients flow to the query, never into the buffers
    assert query.grad is not None
    torch.testing.assert_close(out.detach(), VALUES.float()[:, :])
    for name, buf in memory.named_buffers():
        assert torch.equal(buf, snapshot[name]), name
        assert not buf.requires_grad
    memory.reset()
    assert int(memory.filled) == 0 and torch.all(memory.keys == 0)


def test_state_dict_round_trip():
    config = HopfieldConfig(capacity=3, key_size=3, value_size=2, steps=2)
    memory = HopfieldMemory(config)
    memory.write(KEYS[:2], VALUES[:2])
    clone = HopfieldMemory(config)
    clone.load_state_dict(memory.state_dict())
    assert set(memory.state_dict()) == {"keys", "values", "filled", "usage", "pointer"}
    assert int(clone.filled) == 2
    query = torch.tensor([[0.3, 0.6, 0.1]])
    torch.testing.assert_close(clone(query), memory(query))


def test_ring_policy_overwrites_oldest():
    memory = HopfieldMemory(HopfieldConfig(capacity=2, key_size=3))
    memory.write(KEYS[:2])
    assert memory.write(KEYS[2:]).tolist() == [0]
    assert memory.write(KEYS[:1]).tolist() == [1]
    torch.testing.assert_close(memory.keys, KEYS[[2, 0]].float())


def test_least_used_policy_replaces_least_attended_pattern():
    memory = HopfieldMemory(HopfieldConfig(capacity=2, key_size=3, value_size=2, beta=50.0, policy="least_used"))
    memory.write(KEYS[:2], VALUES[:2])
    memory.record_usage(KEYS[:1].float())  # pattern 0 gets (almost) all the attention
    assert memory.write(KEYS[2:], VALUES[2:]).tolist() == [1]
    torch.testing.assert_close(memory(KEYS[2:].float()), VALUES[2:].float())


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"capacity": 0}, "capacity"), ({"key_size": 2.0}, "key_size"), ({"value_size": 0}, "value_size"),
     ({"beta": -1.0}, "beta"), ({"steps": 0}, "steps"), ({"policy": "fifo"}, "policy")],
)
def test_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=rf"^HopfieldConfig\.{field}: "):
        HopfieldConfig(**{"capacity": 3, "key_size": 3, **kwargs})


def test_write_requires_values_iff_configured():
    memory = HopfieldMemory(HopfieldConfig(capacity=3, key_size=3, value_size=2))
    with pytest.raises(ValueError, match="values"):
        memory.write(KEYS)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 6), w=st.integers(1, 4), v=st.integers(1, 3), beta=st.floats(0, 20), steps=st.integers(1, 3),
       seed=st.integers(0, 2**16))
def test_retrieval_is_a_convex_combination_of_values(n, w, v, beta, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    keys, values = torch.randn(n, w, generator=gen, dtype=torch.float64), torch.randn(n, v, generator=gen,
                                                                                      dtype=torch.float64)
    out = hopfield_retrieve(torch.randn(2, w, generator=gen, dtype=torch.float64), keys, values, beta, steps)
    assert torch.all(out >= values.min(0).values - 1e-9) and torch.all(out <= values.max(0).values + 1e-9)
