"""The optional C link kernels (``_native_link``) equal the torch-op path of ``LinkTape`` and the reference
primitives (values and gradients, float64, several read-head counts including a partial group of 4)."""

import pytest
import torch

from clmem.memory import DNCCore, _native_link as native, addressing as addr
from clmem.memory import link_tape
from clmem.memory.link_tape import LinkTape

F64 = torch.float64
pytestmark = pytest.mark.skipif(native.kernels() is None, reason="no C compiler: the kernels are optional")


def simplex(*shape, seed, scale=1.0, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    return (torch.softmax(torch.randn(*shape, generator=gen, dtype=F64) * 2, -1) * scale).to(dtype)


@pytest.mark.parametrize("reads", [1, 3, 4, 5])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_forward_kernel_matches_reference(reads, dtype):
    m, n = 3, 7
    prev = simplex(m, 1, n, n, seed=1, scale=0.4, dtype=dtype) * (1 - torch.eye(n, dtype=dtype))
    p, w = simplex(m, 1, n, seed=2, scale=0.7, dtype=dtype), simplex(m, 1, n, seed=3, scale=0.9, dtype=dtype)
    v = simplex(m, reads, n, seed=4, dtype=dtype)
    link = addr.update_link(prev, p, w)
    out, f, b = torch.empty(m, n, n, dtype=dtype), torch.empty(m, reads, n, dtype=dtype), torch.empty(m, reads, n,
                                                                                                      dtype=dtype)
    native.link_forward(prev.reshape(m, n, n), out, w.reshape(m, n), p.reshape(m, n), v, f, b)
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    assert torch.allclose(out, link.reshape(m, n, n), atol=tol)
    assert torch.allclose(f, addr.directional_read_weights(link, v, True).squeeze(2), atol=tol)
    assert torch.allclose(b, addr.directional_read_weights(link, v, False).squeeze(2), atol=tol)
    in_place = prev.reshape(m, n, n).clone()
    native.link_forward(in_place, in_place, w.reshape(m, n), p.reshape(m, n))
    assert torch.allclose(in_place, out, atol=tol)


def tape_unroll(link0, steps, heads=2, reads=5, seed=0, segment=None, use=(True, True)):
    """A tape unroll with distinct sizes whose loss uses the forward and/or backward reads."""
    b, n = link0.shape[0], link0.shape[-1]
    tape, token, loss = LinkTape(link0, len(steps), segment), link0, 0.0
    for t, (p, w, v) in enumerate(steps):
        f, bw, token = tape.step(token, p, w, v)
        weights = simplex(b, reads, heads, n, seed=seed + 50 + t)
        loss = loss + (f * weights).sum() * use[0] + (bw * weights.flip(-1)).pow(2).sum() * use[1]
    return loss + tape.final_link(token).pow(2).sum()


@pytest.mark.parametrize("use", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("segment", [1, 2])
def test_tape_native_equals_torch_path(monkeypatch, use, segment):
    b, h, n, r, steps = 2, 2, 6, 5, 4
    link0 = simplex(b, h, n, n, seed=9, scale=0.3) * (1 - torch.eye(n, dtype=F64))
    seq = [(simplex(b, h, n, seed=3 * t + 1, scale=0.8), simplex(b, h, n, seed=3 * t + 2, scale=0.9),
            simplex(b, r, n, seed=3 * t + 3)) for t in range(steps)]
    results = []
    for enabled in (True, False):
        if not enabled:
            monkeypatch.setattr(link_tape.native, "usable", lambda *tensors: False)
        inputs = [link0.clone().requires_grad_()] + [x.clone().requires_grad_() for s in seq for x in s]
        flat = inputs[1:]
        loss = tape_unroll(inputs[0], [flat[3 * t : 3 * t + 3] for t in range(steps)], h, r, segment=segment,
                           use=use)
        loss.backward()
        results.append([loss.detach()] + [x.grad for x in inputs])
    for x, y in zip(*results):
        assert torch.allclose(x, y, atol=1e-12)


def test_dnc_core_native_equals_torch_path_in_float32(monkeypatch):
    torch.manual_seed(0)
    core = DNCCore(input_size=3, output_size=2, hidden_size=8, memory_size=9, word_size=4, num_reads=3)
    x = torch.randn(2, 6, 3)
    grads = []
    for enabled in (True, False):
        if not enabled:
            monkeypatch.setattr(link_tape.native, "usable", lambda *tensors: False)
        core.zero_grad()
        y, state = core(x)
        (y.pow(2).sum() + state.memory_state.link.sum()).backward()
        grads.append([y.detach()] + [p.grad.clone() for p in core.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_pooled_buffers_are_reused_and_released():
    link_tape.release_buffers()
    link0 = torch.zeros(1, 1, 4, 4)
    for _ in range(2):
        tape = LinkTape(link0, 2, segment=1)
        token = link0
        for _ in range(2):
            _, _, token = tape.step(token, torch.rand(1, 1, 4), torch.rand(1, 1, 4), torch.rand(1, 2, 4))
        del tape, token
        assert link_tape._pool_bytes > 0
    assert torch.equal(link0, torch.zeros(1, 1, 4, 4))  # the caller's initial link is never pooled or written
    link_tape.release_buffers()
    assert link_tape._pool_bytes == 0 and not link_tape._pool
