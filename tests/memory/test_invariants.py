"""Invariants of the memories after random steps, with fixed seeds and as a property-based test."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clmem.memory import DNCMemory, LRUAMemory, NTMMemory

F64 = torch.float64
TOL = 1e-6


def random_steps(memory, batch, steps, seed, scale):
    gen = torch.Generator().manual_seed(seed)
    state = memory.initial_state(batch, dtype=F64)
    states = []
    for _ in range(steps):
        vector = torch.randn(batch, memory.interface_size, generator=gen, dtype=F64) * scale
        read_words, state = memory.step(memory.parse_interface(vector), state)
        assert torch.isfinite(read_words).all()
        states.append(state)
    return states


def check_weights(weights):
    assert (weights >= 0).all()
    assert (weights.sum(-1) <= 1 + TOL).all()


def check_dnc(state):
    check_weights(state.read_weights)
    check_weights(state.write_weights)
    check_weights(state.precedence)
    assert ((state.usage >= 0) & (state.usage <= 1)).all()
    link = state.link
    assert (link >= -TOL).all()
    assert torch.equal(link.diagonal(dim1=-2, dim2=-1), torch.zeros_like(link[..., 0]))
    assert (link.sum(-1) <= 1 + TOL).all() and (link.sum(-2) <= 1 + TOL).all()


def check_ntm(state):
    check_weights(state.read_weights)
    check_weights(state.write_weights)


def check_lrua(state, memory):
    c = memory.config
    check_weights(state.write_weights)
    check_weights(state.read_weights)
    bound = (c.num_reads + c.num_writes) / (1 - c.usage_decay)
    assert ((state.usage >= 0) & (state.usage <= bound + TOL)).all()


def check(memory, state):
    if isinstance(memory, DNCMemory):
        check_dnc(state)
    elif isinstance(memory, NTMMemory):
        check_ntm(state)
    else:
        check_lrua(state, memory)
    assert all(torch.isfinite(tensor).all() for tensor in state)


MEMORIES = {
    "dnc": lambda n, w, r, h: DNCMemory(memory_size=n, word_size=w, num_reads=r, num_writes=h),
    "ntm": lambda n, w, r, h: NTMMemory(memory_size=n, word_size=w, num_reads=r, num_writes=h),
    "lrua": lambda n, w, r, h: LRUAMemory(memory_size=n, word_size=w, num_reads=max(r, h), num_writes=min(h, n)),
}


@pytest.mark.parametrize("scale", [0.5, 5.0, 50.0])
@pytest.mark.parametrize("kind", sorted(MEMORIES))
def test_invariants_after_random_steps(kind, scale):
    memory = MEMORIES[kind](5, 3, 4, 2)
    for state in random_steps(memory, batch=2, steps=8, seed=11, scale=scale):
        check(memory, state)


@settings(max_examples=20, deadline=None)
@given(
    kind=st.sampled_from(sorted(MEMORIES)),
    memory_size=st.integers(1, 7),
    word_size=st.integers(1, 4),
    num_reads=st.integers(1, 3),
    num_writes=st.integers(1, 3),
    steps=st.integers(1, 5),
    scale=st.floats(0.01, 30.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_invariants_property(kind, memory_size, word_size, num_reads, num_writes, steps, scale, seed):
    memory = MEMORIES[kind](memory_size, word_size, num_reads, num_writes)
    for state in random_steps(memory, batch=2, steps=steps, seed=seed, scale=scale):
        check(memory, state)


@pytest.mark.parametrize("kind", sorted(MEMORIES))
def test_finite_gradients_with_extreme_interface(kind):
    memory = MEMORIES[kind](5, 3, 4, 2)
    gen = torch.Generator().manual_seed(3)
    vectors = (torch.randn(3, 2, memory.interface_size, generator=gen) * 1e4).requires_grad_()
    state = memory.initial_state(2)
    total = 0.0
    for vector in vectors:
        read_words, state = memory.step(memory.parse_interface(vector), state)
        total = total + read_words.sum() + state.memory.sum()
    total.backward()
    assert torch.isfinite(vectors.grad).all()
