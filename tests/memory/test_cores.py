"""Cores (controller + memory): shapes, traces, dtype, state handling, batching, gradcheck, validation."""

import pytest
import torch

from clmem.memory import (
    Controller,
    ControllerConfig,
    CoreState,
    DNCCore,
    DNCCoreConfig,
    MANNCore,
    MANNCoreConfig,
    NTMCore,
    NTMCoreConfig,
    detach_state,
)

F64 = torch.float64
CORES = [NTMCore, DNCCore, MANNCore]
SMALL = dict(input_size=3, output_size=2, hidden_size=6, memory_size=5, word_size=3, num_reads=2, num_writes=2)


def make_core(cls, seed=0, **overrides):
    torch.manual_seed(seed)
    return cls(**{**SMALL, **overrides})


def inputs(batch, steps, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, steps, SMALL["input_size"], generator=gen).to(dtype)


@pytest.mark.parametrize("controller", ["lstm", "feedforward"])
@pytest.mark.parametrize("cls", CORES)
def test_forward_shapes_and_trace(cls, controller):
    core = make_core(cls, controller=controller)
    y, state, trace = core(inputs(4, 6), return_trace=True)
    assert y.shape == (4, 6, 2) and isinstance(state, CoreState)
    assert trace.read_weights.shape == (4, 6, 2, 5) and trace.write_weights.shape == (4, 6, 2, 5)
    if cls is NTMCore:
        assert trace.usage is None
    else:
        assert trace.usage.shape == (4, 6, 5)
    assert not trace.read_weights.requires_grad
    y2, state2 = core(inputs(4, 6))
    assert torch.equal(y, y2)  # no hidden state kept on the module between calls


@pytest.mark.parametrize("cls", CORES)
def test_float64_state_follows_input(cls):
    core = make_core(cls).double()
    y, state = core(inputs(2, 3, dtype=F64))
    assert y.dtype == F64 and state.memory_state.memory.dtype == F64
    assert state.controller_state.hidden.dtype == F64
    assert core.initial_state(2).read_words.dtype == F64


@pytest.mark.parametrize("cls", CORES)
def test_step_matches_forward_and_state_resumes(cls):
    core = make_core(cls)
    x = inputs(3, 5)
    y, final = core(x)
    y_a, state = core(x[:, :2])
    y_b, resumed = core(x[:, 2:], state)
    assert torch.allclose(torch.cat([y_a, y_b], 1), y, atol=1e-6)
    state = core.initial_state(3)
    for t in range(5):
        y_t, state = core.step(x[:, t], state)
        assert torch.allclose(y_t, y[:, t], atol=1e-6)
    assert torch.allclose(state.read_words, final.read_words, atol=1e-6)


@pytest.mark.parametrize("cls", CORES)
def test_batched_equals_per_example(cls):
    core = make_core(cls).double()
    x = inputs(3, 4, seed=1, dtype=F64)
    y, _ = core(x)
    for b in range(3):
        y_b, _ = core(x[b : b + 1])
        assert torch.allclose(y_b, y[b : b + 1])


@pytest.mark.parametrize("cls", CORES)
def test_detach_state_truncated_bptt(cls):
    core = make_core(cls)
    x = inputs(2, 6)
    _, state = core(x[:, :3])
    state = core.detach_state(state)
    assert all(not tensor.requires_grad for tensor in _tensors(state))
    y, _ = core(x[:, 3:], state)
    y.pow(2).mean().backward()
    grads = [p.grad for p in core.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert detach_state(state) is not state


def _tensors(tree):
    if isinstance(tree, torch.Tensor):
        return [tree]
    return [t for item in tree for t in _tensors(item)]


@pytest.mark.parametrize("cls", CORES)
def test_gradcheck_one_core_step(cls):
    core = make_core(cls, memory_size=4, word_size=2, hidden_size=3).double()
    _, state = core(inputs(2, 2, seed=3, dtype=F64))
    state = detach_state(state)
    x_t = inputs(2, 1, seed=4, dtype=F64)[:, 0].requires_grad_()
    read_words = state.read_words.clone().requires_grad_()
    hidden = state.controller_state.hidden.clone().requires_grad_()
    memory = state.memory_state.memory.clone().requires_grad_()

    def step(x_t, read_words, hidden, memory):
        prev = CoreState(state.controller_state._replace(hidden=hidden),
                         state.memory_state._replace(memory=memory), read_words)
        y_t, next_state = core.step(x_t, prev)
        return y_t, next_state.memory_state.memory

    assert torch.autograd.gradcheck(step, (x_t, read_words, hidden, memory), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("cls", CORES)
def test_parameters_get_finite_gradients_with_zero_memory(cls):
    core = make_core(cls)
    y, _ = core(torch.zeros(2, 3, SMALL["input_size"]))
    y.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in core.parameters())


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (DNCCoreConfig, dict(memory_size=0), "DNCCoreConfig.memory_size: expected an int >= 1, got 0"),
        (DNCCoreConfig, dict(controller="gru"), "DNCCoreConfig.controller: expected one of ('lstm', 'feedforward')"),
        (NTMCoreConfig, dict(clip_value=-1.0), "NTMCoreConfig.clip_value: expected a finite number > 0 or None"),
        (NTMCoreConfig, dict(shift_range=-2), "NTMCoreConfig.shift_range: expected an int >= 0, got -2"),
        (MANNCoreConfig, dict(num_writes=3), "MANNCoreConfig.num_writes: expected an int <= num_reads (2)"),
        (MANNCoreConfig, dict(usage_decay=1.5), "MANNCoreConfig.usage_decay: expected a float in [0, 1)"),
    ],
)
def test_config_validation(cls, kwargs, message):
    with pytest.raises(ValueError) as info:
        cls(**{**SMALL, **kwargs})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_core_accepts_config_or_kwargs_not_both():
    config = DNCCoreConfig(**SMALL)
    assert DNCCore(config).config is config
    with pytest.raises(TypeError):
        DNCCore(config, hidden_size=3)
    with pytest.raises(TypeError):
        DNCCore(NTMCoreConfig(**SMALL))


def test_forward_rejects_bad_input_shape():
    core = make_core(DNCCore)
    with pytest.raises(ValueError, match="DNCCore.forward"):
        core(torch.zeros(2, 3, 4))


def test_clip_value_bounds_outputs():
    core = make_core(DNCCore, clip_value=1e-3)
    y, _ = core(inputs(2, 3) * 100)
    assert y.abs().max() <= 1e-3 + 1e-9


@pytest.mark.parametrize("kind", ["lstm", "feedforward"])
def test_controller_public_api(kind):
    controller = Controller(input_size=4, hidden_size=5, kind=kind)
    state = controller.initial_state(3, dtype=F64)
    size = 5 if kind == "lstm" else 0
    assert state.hidden.shape == (3, size) and state.cell.shape == (3, size) and state.hidden.dtype == F64
    output, next_state = controller(torch.randn(3, 4), controller.initial_state(3))
    assert output.shape == (3, controller.output_size) == (3, 5)
    assert next_state.hidden.shape == (3, size)
    with pytest.raises(ValueError, match="ControllerConfig.kind"):
        ControllerConfig(input_size=4, kind="rnn")


@pytest.mark.parametrize("cls", CORES)
def test_checkpointed_unroll_matches_plain_unroll(cls):
    plain = make_core(cls, seed=5, checkpoint_every=0).double()
    chunked = make_core(cls, seed=5, checkpoint_every=2).double()
    x = inputs(2, 5, seed=6, dtype=F64)
    results = []
    for core in (plain, chunked):
        y, state, trace = core(x, return_trace=True)
        (y.pow(2).sum() + state.memory_state.memory.sum()).backward()
        results.append((y, trace.read_weights, [p.grad for p in core.parameters()]))
    (y0, r0, g0), (y1, r1, g1) = results
    assert torch.allclose(y0, y1) and torch.allclose(r0, r1)
    assert all(torch.allclose(a, b) for a, b in zip(g0, g1))


def test_checkpoint_every_validation_and_auto_policy():
    with pytest.raises(ValueError, match="DNCCoreConfig.checkpoint_every: expected an int >= 0, got -1"):
        DNCCoreConfig(**{**SMALL, "checkpoint_every": -1})
    core = make_core(DNCCore)
    x = inputs(2, 9)
    state = core.initial_state(2)
    assert core.checkpoint_segment(x, state) is None  # small link: plain unroll
    big = make_core(DNCCore, memory_size=1024, num_writes=8)  # 2*8*1024*1024 = 2**24 link elements
    assert big.checkpoint_segment(x, big.initial_state(2)) == 3
    with torch.no_grad():
        assert big.checkpoint_segment(x, big.initial_state(2)) is None
