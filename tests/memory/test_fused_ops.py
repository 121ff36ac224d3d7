"""Fused single-node ops of the DNC step: values equal the composed formulas; float64 ``gradcheck``."""

import torch

from clmem.memory import addressing as addr

F64 = torch.float64


def _rand(*shape, seed):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_erase_and_write_one_head_matches_formula_and_gradcheck():
    B, N, W = 2, 5, 3
    memory, erase, add = _rand(B, N, W, seed=1), _rand(B, 1, W, seed=3), _rand(B, 1, W, seed=4) - 0.5
    write = torch.softmax(_rand(B, 1, N, seed=2) * 3, -1)
    expected = memory * (1 - write.transpose(1, 2) * erase) + write.transpose(1, 2) * add
    assert torch.allclose(addr.erase_and_write(memory, write, erase, add), expected)
    inputs = [x.clone().requires_grad_() for x in (memory, write, erase, add)]
    assert torch.autograd.gradcheck(addr.erase_and_write, inputs)


def test_usage_one_read_head_gradcheck_and_formula():
    B, N = 2, 5
    usage, free = _rand(B, N, seed=1), _rand(B, 1, seed=2)
    reads = torch.softmax(_rand(B, 1, N, seed=3) * 3, -1)
    write = torch.softmax(_rand(B, 1, N, seed=4) * 3, -1)
    expected = (usage + (1 - usage) * write[:, 0]) * (1 - free * reads[:, 0])
    assert torch.allclose(addr.update_usage(usage, write, free, reads), expected)
    inputs = [x.clone().requires_grad_() for x in (usage, free, reads)]
    assert torch.autograd.gradcheck(lambda u, f, r: addr.update_usage(u, write, f, r), inputs)


def test_allocation_gradient_matches_autograd_reference_in_float32_with_empty_slots():
    usage = torch.tensor([[0.0, 0.0, 0.0, 0.5, 0.9, 0.0, 1.0, 0.2]]).repeat(2, 1)
    usage[1] = torch.rand(8, generator=torch.Generator().manual_seed(0))
    grad = torch.randn(2, 8, generator=torch.Generator().manual_seed(1))
    eps = addr.EPSILON

    def reference(u):
        u = eps + (1.0 - eps) * u
        s, idx = torch.sort(u, dim=-1, stable=True)
        a = (1.0 - s) * (torch.cumprod(s, -1) / s)
        return torch.zeros_like(a).scatter(-1, idx, a)

    truth = usage.to(F64).clone().requires_grad_()
    reference(truth).backward(grad.to(F64))  # float64 autograd through cumprod: the ground truth
    for dtype, rtol in ((torch.float32, 1e-5), (F64, 1e-9)):
        x = usage.to(dtype).clone().requires_grad_()
        out = addr.allocation_weights(x)
        assert torch.allclose(out.double(), reference(usage.to(F64)), atol=1e-6 if dtype == torch.float32 else 1e-12)
        out.backward(grad.to(dtype))
        # relative accuracy even for the tiny gradients of the empty slots (float32 autograd through
        # ``cumprod / x`` is off by up to ~90% there)
        assert torch.allclose(x.grad.double(), truth.grad, rtol=rtol, atol=1e-30)
