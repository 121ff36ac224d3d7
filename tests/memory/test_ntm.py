"""NTM memory: config validation, interface parsing, hand-computed steps, batching, gradcheck."""

import pytest
import torch

from clmem.memory import NTMHeadParams, NTMInterface, NTMMemory, NTMMemoryConfig, NTMState

F64 = torch.float64
N, W, R, H = 5, 3, 4, 2


def make_memory(**overrides):
    kwargs = dict(memory_size=N, word_size=W, num_reads=R, num_writes=H)
    kwargs.update(overrides)
    return NTMMemory(NTMMemoryConfig(**kwargs))


def random_vector(memory, batch, seed, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, memory.interface_size, generator=gen, dtype=F64) * scale


def heads(num, keys, strengths, gates, shifts, gammas):
    full = lambda value: torch.full((1, num), value, dtype=F64)  # noqa: E731
    return NTMHeadParams(keys.expand(1, num, W), full(strengths), full(gates),
                         torch.tensor(shifts, dtype=F64).expand(1, num, len(shifts)), full(gammas))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(memory_size=0, word_size=3, num_reads=1), "NTMMemoryConfig.memory_size: expected an int >= 1, got 0"),
        (dict(memory_size=4, word_size=3, num_reads=1, shift_range=-1), "NTMMemoryConfig.shift_range"),
        (dict(memory_size=4, word_size=3, num_reads=1, num_writes=0), "NTMMemoryConfig.num_writes"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError) as info:
        NTMMemoryConfig(**kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_parse_interface_ranges_and_shapes():
    memory = make_memory(shift_range=2)
    S = 5
    assert memory.interface_size == (R + H) * (W + S + 3) + 2 * H * W
    iface = memory.parse_interface(random_vector(memory, 2, seed=0, scale=5.0))
    for group, num in ((iface.read_heads, R), (iface.write_heads, H)):
        assert group.keys.shape == (2, num, W) and group.shifts.shape == (2, num, S)
        assert (group.strengths >= 1).all() and (group.sharpening >= 1).all()
        assert ((group.interpolation_gates >= 0) & (group.interpolation_gates <= 1)).all()
        assert torch.allclose(group.shifts.sum(-1), torch.ones(2, num, dtype=F64))
    assert ((iface.erase_vectors >= 0) & (iface.erase_vectors <= 1)).all()


def test_first_step_on_empty_memory_writes_uniformly():
    memory = make_memory()
    add = torch.tensor([[[5.0, -10.0, 15.0], [0.0, 5.0, 0.0]]], dtype=F64)
    key = torch.ones(1, 1, W, dtype=F64)
    iface = NTMInterface(
        read_heads=heads(R, key, 1.0, 1.0, [0, 1, 0], 1.0),
        write_heads=heads(H, key, 1.0, 1.0, [0, 1, 0], 1.0),  # content on zero memory: uniform
        erase_vectors=torch.ones(1, H, W, dtype=F64),
        add_vectors=add,
    )
    read_words, state = memory.step(iface, memory.initial_state(1, dtype=F64))
    assert torch.allclose(state.write_weights, torch.full((1, H, N), 0.2, dtype=F64), atol=1e-5)
    row = torch.tensor([1.0, -1.0, 3.0], dtype=F64)  # (add_0 + add_1) / 5
    assert torch.allclose(state.memory, row.expand(1, N, W), atol=1e-5)
    assert torch.allclose(read_words, row.expand(1, R, W), atol=1e-5)


def test_location_addressing_shifts_previous_weights():
    memory = make_memory()
    contents = torch.arange(N * W, dtype=F64).reshape(1, N, W)
    prev_read = torch.zeros(1, R, N, dtype=F64)
    prev_read[0, :, 2] = 1.0
    state = NTMState(contents, prev_read, torch.zeros(1, H, N, dtype=F64))
    key = torch.ones(1, 1, W, dtype=F64)
    iface = NTMInterface(
        read_heads=heads(R, key, 1.0, 0.0, [0, 0, 1], 5.0),  # gate 0: keep previous weights, shift +1
        write_heads=heads(H, key, 1.0, 1.0, [0, 1, 0], 1.0),
        erase_vectors=torch.zeros(1, H, W, dtype=F64),
        add_vectors=torch.zeros(1, H, W, dtype=F64),
    )
    read_words, next_state = memory.step(iface, state)
    expected = torch.zeros(1, R, N, dtype=F64)
    expected[0, :, 3] = 1.0
    assert torch.allclose(next_state.read_weights, expected, atol=1e-5)
    assert torch.allclose(read_words, contents[:, 3:4].expand(1, R, W), atol=1e-4)
    assert torch.allclose(next_state.memory, contents)  # zero erase and add leave memory unchanged


def test_initial_state_focuses_heads_on_slot_zero_so_shifts_can_address_slots():
    memory = make_memory()
    state = memory.initial_state(2, dtype=F64)
    assert torch.equal(state.read_weights[..., 0], torch.ones(2, R, dtype=F64))
    assert float(state.write_weights.sum()) == 2 * H and torch.all(state.memory == 1e-6)
    key = torch.ones(1, 1, W, dtype=F64)
    location_only = heads(R, key, 1.0, 0.0, [0, 0, 1], 1.0)  # gate 0: previous weights, shift +1
    iface = NTMInterface(read_heads=location_only, write_heads=heads(H, key, 1.0, 0.0, [0, 0, 1], 1.0),
                         erase_vectors=torch.zeros(1, H, W, dtype=F64), add_vectors=torch.zeros(1, H, W, dtype=F64))
    _, state = memory.step(iface, memory.initial_state(1, dtype=F64))
    expected = torch.zeros(1, R, N, dtype=F64)
    expected[..., 1] = 1.0  # focus moved from slot 0 to slot 1
    assert torch.allclose(state.read_weights, expected, atol=1e-9)
