"""``LinkTape``: the unrolled temporal link with the link matrix outside autograd equals the per-step primitives
(values and gradients, with and without segment recomputation) and passes ``gradcheck`` in float64."""

import pytest
import torch

from clmem.memory import DNCCore, addressing as addr, link_tape
from clmem.memory.link_tape import LinkTape

F64 = torch.float64
B, N, R, T = 2, 5, 4, 4


def simplex(*shape, seed, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(*shape, generator=gen, dtype=F64) * 2, -1) * scale


def sequence_inputs(heads, seed=0):
    link0 = simplex(B, heads, N, N, seed=seed, scale=0.3)
    link0 = link0 * (1 - torch.eye(N, dtype=F64))
    steps = [(simplex(B, heads, N, seed=seed + 3 * t + 1, scale=0.8),  # p_{t-1}
              simplex(B, heads, N, seed=seed + 3 * t + 2, scale=0.9),  # w_t
              simplex(B, R, N, seed=seed + 3 * t + 3, scale=0.95)) for t in range(T)]  # v = w^r_{t-1}
    return [link0] + [x for step in steps for x in step]


def tape_unroll(segment):
    def run(link0, *flat):
        tape = LinkTape(link0, T, segment)
        token, outs = link0, []
        for t in range(T):
            p, w, v = flat[3 * t : 3 * t + 3]
            f, b, token = tape.step(token, p, w, v)
            outs += [f, b]
        return (*outs, tape.final_link(token))
    return run


def reference_unroll(link0, *flat):
    link, outs = link0, []
    for t in range(T):
        p, w, v = flat[3 * t : 3 * t + 3]
        link = addr.update_link(link, p, w)
        outs += [addr.directional_read_weights(link, v, True), addr.directional_read_weights(link, v, False)]
    return (*outs, link)


@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("segment", [None, 1, 2, 3])
def test_tape_matches_reference_values_and_gradients(heads, segment):
    inputs = sequence_inputs(heads)
    a = [x.clone().requires_grad_() for x in inputs]
    b = [x.clone().requires_grad_() for x in inputs]
    out_a, out_b = tape_unroll(segment)(*a), reference_unroll(*b)
    for x, y in zip(out_a, out_b):
        assert torch.allclose(x, y, atol=1e-12)
    weights = [simplex(*y.shape, seed=100 + i) for i, y in enumerate(out_b)]
    sum(((x * g).sum() for x, g in zip(out_a, weights))).backward()
    sum(((y * g).sum() for y, g in zip(out_b, weights))).backward()
    for x, y in zip(a, b):
        assert torch.allclose(x.grad, y.grad, atol=1e-12)


@pytest.mark.parametrize("segment", [1, 2])
def test_tape_gradcheck(segment):
    inputs = [x.clone().requires_grad_() for x in sequence_inputs(heads=1, seed=7)]
    assert torch.autograd.gradcheck(tape_unroll(segment), inputs, atol=1e-7)


def test_tape_only_some_outputs_used_and_backward_twice():
    inputs = [x.clone().requires_grad_() for x in sequence_inputs(heads=2, seed=3)]
    ref = [x.detach().clone().requires_grad_() for x in inputs]
    out, out_ref = tape_unroll(2)(*inputs), reference_unroll(*ref)
    loss, loss_ref = out[2].sum() * out[3].pow(2).sum(), out_ref[2].sum() * out_ref[3].pow(2).sum()  # step 1 only
    loss.backward(retain_graph=True)
    loss.backward()
    loss_ref.backward(retain_graph=True)
    loss_ref.backward()
    for x, y in zip(inputs, ref):
        gx, gy = (torch.zeros_like(z) if z.grad is None else z.grad for z in (x, y))
        assert torch.allclose(gx, gy, atol=1e-12)


def test_dnc_core_tape_matches_checkpointed_unroll_with_link_gradients():
    kwargs = dict(input_size=3, output_size=2, hidden_size=6, memory_size=N, word_size=3, num_reads=2, num_writes=2)
    torch.manual_seed(1)
    taped = DNCCore(**kwargs).double()
    plain = DNCCore(**kwargs, checkpoint_every=2).double()
    plain.load_state_dict(taped.state_dict())
    x = torch.randn(2, 5, 3, dtype=F64)
    results = []
    for core in (taped, plain):
        state = core.initial_state(2)
        link0 = simplex(*state.memory_state.link.shape, seed=4, scale=0.2).requires_grad_()
        state = state._replace(memory_state=state.memory_state._replace(link=link0))
        y, final = core(x, state)
        (y.pow(2).sum() + (final.memory_state.link * torch.arange(N, dtype=F64)).sum()).backward()
        results.append((y, final.memory_state.link, link0.grad, [p.grad for p in core.parameters()]))
    (y0, l0, g0, p0), (y1, l1, g1, p1) = results
    assert torch.allclose(y0, y1) and torch.allclose(l0, l1) and torch.allclose(g0, g1)
    assert all(torch.allclose(a, b) for a, b in zip(p0, p1))


def test_dnc_core_tape_without_grad():
    core = DNCCore(input_size=3, output_size=2, memory_size=N, word_size=3, num_reads=2).double()
    x = torch.randn(2, 4, 3, dtype=F64)
    with torch.no_grad():
        y, state = core(x)
    reference = DNCCore(input_size=3, output_size=2, memory_size=N, word_size=3, num_reads=2, checkpoint_every=1)
    reference = reference.double()
    reference.load_state_dict(core.state_dict())
    with torch.no_grad():
        y2, state2 = reference(x)
    assert torch.allclose(y, y2) and torch.allclose(state.memory_state.link, state2.memory_state.link)


def test_tape_rejects_more_steps_than_declared():
    link0, p, w, v = sequence_inputs(heads=1)[:4]
    tape = LinkTape(link0, 1)
    _, _, token = tape.step(link0, p, w, v)
    with pytest.raises(ValueError, match="LinkTape.step"):
        tape.step(token, p, w, v)


def test_large_link_buffers_start_on_a_huge_page_boundary():
    big = link_tape._empty((3, 512, 512), torch.float32, torch.device("cpu"))  # 3 MiB
    small = link_tape._empty((4, 8, 8), torch.float64, torch.device("cpu"))
    assert big.shape == (3, 512, 512) and big.is_contiguous() and small.shape == (4, 8, 8)
    if link_tape._madvise is not None:  # Linux: aligned for transparent huge pages
        assert big.data_ptr() % link_tape.HUGE_PAGE == 0
    big.fill_(1.5)
    assert float(big.sum()) == 1.5 * 3 * 512 * 512
