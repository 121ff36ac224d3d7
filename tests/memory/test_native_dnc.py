"""The optional C DNC step (``_native_dnc``: two nodes around the link step) equals the composed pure functions of
``addressing`` (values and gradients, float64, B=2, N=5, W=3, R=4) and passes ``gradcheck``. The kernels walk rows in
vectors of 8 floats / 4 doubles and read heads in groups of 4, so the larger sizes (N=19, W=11, R=5) also cover whole
vectors with scalar tails and a group of 4 heads with one left over."""

import gc

import pytest
import torch

from clmem.memory import DNCCore, _native_dnc as native, dnc, link_tape
from clmem.memory.dnc import DNCMemory, DNCState
from clmem.memory.link_tape import LinkTape

F64 = torch.float64
B, N, W, R = 2, 5, 3, 4
pytestmark = pytest.mark.skipif(native.kernels() is None, reason="no C compiler: the kernels are optional")


def random_state(memory: DNCMemory, seed: int, dtype=F64, empty_slots: bool = False) -> DNCState:
    gen = torch.Generator().manual_seed(seed)
    N, W, R = memory.config.memory_size, memory.config.word_size, memory.config.num_reads

    def simplex(*shape, scale=0.9):
        return torch.softmax(torch.randn(*shape, generator=gen, dtype=F64) * 2, -1).mul(scale).to(dtype)

    usage = torch.rand(B, N, generator=gen, dtype=F64).to(dtype)
    if empty_slots:
        usage[:, :2] = 0.0  # ties in the allocation sort
    link = simplex(B, 1, N, N, scale=0.3) * (1 - torch.eye(N, dtype=dtype))
    return DNCState(memory=torch.randn(B, N, W, generator=gen, dtype=F64).to(dtype), read_weights=simplex(B, R, N),
                    write_weights=simplex(B, 1, N), usage=usage, link=link, precedence=simplex(B, 1, N, scale=0.7))


def run_step(memory, vector, state, use_native):
    """Outputs and input gradients of ``step_vector`` (C nodes) or ``step(parse_interface(...))`` (composed)."""
    leaves = [vector.clone().requires_grad_()] + [x.clone().requires_grad_() for x in state]
    if use_native:
        read_words, new = memory.step_vector(leaves[0], DNCState(*leaves[1:]))
    else:
        read_words, new = memory.step(memory.parse_interface(leaves[0]), DNCState(*leaves[1:]))
    outputs = [read_words, *new]
    gen = torch.Generator().manual_seed(11)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outputs)
    loss.backward()
    return [o.detach() for o in outputs], [x.grad for x in leaves]


@pytest.mark.parametrize("seed, sizes", [(0, (N, W, R)), (1, (N, W, R)), (2, (19, 11, 5)), (3, (16, 8, 4))])
def test_native_step_matches_composed_functions(seed, sizes):
    memory = DNCMemory(memory_size=sizes[0], word_size=sizes[1], num_reads=sizes[2])
    vector = torch.randn(B, memory.interface_size, generator=torch.Generator().manual_seed(seed + 5), dtype=F64) * 3
    state = random_state(memory, seed)
    out_a, grad_a = run_step(memory, vector, state, True)
    out_b, grad_b = run_step(memory, vector, state, False)
    for x, y in zip(out_a + grad_a, out_b + grad_b):
        assert (x is None and y is None) or torch.allclose(x, y, atol=1e-12, rtol=1e-10)
    assert grad_a[3] is None and grad_b[3] is None  # usage does not differentiate the previous write weights


@pytest.mark.parametrize("sizes", [(N, W, R), (19, 11, 5)])
def test_native_step_float32_with_empty_slots(sizes):
    memory = DNCMemory(memory_size=sizes[0], word_size=sizes[1], num_reads=sizes[2])
    vector = torch.randn(B, memory.interface_size, generator=torch.Generator().manual_seed(3))
    state = random_state(memory, 3, torch.float32, empty_slots=True)
    out_a, grad_a = run_step(memory, vector, state, True)
    out_b, grad_b = run_step(memory, vector, state, False)
    for x, y in zip(out_a + grad_a, out_b + grad_b):
        assert (x is None and y is None) or torch.allclose(x, y, atol=1e-5, rtol=1e-4)


def test_native_nodes_gradcheck():
    memory = DNCMemory(memory_size=N, word_size=W, num_reads=R)
    ranges, pre_offsets, post_offsets = memory._layout
    state = random_state(memory, 4)
    gen = torch.Generator().manual_seed(9)
    vector = torch.randn(B, memory.interface_size, generator=gen, dtype=F64).mul(3).requires_grad_()
    vector.data[0, :3] = torch.tensor([25.0, -30.0, 19.0], dtype=F64)  # both sides of the softplus threshold
    assert torch.autograd.gradcheck(lambda v: native.Activate.apply(v, native.ranges_array(ranges)), [vector])
    act = native.Activate.apply(vector.detach(), native.ranges_array(ranges))
    pre = [state.usage, state.write_weights, state.read_weights, state.memory, state.precedence, act]
    pre = [x.detach().requires_grad_(k != 1) for k, x in enumerate(pre)]
    assert torch.autograd.gradcheck(lambda *xs: native.PreLink.apply(*xs, pre_offsets, 1e-6), pre)
    directional = [torch.rand(B, R, N, generator=gen, dtype=F64) * 0.3 for _ in range(2)]
    post = [x.detach().requires_grad_() for x in (state.memory, act, *directional)]
    assert torch.autograd.gradcheck(lambda *xs: native.PostLink.apply(*xs, post_offsets, 1e-6), post)


def test_activations_match_parse_interface():
    memory = DNCMemory(memory_size=N, word_size=W, num_reads=R)
    vector = torch.randn(3, memory.interface_size, generator=torch.Generator().manual_seed(1), dtype=F64) * 10
    act = native.Activate.apply(vector, native.ranges_array(memory._layout[0]))
    parsed = memory.parse_interface(vector)
    flat = torch.cat([getattr(parsed, name).reshape(3, -1) for _, layout in memory._groups for name, _ in layout], 1)
    assert torch.allclose(act, flat, atol=1e-14)


def test_core_native_equals_composed_path(monkeypatch):
    torch.manual_seed(0)
    core = DNCCore(input_size=3, output_size=2, hidden_size=8, memory_size=6, word_size=4, num_reads=3).double()
    x = torch.randn(2, 5, 3, dtype=F64)
    results = []
    for use_native in (True, False):
        if not use_native:
            monkeypatch.setattr(dnc.native, "usable", lambda *tensors: False)
        core.zero_grad()
        y, _ = core(x)
        y.pow(2).sum().backward()
        results.append([y.detach()] + [p.grad.clone() for p in core.parameters()])
    for a, b in zip(*results):
        assert torch.allclose(a, b, atol=1e-12, rtol=1e-9)


def unroll_grads(memory, vectors, state, use_tape, segment=None):
    """Outputs of every step and the gradients of the step inputs and the initial state for ``steps`` calls of
    ``step_vector`` (with a ``LinkTape`` of checkpoint ``segment``: the one-node ``DNCStep``; without: the
    four-node path)."""
    leaves = [v.clone().requires_grad_() for v in vectors] + [x.clone().requires_grad_() for x in state]
    s = DNCState(*leaves[len(vectors):])
    tape = None
    if use_tape:
        tape = LinkTape(s.link, len(vectors), segment)
    outputs = []
    for v in leaves[: len(vectors)]:
        read_words, s = memory.step_vector(v, s, tape)
        outputs += [read_words, s.memory, s.read_weights, s.write_weights, s.usage, s.precedence]
    if use_tape:
        s = memory.finish_unroll(s, tape)
    outputs.append(s.link)
    gen = torch.Generator().manual_seed(7)
    sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outputs).backward()
    return [o.detach() for o in outputs], [x.grad for x in leaves]


@pytest.mark.parametrize("sizes, segment", [((N, W, R), 1), ((19, 11, 5), 1), ((N, W, R), 2)])
def test_one_node_step_equals_four_node_path(sizes, segment):
    memory = DNCMemory(memory_size=sizes[0], word_size=sizes[1], num_reads=sizes[2])
    gen = torch.Generator().manual_seed(12)
    vectors = [torch.randn(B, memory.interface_size, generator=gen, dtype=F64) * 2 for _ in range(3)]
    state = random_state(memory, 6)
    out_a, grad_a = unroll_grads(memory, vectors, state, True, segment)  # segment 2: links rebuilt in the backward
    out_b, grad_b = unroll_grads(memory, vectors, state, False)
    assert len(out_a) == len(out_b) == 19
    for x, y in zip(out_a + grad_a, out_b + grad_b):
        assert (x is None and y is None) or torch.allclose(x, y, atol=1e-12, rtol=1e-10)


def test_one_node_unroll_frees_its_tape_without_the_garbage_collector():
    """The tape keeps detached copies of the step inputs, so no reference cycle holds it (and its links)."""
    core = DNCCore(input_size=3, output_size=2, hidden_size=8, memory_size=6, word_size=4, num_reads=3)
    x = torch.randn(2, 5, 3)
    link_tape.release_buffers()
    gc.disable()
    try:
        y, state = core(x)
        y.sum().backward()
        del y, state
        assert link_tape._pool_bytes > 0  # the tape was freed on the spot and pooled its link buffers
    finally:
        gc.enable()
        link_tape.release_buffers()
