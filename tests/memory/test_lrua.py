"""LRUA memory: config validation, interface parsing, hand-computed steps, batching, gradcheck."""

import pytest
import torch

from clmem.memory import LRUAInterface, LRUAMemory, LRUAMemoryConfig, LRUAState

F64 = torch.float64
N, W, R, H = 5, 3, 4, 2


def make_memory():
    return LRUAMemory(LRUAMemoryConfig(memory_size=N, word_size=W, num_reads=R, num_writes=H, usage_decay=0.5))


def random_vector(memory, batch, seed, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, memory.interface_size, generator=gen, dtype=F64) * scale


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(memory_size=0, word_size=3, num_reads=1), "LRUAMemoryConfig.memory_size: expected an int >= 1, got 0"),
        (dict(memory_size=4, word_size=3, num_reads=1, num_writes=2), "LRUAMemoryConfig.num_writes"),
        (dict(memory_size=4, word_size=3, num_reads=1, usage_decay=1.0), "LRUAMemoryConfig.usage_decay"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError) as info:
        LRUAMemoryConfig(**kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_parse_interface_ranges_and_shapes():
    memory = make_memory()
    assert memory.interface_size == R * (W + 1) + H * (W + 1)
    iface = memory.parse_interface(random_vector(memory, 2, seed=0, scale=5.0))
    assert iface.read_keys.shape == (2, R, W) and iface.write_vectors.shape == (2, H, W)
    assert (iface.read_strengths >= 1).all()
    assert ((iface.write_gates >= 0) & (iface.write_gates <= 1)).all()


def hand_state():
    contents = torch.arange(N, dtype=F64).view(1, N, 1).expand(1, N, W).clone()  # row i = [i, i, i]
    prev_read = torch.zeros(1, R, N, dtype=F64)
    prev_read[0, 0, 4] = 1.0  # read head 0 was on slot 4, read head 1 on slot 0
    prev_read[0, 1, 0] = 1.0
    usage = torch.tensor([[0.3, 0.1, 0.2, 0.1, 0.5]], dtype=F64)  # least used: slot 1, then slot 3
    return LRUAState(contents, prev_read, torch.zeros(1, H, N, dtype=F64), usage)


def interface(gates):
    return LRUAInterface(
        read_keys=torch.tensor([1.0, 0.0, 0.0], dtype=F64).expand(1, R, W),
        read_strengths=torch.ones(1, R, dtype=F64),
        write_vectors=torch.tensor([[[10.0, 20.0, 30.0], [-1.0, -2.0, -3.0]]], dtype=F64),
        write_gates=torch.tensor([gates], dtype=F64),
    )


def test_step_writes_to_least_used_slots():
    _, state = make_memory().step(interface([0.0, 0.0]), hand_state())
    expected = torch.arange(N, dtype=F64).view(N, 1).expand(N, W).clone()
    expected[1] = torch.tensor([10.0, 20.0, 30.0])  # the least-used slot: zeroed, then head 0 writes
    expected[3] = torch.tensor([2.0, 1.0, 0.0])  # 2nd least used: not zeroed, head 1 adds [-1, -2, -3] to [3, 3, 3]
    assert torch.allclose(state.memory[0], expected)
    written = torch.zeros(1, H, N, dtype=F64)
    written[0, 0, 1] = written[0, 1, 3] = 1.0
    assert torch.allclose(state.write_weights, written)


def test_step_writes_to_previously_read_slots_and_updates_usage():
    _, state = make_memory().step(interface([1.0, 0.25]), hand_state())
    expected = torch.arange(N, dtype=F64).view(N, 1).expand(N, W).clone()
    expected[1] = 0.0  # least-used slot zeroed, not written (gate 1: all on the previously read slot 4)
    expected[4] += torch.tensor([10.0, 20.0, 30.0])
    expected[0] += 0.25 * torch.tensor([-1.0, -2.0, -3.0])  # head 1: 0.25 on read slot 0, 0.75 on slot 3
    expected[3] = torch.tensor([3.0 - 0.75, 3.0 - 1.5, 3.0 - 2.25])  # slot 3 keeps its [3, 3, 3]: only slot 1 is zeroed
    assert torch.allclose(state.memory[0], expected)
    # usage = 0.5 * prev + sum of new read weights (sum 1 each) + write weights
    write_sum = torch.tensor([[0.25, 0, 0, 0.75, 1.0]], dtype=F64)
    reads_sum = state.read_weights.sum(1)
    prev = torch.tensor([[0.3, 0.1, 0.2, 0.1, 0.5]], dtype=F64)
    assert torch.allclose(state.usage, 0.5 * prev + reads_sum + write_sum)
    assert torch.allclose(state.read_weights.sum(-1), torch.ones(1, R, dtype=F64))


