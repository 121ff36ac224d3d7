"""NTM memory: config validation, interface parsing, hand-computed steps, initial-state schemes, gradcheck."""

import math

import pytest
import torch
from torch.func import functional_call

from clmem.memory import NTMCore, NTMCoreConfig, NTMHeadParams, NTMInterface, NTMMemory, NTMMemoryConfig, NTMState
from clmem.models import build_model

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


# ------------------------------------------------------------------ initial state: memory_init / weight_init

@pytest.mark.parametrize("field", ["memory_init", "weight_init"])
def test_init_choices_are_validated_with_one_line(field):
    for owner, make in (("NTMMemoryConfig", lambda **kw: NTMMemoryConfig(memory_size=4, word_size=3, num_reads=1, **kw)),
                        ("NTMCoreConfig", lambda **kw: NTMCoreConfig(input_size=2, output_size=2, **kw))):
        with pytest.raises(ValueError) as info:
            make(**{field: "zeros"})
        assert str(info.value).startswith(f"{owner}.{field}: expected one of") and "'zeros'" in str(info.value)
        assert "\n" not in str(info.value)


def test_constant_init_is_parameter_free_1e6_memory_and_onehot_weights():
    memory = make_memory(memory_init="constant", weight_init="onehot")
    assert list(memory.parameters()) == [] and list(memory.buffers()) == []
    state = memory.initial_state(3, dtype=F64)
    assert torch.equal(state.memory, torch.full((3, N, W), 1e-6, dtype=F64))
    onehot = torch.tensor([1.0, 0, 0, 0, 0], dtype=F64)
    assert torch.equal(state.read_weights, onehot.expand(3, R, N)) and torch.equal(state.write_weights, onehot.expand(3, H, N))


def test_learned_memory_is_tanh_of_its_bias_and_starts_glorot_uniform():
    torch.manual_seed(0)
    memory = make_memory(memory_init="learned")
    bound = math.sqrt(6.0 / (1 + N * W))  # Glorot bound of a 1 -> N*W dense layer: 0.6124
    assert memory.memory_bias.shape == (N, W) and float(memory.memory_bias.detach().abs().max()) <= bound
    with torch.no_grad():
        memory.memory_bias.copy_(torch.tensor([0.0, 1.0, -2.0]).expand(N, W))
    state = memory.initial_state(2, dtype=F64)
    row = torch.tensor([0.0, 0.7615941559557649, -0.9640275800758169], dtype=F64)  # tanh(0), tanh(1), tanh(-2)
    assert torch.allclose(state.memory, row.expand(2, N, W), atol=1e-7)
    assert state.memory.dtype == F64 and float(state.read_weights[..., 0].min()) == 1.0  # weights still one-hot


def test_random_memory_is_a_fixed_tanh_of_gaussian_noise_not_trained():
    torch.manual_seed(0)
    memory = make_memory(memory_init="random")
    assert list(memory.parameters()) == [] and "memory_noise" in memory.state_dict()
    first = memory.initial_state(1).memory
    assert torch.equal(first, memory.initial_state(1).memory)  # the same memory for every sequence
    with torch.no_grad():
        memory.memory_noise.copy_(torch.tensor([0.5, -0.5, 0.0]).expand(N, W))
    row = torch.tensor([0.46211715726000974, -0.46211715726000974, 0.0], dtype=F64)  # tanh(+-0.5), tanh(0)
    assert torch.allclose(memory.initial_state(2, dtype=F64).memory, row.expand(2, N, W), atol=1e-7)


def test_learned_weights_are_a_softmax_of_logits_read_heads_first():
    memory = make_memory(weight_init="learned")
    assert memory.weight_logits.shape == (R + H, N)
    logits = torch.zeros(R + H, N)
    logits[:R, 1] = math.log(2.0)  # read heads: exp = [1, 2, 1, 1, 1] / 6
    logits[R:, 4] = math.log(5.0)  # write heads: [1, 1, 1, 1, 5] / 9
    with torch.no_grad():
        memory.weight_logits.copy_(logits)
    state = memory.initial_state(2, dtype=F64)
    read = torch.tensor([1, 2, 1, 1, 1], dtype=F64) / 6
    write = torch.tensor([1, 1, 1, 1, 5], dtype=F64) / 9
    assert torch.allclose(state.read_weights, read.expand(2, R, N), atol=1e-7)
    assert torch.allclose(state.write_weights, write.expand(2, H, N), atol=1e-7)
    assert torch.equal(state.memory, torch.full((2, N, W), 1e-6, dtype=F64))


class _FirstStep(torch.nn.Module):
    """``memory.initial_state`` then one step on a fixed interface vector: the read words ``[B, R, W]``."""

    def __init__(self, memory):
        super().__init__()
        self.memory = memory

    def forward(self, vector):
        state = self.memory.initial_state(vector.shape[0], dtype=vector.dtype)
        return self.memory.step(self.memory.parse_interface(vector), state)[0]


def test_learned_init_gets_gradients_and_gradchecks_in_float64():
    torch.manual_seed(1)
    memory = make_memory(memory_init="learned", weight_init="learned").double()
    vector = random_vector(memory, 2, seed=3)
    model = _FirstStep(memory)
    model(vector).pow(2).sum().backward()
    for p in (memory.memory_bias, memory.weight_logits):
        assert p.grad is not None and torch.isfinite(p.grad).all() and float(p.grad.abs().max()) > 0

    def read(bias, logits):
        return functional_call(model, {"memory.memory_bias": bias, "memory.weight_logits": logits}, (vector,))

    bias = memory.memory_bias.detach().clone().requires_grad_()
    logits = memory.weight_logits.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(read, (bias, logits), eps=1e-6, atol=1e-5)


def test_core_and_registry_pass_the_init_options_to_the_memory():
    core = NTMCore(input_size=3, output_size=2, hidden_size=4, memory_size=N, word_size=W,
                   memory_init="learned", weight_init="learned")
    names = {n for n, _ in core.named_parameters()}
    assert {"memory.memory_bias", "memory.weight_logits"} <= names
    learner = build_model("ntm", (4, 3), 2, memory_init="random", hidden_size=4, memory_size=N, word_size=W)
    assert learner.core.config.memory_init == "random" and "core.memory.memory_noise" in learner.state_dict()
    assert build_model("ntm", (4, 3), 2).core.config.memory_init == "constant"
