"""Hierarchical (chunked) memory: one level equals the flat content read, a hand-computed two-level read,
chunk search, float64 gradchecks, validation and the core as a registered sequence learner."""

import math

import pytest
import torch

from clmem.memory import addressing as addr
from clmem.memory.hierarchical import (
    HierarchicalCore,
    HierarchicalCoreConfig,
    HierarchicalMemory,
    chunk_keys,
    hierarchical_weights,
    top_chunks,
)
from clmem.models import MODELS, build_model

F64 = torch.float64


def random_case(seed, batch=2, slots=6, width=3, reads=2):
    gen = torch.Generator().manual_seed(seed)
    memory = torch.randn(batch, slots, width, generator=gen, dtype=F64)
    keys = torch.randn(batch, reads, width, generator=gen, dtype=F64)
    strengths = torch.rand(batch, reads, generator=gen, dtype=F64) * 3 + 1
    return memory, keys, strengths


@pytest.mark.parametrize("chunks", [1, 3])
def test_one_level_read_equals_flat_content_read(chunks):
    memory, keys, strengths = random_case(0)
    # one level: a single chunk, or every chunk searched (the top level then selects everything)
    weights = hierarchical_weights(memory, keys, strengths, num_chunks=chunks, k=chunks)
    flat = addr.content_weights(memory, keys, strengths)
    torch.testing.assert_close(weights, flat)
    torch.testing.assert_close(addr.read_memory(memory, weights), addr.read_memory(memory, flat))


def test_one_level_memory_step_reads_like_flat_addressing():
    memory = HierarchicalMemory(memory_size=6, word_size=3, num_reads=2, num_chunks=1)
    gen = torch.Generator().manual_seed(3)
    state = memory.initial_state(2, dtype=F64)
    for _ in range(3):
        interface = memory.parse_interface(torch.randn(2, memory.interface_size, generator=gen, dtype=F64))
        words, state = memory.step(interface, state)
    flat = addr.content_weights(state.memory, interface.read_keys, interface.read_strengths)
    torch.testing.assert_close(state.read_weights, flat)
    torch.testing.assert_close(words, addr.read_memory(state.memory, flat))


def test_hand_computed_two_level_read():
    # chunk 0 = slots 0, 1 (mean [1, 1]); chunk 1 = slots 2, 3 (mean [-0.5, -1.5])
    memory = torch.tensor([[[2.0, 0.0], [0.0, 2.0], [-1.0, 0.0], [0.0, -3.0]]], dtype=F64)
    torch.testing.assert_close(chunk_keys(memory, 2), torch.tensor([[[1.0, 1.0], [-0.5, -1.5]]], dtype=F64))
    key = torch.tensor([[[1.0, 0.0]]], dtype=F64)
    assert top_chunks(memory, key, 2, 1).tolist() == [[[0]]]  # inner products 1 and -0.5
    weights = hierarchical_weights(memory, key, torch.ones(1, 1, dtype=F64), num_chunks=2, k=1)
    e = math.e  # cosines inside chunk 0: 1 (slot 0) and 0 (slot 1)
    torch.testing.assert_close(weights, torch.tensor([[[e, 1.0, 0.0, 0.0]]], dtype=F64) / (e + 1),
                               atol=1e-5, rtol=0)
    read = addr.read_memory(memory, weights)
    torch.testing.assert_close(read, torch.tensor([[[2 * e, 2.0]]], dtype=F64) / (e + 1), atol=1e-5, rtol=0)
    flat = addr.content_weights(memory, key, torch.ones(1, 1, dtype=F64))
    assert float(flat[0, 0, 2]) > 0.05  # the flat read also attends to slot 2 (cosine -1 is still in its softmax)


def test_two_chunks_per_key_and_per_head_choice():
    memory = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [-1.0, 0.0], [-1.0, 0.0]]],
                          dtype=F64)
    keys = torch.tensor([[[1.0, 0.1], [-1.0, 0.0]]], dtype=F64)
    chunks = top_chunks(memory, keys, 3, 2)
    assert chunks.tolist() == [[[0, 1], [2, 1]]]
    weights = hierarchical_weights(memory, keys, torch.ones(1, 2, dtype=F64), num_chunks=3, k=2)
    assert (weights[0, 0, 4:] == 0).all() and (weights[0, 1, :2] == 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 2, dtype=F64))


def test_gradcheck_weights_and_one_step():
    memory, keys, strengths = random_case(4)
    args = tuple(t.clone().requires_grad_() for t in (memory, keys, strengths))
    assert torch.autograd.gradcheck(lambda m, k, s: hierarchical_weights(m, k, s, num_chunks=3, k=2), args)

    mem = HierarchicalMemory(memory_size=4, word_size=2, num_reads=2, num_writes=2, num_chunks=2)
    gen = torch.Generator().manual_seed(5)
    state = mem.initial_state(2, dtype=F64)
    for _ in range(2):
        _, state = mem.step(mem.parse_interface(torch.randn(2, mem.interface_size, generator=gen, dtype=F64)),
                            state)
    vector = torch.randn(2, mem.interface_size, generator=gen, dtype=F64, requires_grad=True)
    prev_memory = state.memory.clone().requires_grad_()

    def step(vector, prev_memory):
        words, nxt = mem.step(mem.parse_interface(vector), state._replace(memory=prev_memory))
        return words, nxt.memory

    assert torch.autograd.gradcheck(step, (vector, prev_memory), eps=1e-6, atol=1e-5)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match=r"^HierarchicalMemoryConfig.num_chunks: expected a divisor of memory_size"):
        HierarchicalMemory(memory_size=6, word_size=2, num_chunks=4)
    with pytest.raises(ValueError, match=r"^HierarchicalCoreConfig.read_chunks: expected an int <= num_chunks"):
        HierarchicalCoreConfig(input_size=2, output_size=2, memory_size=8, num_chunks=2, read_chunks=3)


def test_registered_sequence_learner_trains_and_traces():
    assert MODELS.get("hierarchical").meta["accepts"] == ("bits", "qa_sequence", "episodes")
    torch.manual_seed(0)
    model = build_model("hierarchical", (5, 3), 4, hidden_size=8, memory_size=8, word_size=4, num_chunks=4,
                        read_chunks=2)
    assert isinstance(model.core, HierarchicalCore)
    logits = model(torch.randn(2, 5, 3))
    assert logits.shape == (2, 5, 4)
    logits.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    trace = model.memory_trace(torch.randn(1, 5, 3))
    assert trace.read_weights.shape == (1, 5, 1, 8) and trace.usage is None
    nonzero = (trace.read_weights[0, :, 0] > 0).sum(-1)
    assert (nonzero <= 4).all()  # 2 chunks of 2 slots per read
