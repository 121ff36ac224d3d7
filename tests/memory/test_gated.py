"""Gated memory: gates at 0/1 reduce to known cases, a hand-computed per-slot mix, the retain bias, float64
gradchecks and the core as a registered sequence learner."""

import io
import math

import pytest
import torch

from clmem.memory import addressing as addr
from clmem.memory.gated import (GatedCore, can_grow, GatedCoreConfig, GatedInterface, GatedMemory, gated_update, gated_usage,
                                masked_content_weights)
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
    """Three full slots (usage 1), then the rest of the capacity empty."""
    state = memory.initial_state(1, dtype=F64)
    words = torch.zeros_like(state.memory)
    words[:, :N] = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]], dtype=F64)
    usage = torch.zeros_like(state.usage)
    usage[:, :N] = 1.0
    return state._replace(memory=words, usage=usage)



def assert_step_gradcheck(memory, state, gen):
    """gradcheck of one step with respect to the interface vector and the previous memory (float64)."""
    vector = torch.randn(2, memory.interface_size, generator=gen, dtype=F64, requires_grad=True)
    prev_memory = state.memory.clone().requires_grad_()

    def step(vector, prev_memory):
        words, nxt = memory.step(memory.parse_interface(vector), state._replace(memory=prev_memory))
        return words, nxt.memory

    assert torch.autograd.gradcheck(step, (vector, prev_memory), eps=1e-6, atol=1e-5)

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
    assert_step_gradcheck(memory, state, gen)


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


# ------------------------------------------------------------------------------------------- growth
def batch_interface(retain, write, content, keys=((1.0, 0.0),)):
    """A batch interface: ``retain [B][N]``, ``write [B][H][N]``, ``content [B][H][W]``, the same keys per row."""
    b = len(retain)
    return GatedInterface(
        read_keys=torch.tensor([keys] * b, dtype=F64), write_vectors=torch.tensor(content, dtype=F64),
        read_strengths=torch.full((b, len(keys)), 2.0, dtype=F64), write_gates=torch.tensor(write, dtype=F64),
        retain_gates=torch.tensor(retain, dtype=F64))


def test_usage_hand_computed():
    usage = torch.tensor([[0.5, 1.0, 0.0, 0.2]], dtype=F64)
    retain = torch.tensor([[1.0, 0.5, 0.0, 0.0]], dtype=F64)
    write = torch.tensor([[[0.0, 0.0, 0.0, 0.5], [0.0, 0.5, 0.0, 0.5]]], dtype=F64)
    # kept r u = (0.5, 0.5, 0, 0); written 1 - prod(1 - g) = (0, 0.5, 0, 0.75)
    assert torch.equal(gated_usage(usage, retain, write), torch.tensor([[0.5, 0.75, 0.0, 0.75]], dtype=F64))


def test_masked_read_is_a_flat_read_over_the_readable_slots():
    memory = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], [[1.0, 1.0], [2.0, 0.0], [0.0, 3.0]]], dtype=F64)
    keys, beta = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]], dtype=F64), torch.full((2, 1), 2.0, dtype=F64)
    readable = torch.tensor([[True, True, False], [False, False, False]])
    weights = masked_content_weights(memory, keys, beta, readable)
    e = math.exp(2.0)
    torch.testing.assert_close(weights[0, 0], torch.tensor([e / (e + 1), 1 / (e + 1), 0.0], dtype=F64), atol=1e-5,
                               rtol=0)
    flat = addr.content_weights(memory[:1, :2], keys[:1], beta[:1])  # the known case: a memory of 2 slots
    torch.testing.assert_close(weights[:1, :, :2], flat)
    assert torch.equal(weights[1], torch.zeros(1, 3, dtype=F64))  # nothing readable: no read
    memory.requires_grad_()
    masked_content_weights(memory, keys.requires_grad_(), beta, readable).sum().backward()
    assert torch.isfinite(memory.grad).all() and torch.isfinite(keys.grad).all()


def test_growth_triggers_exactly_when_every_slot_in_use_exceeds_the_threshold():
    memory = GatedMemory(memory_size=2, word_size=W, max_memory_size=4, grow_threshold=0.5)
    state = memory.initial_state(3, dtype=F64)
    assert state.slots.tolist() == [2, 2, 2] and state.memory.shape == (3, 4, W)
    step1 = batch_interface([[1.0] * 4] * 3, [[[0.6, 0.6, 0.0, 0.0]], [[0.6, 0.5, 0.0, 0.0]], [[0.6, 0.6, 1.0, 1.0]]],
                            [[[1.0, 1.0]]] * 3)
    _, s1 = memory.step(step1, state)
    # row 0: usage (0.6, 0.6) > 0.5 -> grows; row 1: 0.5 is not > 0.5; row 2: gates on slots 2, 3 not in use masked
    assert s1.slots.tolist() == [3, 2, 3]
    assert torch.equal(s1.usage[2], torch.tensor([0.6, 0.6, 0.0, 0.0], dtype=F64))
    assert torch.equal(s1.write_weights[2], torch.tensor([[0.6, 0.6, 0.0, 0.0]], dtype=F64))
    assert torch.equal(s1.memory[2, 2:], torch.zeros(2, W, dtype=F64))  # never written before it is in use
    step2 = batch_interface([[1.0] * 4] * 3, [[[0.0, 0.0, 0.7, 0.7]]] * 3, [[[2.0, 0.0]]] * 3)
    _, s2 = memory.step(step2, s1)
    # rows 0, 2: slot 2 (new) now written to 0.7 > 0.5, slot 3 still masked -> 4; row 1: unchanged usage -> 2
    assert s2.slots.tolist() == [4, 2, 4]
    torch.testing.assert_close(s2.memory[0, 2], torch.tensor([1.4, 0.0], dtype=F64))
    _, s3 = memory.step(batch_interface([[1.0] * 4] * 3, [[[1.0] * 4]] * 3, [[[1.0, 0.0]]] * 3), s2)
    assert s3.slots.tolist() == [4, 3, 4]  # at capacity nothing grows; row 1 is full now


def test_a_grown_memory_with_empty_new_slots_reads_as_before_growth():
    grown = GatedMemory(memory_size=N, word_size=W, max_memory_size=N + 2)
    before = filled_state(grown)
    after = before._replace(slots=torch.tensor([N + 2]))  # two empty slots now in use
    gates = interface([0.5, 1.0, 0.25, 0.9, 0.9], [[0.2, 0.0, 0.5, 0.0, 0.0]], [[1.0, -1.0]], keys=((1.0, 0.5),))
    words_before, s_before = grown.step(gates, before)
    words_after, s_after = grown.step(gates, after)
    assert torch.equal(words_after, words_before) and torch.equal(s_after.read_weights, s_before.read_weights)
    assert torch.equal(s_after.memory, s_before.memory)
    flat = GatedMemory(memory_size=N, word_size=W)  # the same memory without the extra slots
    small = interface([0.5, 1.0, 0.25], [[0.2, 0.0, 0.5]], [[1.0, -1.0]], keys=((1.0, 0.5),))
    words_flat, s_flat = flat.step(small, filled_state(flat))
    torch.testing.assert_close(words_after, words_flat)
    torch.testing.assert_close(s_after.read_weights[..., :N], s_flat.read_weights)
    assert torch.equal(s_after.read_weights[..., N:], torch.zeros(1, 1, 2, dtype=F64))


def test_gates_at_zero_and_one_with_room_to_grow():
    memory = GatedMemory(memory_size=N, word_size=W, max_memory_size=N + 2)
    state = filled_state(memory)
    _, kept = memory.step(interface([1.0] * (N + 2), [[0.0] * (N + 2)], [[7.0, 7.0]]), state)
    assert torch.equal(kept.memory, state.memory) and torch.equal(kept.usage, state.usage)
    assert kept.slots.tolist() == [N + 1]  # every slot in use is full (usage 1): one empty slot is added
    _, overwritten = memory.step(interface([0.0] * (N + 2), [[1.0] * (N + 2)], [[7.0, -2.0]]), state)
    want = torch.tensor([[[7.0, -2.0]] * N + [[0.0, 0.0]] * 2], dtype=F64)  # only the slots in use are written
    assert torch.equal(overwritten.memory, want)
    torch.testing.assert_close(overwritten.read_weights, torch.tensor([[[1 / 3] * 3 + [0.0] * 2]], dtype=F64))


def test_grow_between_experiences_and_its_refusals():
    memory = GatedMemory(memory_size=2, word_size=W, max_memory_size=5)
    assert memory.grow(2) == 4 and memory.initial_state(2).slots.tolist() == [4, 4]
    with pytest.raises(ValueError, match=r"^GatedMemory\.grow: expected n <= 1 \(4 of max_memory_size 5 slots in "
                                         r"use\), got 2$"):
        memory.grow(2)
    with pytest.raises(ValueError, match=r"^GatedMemory\.grow\.n: expected an int >= 1, got 0$"):
        memory.grow(0)
    assert memory.grow() == 5 and int(memory.slots) == 5


def test_gradcheck_usage_masked_read_and_a_growing_step():
    gen = torch.Generator().manual_seed(1)
    usage_args = (torch.rand(2, 4, generator=gen, dtype=F64), torch.rand(2, 4, generator=gen, dtype=F64),
                  torch.rand(2, 2, 4, generator=gen, dtype=F64))
    assert torch.autograd.gradcheck(gated_usage, tuple(a.requires_grad_() for a in usage_args))
    readable = torch.tensor([[True, False, True, True], [False, False, False, False]])
    read_args = (torch.randn(2, 4, W, generator=gen, dtype=F64), torch.randn(2, 2, W, generator=gen, dtype=F64),
                 1 + torch.rand(2, 2, generator=gen, dtype=F64))
    assert torch.autograd.gradcheck(lambda m, k, b: masked_content_weights(m, k, b, readable),
                                    tuple(a.requires_grad_() for a in read_args))
    memory = GatedMemory(memory_size=2, word_size=W, num_reads=2, max_memory_size=4)
    state = memory.initial_state(2, dtype=F64)
    _, state = memory.step(memory.parse_interface(torch.randn(2, memory.interface_size, generator=gen, dtype=F64)),
                           state)
    assert state.usage[:, 2:].eq(0).all()  # slots not in use yet: empty, so the next read masks them out
    assert_step_gradcheck(memory, state, gen)


def test_growth_config_errors_name_the_field():
    with pytest.raises(ValueError, match=r"^GatedCoreConfig\.max_memory_size: expected an int >= 4, got 3$"):
        GatedCoreConfig(input_size=2, output_size=2, memory_size=4, max_memory_size=3)
    for bad in (0.0, 1.0, float("nan"), True):
        with pytest.raises(ValueError, match=r"^GatedMemoryConfig\.grow_threshold: expected a finite number in "
                                             r"\(0, 1\), got "):
            GatedMemory(memory_size=2, word_size=2, grow_threshold=bad)
    with pytest.raises(ValueError, match=r"max_memory_size"):
        build_model("gated", (5, 3), 4, memory_size=4, max_memory_size=0)


def save_load(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_state_dict_round_trip_of_a_grown_memory():
    options = dict(hidden_size=8, memory_size=4, word_size=4, max_memory_size=6)
    torch.manual_seed(0)
    model = build_model("gated", (5, 3), 4, **options)
    assert model.core.grow(2) == 6
    saved = save_load(model.state_dict())
    assert saved["core.memory.slots"].item() == 6 and saved["core.memory.capacity"].item() == 6
    fresh = build_model("gated", (5, 3), 4, **options)  # the base size: 4 slots in use, room for 6
    fresh.load_state_dict(saved)
    assert int(fresh.core.memory.slots) == 6
    x = torch.randn(2, 5, 3)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
    base = build_model("gated", (5, 3), 4, hidden_size=8, memory_size=4, word_size=4)
    with pytest.raises(ValueError, match=r"^GatedMemory\.max_memory_size: the state_dict holds a memory of 6 slots, "
                                         r"this model 4; build it with max_memory_size=6$"):
        base.load_state_dict(saved)
    saved["core.memory.slots"] = torch.tensor(7)
    with pytest.raises(ValueError, match=r"^GatedMemory\.slots: expected 1\.\.6 slots in use in the state_dict, got 7$"):
        fresh.load_state_dict(saved)
    legacy = {k: v for k, v in base.state_dict().items() if not k.startswith("core.memory.")}  # before growth
    build_model("gated", (5, 3), 4, hidden_size=8, memory_size=4, word_size=4).load_state_dict(legacy)


def test_a_growing_learner_trains_and_never_reads_or_writes_slots_not_in_use():
    torch.manual_seed(0)
    model = build_model("gated", (8, 3), 4, hidden_size=8, memory_size=2, word_size=4, max_memory_size=5,
                        grow_threshold=0.3)
    y, state = model.core(torch.randn(3, 8, 3))
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert (state.memory_state.slots > 2).all()  # sigmoid gates near 0.5 fill slots past 0.3: it grew
    trace = model.memory_trace(torch.randn(1, 8, 3))
    grew = (trace.usage > 0).sum(-1)[0]  # non-empty slots per step: at most one more per step
    assert grew[0] == 2 and (grew.diff() <= 1).all() and (grew.diff() >= 0).all() and grew[-1] <= 5


def test_growth_options_are_declared_with_their_ranges():
    options = MODELS.get("gated").options
    assert options["max_memory_size"].check("model.max_memory_size", None) is None
    assert options["grow_threshold"].default == 0.9 and options["max_memory_size"].default is None
    for name, bad in (("max_memory_size", 0), ("max_memory_size", "x"), ("grow_threshold", 0.0),
                      ("grow_threshold", 1.0), ("grow_threshold", float("nan"))):
        with pytest.raises(ValueError, match=rf"^model\.{name}: expected .*, got "):
            options[name].check(f"model.{name}", bad)


@pytest.mark.parametrize("memory_size, max_memory_size, expected",
                         [(3, None, False), (3, 3, False), (3, 4, True), (5, 7, True)])
def test_can_grow_is_room_above_the_initial_size(memory_size, max_memory_size, expected):
    assert can_grow(memory_size, max_memory_size) is expected
