"""Hand-computed cases, gradchecks and numerical-safety checks for every addressing primitive."""

import pytest
import torch

from clmem.memory import addressing as addr

F64 = torch.float64


def t(values):
    return torch.tensor(values, dtype=F64)


def rand(*shape, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=gen, dtype=F64) * scale


def simplex(*shape, seed=0, total=0.9):
    """Random non-negative rows summing to ``total`` (valid addressing weights)."""
    x = rand(*shape, seed=seed) + 0.05
    return x / x.sum(-1, keepdim=True) * total


# B=2, N=5, W=3, H=2: the second batch element holds a scaled memory (cosine is scale-invariant).
MEMORY = t([[[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0], [3, 4, 0]]] * 2) * t([1.0, 2.0]).view(2, 1, 1)
KEYS = t([[[1, 0, 0], [0, 2, 0]]] * 2)
COS = [[1, 0, 0.70710678, 0, 0.6], [0, 1, 0.70710678, 0, 0.8]]


def test_cosine_similarity_hand_computed():
    expected = t([COS, COS])
    assert torch.allclose(addr.cosine_similarity(MEMORY, KEYS), expected, atol=1e-5)


def test_content_weights_hand_computed():
    weights = addr.content_weights(MEMORY, KEYS, t([[2.0, 0.5], [2.0, 0.5]]))
    row0 = [0.439239, 0.059444, 0.24451, 0.059444, 0.197363]
    row1 = [0.152331, 0.251151, 0.216937, 0.152331, 0.227251]
    assert torch.allclose(weights, t([[row0, row1]] * 2), atol=1e-5)


def test_content_weights_zero_memory_is_uniform():
    weights = addr.content_weights(torch.zeros(2, 5, 3, dtype=F64), KEYS, t([[1e4, 1.0], [3.0, 1e4]]))
    assert torch.allclose(weights, torch.full((2, 2, 5), 0.2, dtype=F64))


def test_read_memory_hand_computed():
    memory = t([[[1, 2], [3, 4], [5, 6]]])
    read = addr.read_memory(memory, t([[[0.5, 0.5, 0], [0, 0, 1]]]))
    assert torch.allclose(read, t([[[2, 3], [5, 6]]]))


def test_interpolate_hand_computed():
    out = addr.interpolate(t([[[0.5, 0.5, 0]]]), t([[[0, 0, 1]]]), t([[0.25]]))
    assert torch.allclose(out, t([[[0.125, 0.125, 0.75]]]))


@pytest.mark.parametrize(
    "shift, expected",
    [
        ([0, 0, 1], [0, 0.1, 0.2, 0.3, 0.4]),  # shift +1: w~(i) = w(i - 1)
        ([1, 0, 0], [0.2, 0.3, 0.4, 0, 0.1]),  # shift -1: w~(i) = w(i + 1)
        ([0.5, 0.5, 0], [0.15, 0.25, 0.35, 0.2, 0.05]),
        ([0, 0, 0, 0, 1], [0.4, 0, 0.1, 0.2, 0.3]),  # S = 5: shift +2
    ],
)
def test_circular_shift_hand_computed(shift, expected):
    out = addr.circular_shift(t([[[0.1, 0.2, 0.3, 0.4, 0]]]), t([[shift]]))
    assert torch.allclose(out, t([[expected]]))


def test_circular_shift_rejects_even_kernel():
    with pytest.raises(ValueError, match="odd"):
        addr.circular_shift(t([[[0.5, 0.5, 0]]]), t([[[0.5, 0.5]]]))


def test_sharpen_hand_computed():
    out = addr.sharpen(t([[[0.5, 0.25, 0.25], [0.2, 0.3, 0.5]]]), t([[2.0, 1.0]]))
    assert torch.allclose(out, t([[[2 / 3, 1 / 6, 1 / 6], [0.2, 0.3, 0.5]]]), atol=1e-5)


def test_update_usage_hand_computed():
    usage = addr.update_usage(
        prev_usage=t([[0.5, 0, 1, 0.2]]),
        prev_write_weights=t([[[0.5, 0, 0, 0], [0.5, 0.4, 0, 0]]]),
        free_gates=t([[1.0, 0.5]]),
        prev_read_weights=t([[[0.2, 0, 0, 0.5], [0, 0, 0.4, 0.5]]]),
    )
    assert torch.allclose(usage, t([[0.7, 0.4, 0.8, 0.075]]))


def test_update_usage_does_not_differentiate_write_weights():
    write = simplex(2, 2, 5, seed=1).requires_grad_()
    reads = simplex(2, 4, 5, seed=2).requires_grad_()
    usage = addr.update_usage(rand(2, 5, seed=3), write, rand(2, 4, seed=4), reads)
    usage.sum().backward()
    assert write.grad is None
    assert reads.grad is not None and reads.grad.abs().sum() > 0


def test_allocation_weights_hand_computed():
    alloc = addr.allocation_weights(t([[0.2, 0.5, 0.1], [0.0, 0.0, 0.0]]))
    assert torch.allclose(alloc, t([[0.08, 0.01, 0.9], [1, 0, 0]]), atol=1e-5)


def test_write_allocation_weights_hand_computed():
    alloc = addr.write_allocation_weights(t([[0.5, 0.9], [0.0, 0.0]]), t([[1.0, 1.0], [1.0, 1.0]]), 2)
    expected = t([[[0.5, 0.05], [0.25, 0.07125]], [[1, 0], [0, 1]]])
    assert torch.allclose(alloc, expected, atol=1e-5)


def test_write_allocation_weights_checks_heads():
    with pytest.raises(ValueError, match="write_gates"):
        addr.write_allocation_weights(t([[0.5, 0.9]]), t([[1.0, 1.0]]), 3)


def test_write_weights_hand_computed():
    out = addr.write_weights(t([[[0.2, 0.8]]]), t([[[1.0, 0.0]]]), t([[0.5]]), t([[0.5]]))
    assert torch.allclose(out, t([[[0.3, 0.2]]]))


def test_erase_and_write_hand_computed():
    memory = t([[[1, 2], [3, 4]]])
    out = addr.erase_and_write(
        memory,
        write_weights=t([[[1, 0], [0.5, 0.5]]]),
        erase=t([[[1, 0], [0.5, 0.5]]]),
        add=t([[[5, 6], [1, 1]]]),
    )
    assert torch.allclose(out, t([[[5.5, 8], [2.75, 3.5]]]))


def test_update_link_hand_computed():
    prev_link = t([[[[0, 0, 0], [1, 0, 0], [0, 0, 0]]]])
    link = addr.update_link(prev_link, t([[[0.2, 0.3, 0]]]), t([[[0.5, 0.5, 0]]]))
    assert torch.allclose(link, t([[[[0, 0.15, 0], [0.1, 0, 0], [0, 0, 0]]]]))


def test_update_link_sequence_of_one_hot_writes():
    link, precedence = torch.zeros(1, 1, 3, 3, dtype=F64), torch.zeros(1, 1, 3, dtype=F64)
    for slot in range(3):
        write = torch.zeros(1, 1, 3, dtype=F64)
        write[..., slot] = 1
        link = addr.update_link(link, precedence, write)
        precedence = addr.update_precedence(precedence, write)
    assert torch.allclose(link, t([[[[0, 0, 0], [1, 0, 0], [0, 1, 0]]]]))
    assert torch.allclose(precedence, t([[[0, 0, 1]]]))


def test_update_precedence_hand_computed():
    out = addr.update_precedence(t([[[0.2, 0.3, 0]]]), t([[[0.5, 0.25, 0]]]))
    assert torch.allclose(out, t([[[0.55, 0.325, 0]]]))


def test_directional_read_weights_hand_computed():
    link = t([[[[0, 0, 0], [1, 0, 0], [0, 1, 0]]]])  # slot 1 written after 0, slot 2 after 1
    reads = t([[[1, 0, 0], [0, 0, 1]]])  # R=2
    forward = addr.directional_read_weights(link, reads, forward=True)
    backward = addr.directional_read_weights(link, reads, forward=False)
    assert forward.shape == (1, 2, 1, 3)
    assert torch.allclose(forward, t([[[[0, 1, 0]], [[0, 0, 0]]]]))
    assert torch.allclose(backward, t([[[[0, 0, 0]], [[0, 1, 0]]]]))


def test_read_weights_hand_computed():
    out = addr.read_weights(
        content_weights=t([[[1, 0, 0]]]),
        forward_weights=t([[[[0, 1, 0]]]]),
        backward_weights=t([[[[0, 0, 1]]]]),
        read_modes=t([[[0.2, 0.3, 0.5]]]),  # [backward, forward, content]
    )
    assert torch.allclose(out, t([[[0.5, 0.3, 0.2]]]))


def test_least_used_weights_hand_computed():
    out = addr.least_used_weights(t([[0.3, 0.1, 0.2, 0.1]]), 2)
    assert torch.equal(out, t([[[0, 1, 0, 0], [0, 0, 0, 1]]]))
    with pytest.raises(ValueError, match="num_least_used"):
        addr.least_used_weights(t([[0.3, 0.1]]), 3)


def test_lrua_write_weights_hand_computed():
    out = addr.lrua_write_weights(t([[[0.6, 0.4, 0]]]), t([[[0, 0, 1]]]), t([[0.25]]))
    assert torch.allclose(out, t([[[0.15, 0.1, 0.75]]]))


def test_lrua_usage_hand_computed():
    out = addr.lrua_usage(t([[1, 0, 0.5]]), t([[[0.5, 0.5, 0], [0, 0, 1]]]), t([[[0, 0, 1]]]), 0.5)
    assert torch.allclose(out, t([[1, 0.5, 2.25]]))


def test_oneplus_range():
    out = addr.oneplus(t([-1e4, 0.0, 1e4]))
    assert torch.allclose(out, t([1.0, 1.6931471805599454, 1e4 + 1]))


# ------------------------------------------------------------------------------------------------ gradchecks
B, N, W, R, H = 2, 5, 3, 4, 2

GRADCHECK_CASES = {
    "cosine_similarity": (addr.cosine_similarity, lambda: (rand(B, N, W, seed=1), rand(B, H, W, seed=2) - 0.5)),
    "content_weights": (
        addr.content_weights,
        lambda: (rand(B, N, W, seed=1) - 0.5, rand(B, H, W, seed=2) - 0.5, 1 + rand(B, H, seed=3, scale=3)),
    ),
    "interpolate": (addr.interpolate, lambda: (simplex(B, H, N, seed=1), simplex(B, H, N, seed=2), rand(B, H))),
    "circular_shift": (addr.circular_shift, lambda: (simplex(B, H, N, seed=1), simplex(B, H, 3, seed=2, total=1))),
    "sharpen": (addr.sharpen, lambda: (simplex(B, H, N, seed=1), 1 + rand(B, H, seed=2, scale=2))),
    # write weights are detached inside update_usage (DeepMind), so they are a fixed input here
    "update_usage": (
        lambda u, f, r: addr.update_usage(u, simplex(B, H, N, seed=2), f, r),
        lambda: (rand(B, N, seed=1), rand(B, R, seed=3), simplex(B, R, N, seed=4)),
    ),
    "allocation_weights": (addr.allocation_weights, lambda: (rand(B, N, seed=1),)),
    "write_allocation_weights": (
        lambda u, g: addr.write_allocation_weights(u, g, H),
        lambda: (rand(B, N, seed=1), rand(B, H, seed=2)),
    ),
    "write_weights": (
        addr.write_weights,
        lambda: (simplex(B, H, N, seed=1), simplex(B, H, N, seed=2), rand(B, H, seed=3), rand(B, H, seed=4)),
    ),
    "erase_and_write": (
        addr.erase_and_write,
        lambda: (rand(B, N, W, seed=1), simplex(B, H, N, seed=2), rand(B, H, W, seed=3), rand(B, H, W, seed=4)),
    ),
    "update_link": (
        addr.update_link,
        lambda: (rand(B, H, N, N, seed=1, scale=0.2), simplex(B, H, N, seed=2), simplex(B, H, N, seed=3)),
    ),
    "temporal_link_step": (
        addr.temporal_link_step,
        lambda: (rand(B, H, N, N, seed=1, scale=0.2), simplex(B, H, N, seed=2), simplex(B, H, N, seed=3),
                 simplex(B, R, N, seed=4)),
    ),
    "update_precedence": (addr.update_precedence, lambda: (simplex(B, H, N, seed=1), simplex(B, H, N, seed=2))),
    "directional_forward": (
        lambda link, w: addr.directional_read_weights(link, w, True),
        lambda: (rand(B, H, N, N, seed=1, scale=0.2), simplex(B, R, N, seed=2)),
    ),
    "directional_backward": (
        lambda link, w: addr.directional_read_weights(link, w, False),
        lambda: (rand(B, H, N, N, seed=1, scale=0.2), simplex(B, R, N, seed=2)),
    ),
    "read_weights": (
        addr.read_weights,
        lambda: (simplex(B, R, N, seed=1), simplex(B, R, H, N, seed=2), simplex(B, R, H, N, seed=3),
                 simplex(B, R, 1 + 2 * H, seed=4, total=1)),
    ),
    "lrua_write_weights": (
        addr.lrua_write_weights,
        lambda: (simplex(B, H, N, seed=1), addr.least_used_weights(rand(B, N, seed=2), H), rand(B, H, seed=3)),
    ),
    "lrua_usage": (
        lambda u, r, w: addr.lrua_usage(u, r, w, 0.9),
        lambda: (rand(B, N, seed=1), simplex(B, R, N, seed=2), simplex(B, H, N, seed=3)),
    ),
}


@pytest.mark.parametrize("name", sorted(GRADCHECK_CASES))
def test_gradcheck(name):
    fn, make_inputs = GRADCHECK_CASES[name]
    inputs = tuple(x.requires_grad_() for x in make_inputs())
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)


def test_update_link_matches_dense_formula_and_gradients():
    link0, prec, write = (rand(B, H, N, N, seed=5, scale=0.2), simplex(B, H, N, seed=6), simplex(B, H, N, seed=7))
    eye = torch.eye(N, dtype=F64)
    inputs = [x.clone().requires_grad_() for x in (link0, prec, write)]
    dense = [x.clone().requires_grad_() for x in (link0, prec, write)]
    w_i, w_j = dense[2].unsqueeze(-1), dense[2].unsqueeze(-2)
    reference = ((1 - w_i - w_j) * dense[0] + w_i * dense[1].unsqueeze(-2)) * (1 - eye)
    out = addr.update_link(*inputs)
    weight = rand(B, H, N, N, seed=8)
    (out * weight).sum().backward()
    (reference * weight).sum().backward()
    assert torch.allclose(out, reference)
    for ours, theirs in zip(inputs, dense):
        assert torch.allclose(ours.grad, theirs.grad)


def test_fused_content_weights_match_composed_form():
    inputs = (rand(B, N, W, seed=1) - 0.5, rand(B, H, W, seed=2) - 0.5, 1 + rand(B, H, seed=3, scale=3))
    fused_in = [x.clone().requires_grad_() for x in inputs]
    plain_in = [x.clone().requires_grad_() for x in inputs]
    fused = addr.content_weights(*fused_in)
    plain = torch.softmax(addr.cosine_similarity(*plain_in[:2]) * plain_in[2].unsqueeze(-1), dim=-1)
    weight = rand(B, H, N, seed=4)
    (fused * weight).sum().backward()
    (plain * weight).sum().backward()
    assert torch.allclose(fused, plain)
    for ours, theirs in zip(fused_in, plain_in):
        assert torch.allclose(ours.grad, theirs.grad)


@pytest.mark.parametrize("use_link_grad", [True, False])
def test_temporal_link_step_matches_separate_primitives(use_link_grad):
    inputs = (rand(B, H, N, N, seed=5, scale=0.2), simplex(B, H, N, seed=6), simplex(B, H, N, seed=7),
              simplex(B, R, N, seed=8))
    fused_in = [x.clone().requires_grad_() for x in inputs]
    plain_in = [x.clone().requires_grad_() for x in inputs]
    fused = addr.temporal_link_step(*fused_in)
    link = addr.update_link(*plain_in[:3])
    plain = (link, addr.directional_read_weights(link, plain_in[3], True),
             addr.directional_read_weights(link, plain_in[3], False))
    weights = [rand(*x.shape, seed=20 + i) for i, x in enumerate(plain)]
    if not use_link_grad:  # the last step of a sequence: no gradient reaches the link output
        weights[0] = torch.zeros_like(weights[0])
    for outputs, loss_inputs in ((fused, fused_in), (plain, plain_in)):
        sum((out * w).sum() for out, w in zip(outputs, weights) if w.any()).backward()
    for ours, theirs in zip(fused, plain):
        assert torch.allclose(ours, theirs)
    for ours, theirs in zip(fused_in, plain_in):
        assert torch.allclose(ours.grad, theirs.grad)


# ------------------------------------------------------------------------------------ numerical safety
@pytest.mark.parametrize("strength", [1.0, 1e4])
@pytest.mark.parametrize("zero_memory", [True, False])
def test_content_weights_finite_gradients(strength, zero_memory):
    memory = torch.zeros(B, N, W, dtype=torch.float32) if zero_memory else rand(B, N, W).float()
    memory.requires_grad_()
    keys = (rand(B, H, W, seed=1).float() - 0.5).requires_grad_()
    strengths = torch.full((B, H), strength).requires_grad_()
    weights = addr.content_weights(memory, keys, strengths)
    (weights * rand(B, H, N, seed=2).float()).sum().backward()
    assert torch.isfinite(weights).all()
    for x in (memory, keys, strengths):
        assert torch.isfinite(x.grad).all()


def test_sharpen_and_allocation_finite_gradients_at_zero():
    weights = torch.tensor([[[1.0, 0.0, 0.0]]], requires_grad=True)
    gamma = torch.tensor([[3.0]], requires_grad=True)
    usage = torch.zeros(1, 3, requires_grad=True)
    (addr.sharpen(weights, gamma).sum() + addr.allocation_weights(usage).pow(2).sum()).backward()
    for x in (weights, gamma, usage):
        assert torch.isfinite(x.grad).all()


def test_sharpen_keeps_the_mass_of_spread_weights_at_large_gamma():
    # on w~ itself sum(w~^gamma) = 0.5^20 + 0.3^20 + 0.2^20 = 9.5e-7, comparable to eps: the old formula kept 49%
    spread = torch.zeros(1, 1, 128, dtype=torch.float32)
    spread[..., :3] = torch.tensor([0.5, 0.3, 0.2])
    out = addr.sharpen(spread, torch.tensor([[20.0]]))
    ratio = (0.3 / 0.5) ** 20  # 3.66e-5: w(1) / w(0)
    expected = torch.zeros(1, 1, 128)
    expected[..., :3] = torch.tensor([1.0, ratio, (0.2 / 0.5) ** 20]) / (1 + ratio + (0.2 / 0.5) ** 20)
    assert torch.allclose(out, expected, atol=1e-7) and abs(float(out.sum()) - 1.0) < 2e-6  # eps / (1 + eps)
    uniform = addr.sharpen(torch.full((1, 1, 128), 1 / 128), torch.tensor([[10.0]]))  # old: mass 1e-13
    assert torch.allclose(uniform, torch.full((1, 1, 128), 1 / 128), atol=1e-7)
    assert torch.equal(addr.sharpen(torch.zeros(1, 1, 4), torch.tensor([[3.0]])), torch.zeros(1, 1, 4))


def test_sharpen_gradcheck_float64():
    gen = torch.Generator().manual_seed(0)
    weights = torch.rand(2, 3, 5, generator=gen, dtype=torch.float64).requires_grad_()
    gamma = (1 + 4 * torch.rand(2, 3, generator=gen, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda w, g: addr.sharpen(w, g, eps=0.0), (weights, gamma))
