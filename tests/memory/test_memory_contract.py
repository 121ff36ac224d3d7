"""What every dense memory (NTM, LRUA, DNC) guarantees: batching does not mix examples, and one step is
differentiable (float64 gradcheck) in its interface vector and in the state it differentiates through."""

import pytest
import torch

from clmem.memory import DNCMemory, DNCState, LRUAMemory, LRUAState, NTMMemory, NTMState

F64 = torch.float64
N, W, R, H = 5, 3, 4, 2

#: memory type, its state type, and the state fields a step is differentiated through (DNC: usage and the
#: write weights are not, following DeepMind's stop-gradient on usage)
MEMORIES = {
    "ntm": (NTMMemory, NTMState, ("memory", "read_weights", "write_weights")),
    "lrua": (LRUAMemory, LRUAState, ("memory", "read_weights", "write_weights", "usage")),
    "dnc": (DNCMemory, DNCState, ("memory", "read_weights", "link", "precedence")),
}


def random_vector(memory, batch, seed, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, memory.interface_size, generator=gen, dtype=F64) * scale


def run(memory, vectors, state):
    for vector in vectors:
        read_words, state = memory.step(memory.parse_interface(vector), state)
    return read_words, state


@pytest.mark.parametrize("kind", sorted(MEMORIES))
def test_batched_equals_per_example(kind):
    memory = MEMORIES[kind][0](memory_size=N, word_size=W, num_reads=R, num_writes=H)
    vectors = [random_vector(memory, 3, seed=s) for s in range(4)]
    batched_words, batched_state = run(memory, vectors, memory.initial_state(3, dtype=F64))
    for b in range(3):
        words, state = run(memory, [v[b : b + 1] for v in vectors], memory.initial_state(1, dtype=F64))
        assert torch.allclose(words, batched_words[b : b + 1])
        for ours, theirs in zip(state, batched_state):
            assert torch.allclose(ours, theirs[b : b + 1])


@pytest.mark.parametrize("kind", sorted(MEMORIES))
def test_gradcheck_one_step(kind):
    memory_type, state_type, fields = MEMORIES[kind]
    memory = memory_type(memory_size=4, word_size=2, num_reads=2, num_writes=2)
    _, state = run(memory, [random_vector(memory, 2, seed=s) for s in range(2)], memory.initial_state(2, dtype=F64))
    vector = random_vector(memory, 2, seed=9).requires_grad_()
    prev = [getattr(state, f).clone().requires_grad_() for f in fields]

    def step(vector, *prev_fields):
        prev_state = state._replace(**dict(zip(fields, prev_fields)))
        read_words, next_state = memory.step(memory.parse_interface(vector), state_type(*prev_state))
        return (read_words, *(getattr(next_state, f) for f in fields))

    assert torch.autograd.gradcheck(step, (vector, *prev), eps=1e-6, atol=1e-5)
