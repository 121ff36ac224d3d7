"""Gated memory: gates at 0/1 reduce to known cases, a hand-computed per-slot mix, the retain bias, float64
gradchecks and the core as a registered sequence learner."""

import math

import pytest
import torch

from clmem.memory import addressing as addr
from clmem.memory.gated import GatedCore, GatedCoreConfig, GatedInterface, GatedMemory, gated_update
from clmem.models import MODELS, build_model

F64 = torch.float64
N, W = 3, 2


def interface(retain, write, content, keys=((1.0, 0.0),)):
    """A batch-1 interface with the given gates: ``retain [N]``, ``write [H][N]``, ``content [H][W]``."""
    return GatedInterface(
        read_keys=torch.tensor([keys], dtype=F64), write_vectors=torch.tensor([content], dtype=F64),
        read_strengths=torch.full((1, len(keys)), 2.0, dtype=F64), write_gates=torch.tensor([write], dtype=F64),
        retain_gates=torch.tensor([retain], dtype=F64))


def filled_state(memory):
    state = memory.initial_state(1, dtype=F64)
    return state._replace(memory=torch.tensor([[[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]]], dtype=F64))


def test_retain_one_write_zero_leaves_memory_unchanged():
    memory = GatedMemory(memory_size=N, word_size=W)
    state = filled_state(memory)
    words, nxt = memory.step(interface([1.0] * N, [[0.0] * N], [[7.0, 7.0]]), state)
    assert torch.equal(nxt.memory, state.memory)
    expected = addr.content_weights(state.memory, torch.tensor([[[1.0, 0.0]]], dtype=F64),
                                    torch.tensor([[2.0]], dtype=F64))
    torch.testing.assert_close(nxt.read_weights, expected)
    torch.testing.assert_close(words, addr.read_memory(state.memory, expected))


def test_retain_zero_write_one_makes_memory_the_written_content():
    memory = GatedMemory(memory_size=N, word_size=W)
    _, nxt = memory.step(interface([0.0] * N, [[1.0] * N], [[7.0, -2.0]]), filled_state(memory))
    assert torch.equal(nxt.memory, torch.tensor([[[7.0, -2.0]] * N], dtype=F64))
    torch.testing.assert_close(nxt.read_weights, torch.full((1, 1, N), 1.0 / N, dtype=F64))  # identical slots


def test_hand_computed_per_slot_gates_with_two_heads():
    old = torch.tensor([[[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]]], dtype=F64)
    retain = torch.tensor([[1.0, 0.0, 0.5]], dtype=F64)
    write = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 0.5, 1.0]]], dtype=F64)
    content = torch.tensor([[[4.0, 0.0], [0.0, 2.0]]], dtype=F64)
    expected = torch.tensor([[[1.0, 2.0],  # kept as is
                              [4.0, 1.0],  # replaced by v_1 + 0.5 v_2
                              [0.25, 2.25]]], dtype=F64)  # halved, plus v_2
    assert torch.equal(gated_update(old, retain, write, content), expected)


def test_parse_interface_applies_the_retain_bias():
    memory = GatedMemory(memory_size=N, word_size=W, num_reads=2, num_writes=2, retain_bias=1.5)
    assert memory.interface_size == 2 * (W + 1) + 2 * (W + N) + N
    parsed = memory.parse_interface(torch.zeros(4, memory.interface_size))
    assert parsed.write_gates.shape == (4, 2, N) and parsed.retain_gates.shape == (4, N)
    torch.testing.assert_close(parsed.retain_gates, torch.full((4, N), 1 / (1 + math.exp(-1.5))))
    torch.testing.assert_close(parsed.write_gates, torch.full((4, 2, N), 0.5))
    torch.testing.assert_close(parsed.read_strengths, torch.full((4, 2), 1 + math.log(2)))


def test_gradcheck_update_and_one_step():
    gen = torch.Generator().manual_seed(0)
    args = (torch.randn(2, N, W, generator=gen, dtype=F64), torch.rand(2, N, generator=gen, dtype=F64),
            torch.rand(2, 2, N, generator=gen, dtype=F64), torch.randn(2, 2, W, generator=gen, dtype=F64))
    assert torch.autograd.gradcheck(gated_update, tuple(a.requires_grad_() for a in args))

    memory = GatedMemory(memory_size=N, word_size=W, num_reads=2, num_writes=2)
    state = memory.initial_state(2, dtype=F64)
    for _ in range(2):
        _, state = memory.step(memory.parse_interface(torch.randn(2, memory.interface_size, generator=gen,
                                                                  dtype=F64)), state)
    vector = torch.randn(2, memory.interface_size, generator=gen, dtype=F64, requires_grad=True)
    prev_memory = state.memory.clone().requires_grad_()

    def step(vector, prev_memory):
        words, nxt = memory.step(memory.parse_interface(vector), state._replace(memory=prev_memory))
        return words, nxt.memory

    assert torch.autograd.gradcheck(step, (vector, prev_memory), eps=1e-6, atol=1e-5)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match=r"^GatedCoreConfig.retain_bias: expected a finite number, got nan$"):
        GatedCoreConfig(input_size=2, output_size=2, retain_bias=float("nan"))
    with pytest.raises(ValueError, match=r"^GatedMemoryConfig.memory_size: expected an int >= 1, got 0$"):
        GatedMemory(memory_size=0, word_size=2)


def test_registered_sequence_learner_trains_and_traces():
    assert MODELS.get("gated").meta["accepts"] == ("bits", "qa_sequence", "episodes")
    torch.manual_seed(0)
    model = build_model("gated", (5, 3), 4, hidden_size=8, memory_size=6, word_size=4, retain_bias=2.0)
    assert isinstance(model.core, GatedCore)
    logits = model(torch.randn(2, 5, 3))
    assert logits.shape == (2, 5, 4)
    logits.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    trace = model.memory_trace(torch.randn(1, 5, 3))
    assert trace.read_weights.shape == (1, 5, 1, 6) and trace.write_weights.shape == (1, 5, 1, 6)
