"""Associative memory: hand-computed Hopfield recall, pattern completion from half-masked cues, ring writes,
float64 gradchecks and the core as a registered sequence learner."""

import math

import pytest
import torch

from clmem.memory.associative import (
    AssociativeCore,
    AssociativeCoreConfig,
    AssociativeInterface,
    AssociativeMemory,
    associative_attention,
    associative_recall,
    ring_write_weights,
)
from clmem.models import MODELS, build_model

F64 = torch.float64


def write_patterns(memory, patterns, gate=1.0):
    """Store ``patterns [B, P, W]`` one per step (cues are zero); returns the final state."""
    batch, count, width = patterns.shape
    state = memory.initial_state(batch, dtype=patterns.dtype)
    c = memory.config
    for p in range(count):
        interface = AssociativeInterface(
            cues=torch.zeros(batch, c.num_reads, width, dtype=patterns.dtype), patterns=patterns[:, p : p + 1],
            strengths=torch.ones(batch, c.num_reads, dtype=patterns.dtype),
            write_gates=torch.full((batch, 1), gate, dtype=patterns.dtype))
        _, state = memory.step(interface, state)
    return state


def test_hand_computed_recall_from_half_masked_cue():
    p1, p2 = [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, -1.0, -1.0]
    memory = torch.tensor([[p1, p2]], dtype=F64)  # [1, 2, 4]
    cue = torch.tensor([[[0.0, 1.0, 0.0, 1.0]]], dtype=F64)  # p1 with entries 0 and 2 masked
    # scores: p1 . cue = 2, p2 . cue = 0 -> weights (e^2, 1) / (e^2 + 1)
    recalled, weights = associative_recall(memory, cue, torch.ones(1, 1, dtype=F64))
    e2 = math.exp(2.0)
    torch.testing.assert_close(weights, torch.tensor([[[e2, 1.0]]], dtype=F64) / (e2 + 1))
    t = math.tanh(1.0)  # (e^2 - 1) / (e^2 + 1)
    torch.testing.assert_close(recalled, torch.tensor([[[1.0, 1.0, t, t]]], dtype=F64))
    assert torch.equal(torch.sign(recalled), torch.tensor([[p1]], dtype=F64))


def test_stored_random_patterns_are_completed_from_half_masked_cues():
    gen = torch.Generator().manual_seed(0)
    count, width, slots = 6, 32, 8
    patterns = (torch.randint(0, 2, (1, count, width), generator=gen) * 2 - 1).to(F64)
    memory = AssociativeMemory(memory_size=slots, word_size=width, num_reads=count, steps=2)
    state = write_patterns(memory, patterns)
    assert torch.equal(state.memory[0, :count], patterns[0])  # pattern p in slot p
    assert torch.equal(state.usage[0], torch.tensor([1.0] * count + [0.0] * (slots - count), dtype=F64))
    keep = torch.stack([torch.randperm(width, generator=gen)[: width // 2] for _ in range(count)])
    cues = torch.zeros_like(patterns).scatter(2, keep.unsqueeze(0), patterns.gather(2, keep.unsqueeze(0)))
    recalled, weights = associative_recall(state.memory, cues, torch.ones(1, count, dtype=F64), steps=2,
                                           occupancy=state.usage)
    assert torch.equal(torch.sign(recalled), patterns)
    assert weights[0].argmax(-1).tolist() == list(range(count))
    assert float(weights[0, :, count:].max()) < 1e-5  # the two empty slots take no part


def test_ring_writes_overwrite_the_oldest_pattern_and_gate_zero_keeps_memory():
    memory = AssociativeMemory(memory_size=2, word_size=2)
    patterns = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]], dtype=F64)
    state = write_patterns(memory, patterns)
    torch.testing.assert_close(state.memory[0], torch.tensor([[-1.0, -1.0], [0.0, 1.0]], dtype=F64))
    assert state.position[0].tolist() == [0.0, 1.0]
    unchanged = write_patterns(memory, patterns, gate=0.0)
    assert torch.equal(unchanged.memory, torch.zeros(1, 2, 2, dtype=F64))


def test_ring_write_weights_of_several_heads():
    position = torch.tensor([[0.0, 0.0, 1.0]])
    weights = ring_write_weights(position, torch.tensor([[1.0, 0.5]]))
    assert weights.tolist() == [[[0.0, 0.0, 1.0], [0.5, 0.0, 0.0]]]


def test_gradcheck_recall():
    gen = torch.Generator().manual_seed(1)
    memory = torch.randn(2, 5, 3, generator=gen, dtype=F64, requires_grad=True)
    cues = torch.randn(2, 2, 3, generator=gen, dtype=F64, requires_grad=True)
    beta = (torch.rand(2, 2, generator=gen, dtype=F64) + 0.5).requires_grad_()
    usage = (torch.rand(2, 5, generator=gen, dtype=F64) * 0.8 + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(lambda m, c, b, u: associative_recall(m, c, b, steps=2, occupancy=u),
                                    (memory, cues, beta, usage))
    assert torch.autograd.gradcheck(lambda m, c: associative_attention(m, c, 0.7), (memory, cues))


def test_gradcheck_one_step():
    memory = AssociativeMemory(memory_size=4, word_size=3, num_reads=2, num_writes=2, steps=2)
    gen = torch.Generator().manual_seed(2)
    state = memory.initial_state(2, dtype=F64)
    for _ in range(2):
        _, state = memory.step(memory.parse_interface(torch.randn(2, memory.interface_size, generator=gen,
                                                                  dtype=F64)), state)
    vector = torch.randn(2, memory.interface_size, generator=gen, dtype=F64, requires_grad=True)
    prev_memory = state.memory.clone().requires_grad_()
    prev_usage = state.usage.clone().requires_grad_()

    def step(vector, prev_memory, prev_usage):
        words, nxt = memory.step(memory.parse_interface(vector),
                                 state._replace(memory=prev_memory, usage=prev_usage))
        return words, nxt.memory, nxt.usage

    assert torch.autograd.gradcheck(step, (vector, prev_memory, prev_usage), eps=1e-6, atol=1e-5)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match=r"^AssociativeCoreConfig.steps: expected an int >= 1, got 0$"):
        AssociativeCoreConfig(input_size=2, output_size=2, steps=0)
    with pytest.raises(ValueError, match="AssociativeMemoryConfig.num_writes"):
        AssociativeMemory(memory_size=2, word_size=2, num_writes=3)


def test_registered_sequence_learner_trains_and_traces():
    entry = MODELS.get("associative")
    assert entry.meta["accepts"] == ("bits", "qa_sequence", "episodes")
    torch.manual_seed(0)
    model = build_model("associative", (5, 3), 4, hidden_size=8, memory_size=6, word_size=4, num_reads=2)
    assert isinstance(model.core, AssociativeCore)
    logits = model(torch.randn(2, 5, 3))
    assert logits.shape == (2, 5, 4)
    logits.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)
    trace = model.memory_trace(torch.randn(1, 5, 3))
    assert trace.read_weights.shape == (1, 5, 2, 6) and trace.usage.shape == (1, 5, 6)
    with pytest.raises(ValueError, match="expects sequence inputs"):
        build_model("associative", (1, 5, 3), 4)
