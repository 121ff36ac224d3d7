"""DNC memory: config validation, interface parsing, hand-computed steps, batching, gradcheck."""

import pytest
import torch

from clmem.memory import DNCInterface, DNCMemory, DNCMemoryConfig

F64 = torch.float64
N, W, R, H = 5, 3, 4, 2


def make_memory():
    return DNCMemory(DNCMemoryConfig(memory_size=N, word_size=W, num_reads=R, num_writes=H))


def random_vector(memory, batch, seed, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, memory.interface_size, generator=gen, dtype=F64) * scale


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(memory_size=0, word_size=3, num_reads=1), "DNCMemoryConfig.memory_size: expected an int >= 1, got 0"),
        (dict(memory_size=4, word_size=2.0, num_reads=1), "DNCMemoryConfig.word_size: expected an int >= 1"),
        (dict(memory_size=4, word_size=2, num_reads=-1), "DNCMemoryConfig.num_reads"),
        (dict(memory_size=4, word_size=2, num_reads=1, num_writes=True), "DNCMemoryConfig.num_writes"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError) as info:
        DNCMemoryConfig(**kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_config_is_frozen():
    config = DNCMemoryConfig(memory_size=4, word_size=2, num_reads=1)
    with pytest.raises(AttributeError):
        config.memory_size = 8


def test_parse_interface_ranges_and_shapes():
    memory = make_memory()
    assert memory.interface_size == R * W + R + 3 * H * W + H + R + 2 * H + R * (1 + 2 * H)
    iface = memory.parse_interface(random_vector(memory, 2, seed=0, scale=5.0))
    assert iface.read_keys.shape == (2, R, W) and iface.write_vectors.shape == (2, H, W)
    assert iface.read_modes.shape == (2, R, 1 + 2 * H)
    assert (iface.read_strengths >= 1).all() and (iface.write_strengths >= 1).all()
    for gate in (iface.erase_vectors, iface.free_gates, iface.allocation_gates, iface.write_gates):
        assert ((gate >= 0) & (gate <= 1)).all()
    assert torch.allclose(iface.read_modes.sum(-1), torch.ones(2, R, dtype=F64))
    with pytest.raises(ValueError, match="DNCMemory.parse_interface"):
        memory.parse_interface(torch.zeros(2, memory.interface_size + 1))


def test_initial_state_shapes_and_dtype():
    state = make_memory().initial_state(2, dtype=F64)
    shapes = dict(memory=(2, N, W), read_weights=(2, R, N), write_weights=(2, H, N), usage=(2, N),
                  link=(2, H, N, N), precedence=(2, H, N))
    for name, shape in shapes.items():
        tensor = getattr(state, name)
        assert tensor.shape == shape and tensor.dtype == F64 and not tensor.any()


def one_hot_interface(write_vectors, read_key, free_gates=0.0, read_modes=(0, 0, 0, 0, 1)):
    """Both heads write by allocation; all read heads look up ``read_key`` by content with a huge strength."""
    ones_h = torch.ones(1, H, dtype=F64)
    return DNCInterface(
        read_keys=read_key.expand(1, R, W),
        read_strengths=torch.full((1, R), 1e3, dtype=F64),
        write_keys=torch.zeros(1, H, W, dtype=F64),
        write_strengths=ones_h,
        erase_vectors=ones_h.unsqueeze(-1).expand(1, H, W),
        write_vectors=write_vectors,
        free_gates=torch.full((1, R), free_gates, dtype=F64),
        allocation_gates=ones_h,
        write_gates=ones_h,
        read_modes=torch.tensor(read_modes, dtype=F64).expand(1, R, 1 + 2 * H),
    )


def test_two_hand_computed_steps():
    memory = make_memory()
    state = memory.initial_state(1, dtype=F64)
    v = torch.tensor([[[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]]], dtype=F64)
    read_words, state = memory.step(one_hot_interface(v, v[:, :1]), state)
    # usage 0 (clamped to eps, ties -> lowest index): head 0 allocates slot 0 and leaves usage
    # [1, eps, eps^2, ...]; head 1 then takes the least used slot, the last one (as DeepMind's code does)
    expected_memory = torch.zeros(1, N, W, dtype=F64)
    expected_memory[0, 0], expected_memory[0, N - 1] = v[0, 0], v[0, 1]
    assert torch.allclose(state.memory, expected_memory, atol=1e-5)
    assert torch.allclose(read_words, v[:, :1].expand(1, R, W), atol=1e-4)
    assert torch.allclose(state.usage, torch.zeros(1, N, dtype=F64))
    assert torch.allclose(state.precedence, state.write_weights)
    # step 2: usage ~[1, 0, 0, 0, 1]; both heads allocate fresh distinct slots; reads follow head 0's link
    # forward from slot 0 (read_modes = [backward_0, backward_1, forward_0, forward_1, content])
    v2 = torch.tensor([[[0.0, 0.0, 7.0], [0.0, 4.0, 0.0]]], dtype=F64)
    read_words, state = memory.step(one_hot_interface(v2, v[:, :1], read_modes=(0, 0, 1, 0, 0)), state)
    assert torch.allclose(state.usage[0, [0, N - 1]], torch.ones(2, dtype=F64), atol=1e-5)
    slot_0, slot_1 = state.write_weights[0].argmax(-1).tolist()
    assert len({slot_0, slot_1, 0, N - 1}) == 4
    assert torch.allclose(state.memory[0, slot_0], v2[0, 0], atol=1e-5)
    assert torch.allclose(state.memory[0, slot_1], v2[0, 1], atol=1e-5)
    assert abs(state.link[0, 0, slot_0, 0].item() - 1) < 1e-5  # head 0: slot_0 written right after slot 0
    assert abs(state.link[0, 1, slot_1, N - 1].item() - 1) < 1e-5
    assert torch.allclose(read_words, v2[:, :1].expand(1, R, W), atol=1e-4)


def test_free_gates_release_read_slots():
    memory = make_memory()
    state = memory.initial_state(1, dtype=F64)
    v = torch.tensor([[[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]]], dtype=F64)
    _, state = memory.step(one_hot_interface(v, v[:, :1]), state)  # reads slot 0
    _, state = memory.step(one_hot_interface(v, v[:, :1], free_gates=1.0), state)
    # slot 0 was written and then freed by the reads on it: usage back to 0; slot N-1 stays used
    assert state.usage[0, 0] < 1e-3 and state.usage[0, N - 1] > 0.999
