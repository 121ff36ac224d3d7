"""DNC improvements (``clmem.memory.dnc_improved``): masked content addressing, de-allocation erase, link sharpness
(Csordás & Schmidhuber 2019), layer-normalised controller and bypass dropout (rsDNC, Franke et al. 2018).

Hand-computed values at B=2, N=5, W=3, R=4; gradcheck in float64; invariants of a DNC with every option on
(weights sum <= 1, link diagonal 0, usage in [0, 1]); the options run the pure-torch step, never the C kernels."""

import math

import pytest
import torch
from torch.autograd import gradcheck

from clmem.memory import DNCCore, _native_dnc as native, _native_step as native_step, addressing as addr
from clmem.memory.cores import DNCCoreConfig
from clmem.memory.dnc import DNCMemory, DNCState
from clmem.memory.dnc_improved import (LayerNormController, erase_freed, masked_content_weights,
                                       sharpen_directional)

F64 = torch.float64
B, N, W, R = 2, 5, 3, 4
ALL = dict(masked_content=True, dealloc_erase=True, link_sharpness=True)


def softmax(logits):
    exps = [math.exp(v) for v in logits]
    return [e / sum(exps) for e in exps]


# ------------------------------------------------------------------------------------- masked content
def content_case():
    row = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 0, 0]]
    memory = torch.tensor([row, [[2 * v for v in r] for r in row]], dtype=F64)  # batch 1: memory x 2
    keys = torch.tensor([[1, 1, 1], [0, 0, 1], [3, -1, 2], [2, 5, 5]], dtype=F64).expand(B, R, W)
    masks = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0], [1, 0, 0]], dtype=F64).expand(B, R, W)
    strengths = torch.tensor([1.0, 2.0, 1.0, 1.0], dtype=F64).expand(B, R)
    return memory, keys, strengths, masks


def test_masked_content_hand_computed():
    memory, keys, strengths, masks = content_case()
    got = masked_content_weights(memory, keys, strengths, masks)
    s = 1 / math.sqrt(2)
    expected = [softmax([s, s, 0, 1, 0]),  # key (1,1,.) vs rows with the third field masked out
                softmax([0, 0, 2, 0, 0]),  # no mask: only row 2 matches (0,0,1), strength 2
                [0.2] * 5,  # everything masked: all similarities 0, uniform
                softmax([1, 0, 0, 1, 0])]  # only the first field: rows 0 and 3 match the key's sign
    for b in range(B):  # cosine is scale-free: batch 1 (memory x 2) gives the same weights
        assert torch.allclose(got[b], torch.tensor(expected, dtype=F64), atol=1e-5)
    assert torch.allclose(got.sum(-1), torch.ones(B, R, dtype=F64))


def test_masked_content_with_all_ones_mask_is_content_addressing():
    gen = torch.Generator().manual_seed(0)
    memory, keys = torch.randn(B, N, W, generator=gen, dtype=F64), torch.randn(B, R, W, generator=gen, dtype=F64)
    strengths = 1 + torch.rand(B, R, generator=gen, dtype=F64) * 5
    plain = addr.content_weights(memory, keys, strengths)
    masked = masked_content_weights(memory, keys, strengths, torch.ones(B, R, W, dtype=F64))
    assert torch.allclose(plain, masked, atol=1e-12)


def test_masked_content_gradcheck():
    gen = torch.Generator().manual_seed(1)
    args = (torch.randn(B, N, W, generator=gen, dtype=F64), torch.randn(B, R, W, generator=gen, dtype=F64),
            1 + torch.rand(B, R, generator=gen, dtype=F64) * 3, torch.rand(B, R, W, generator=gen, dtype=F64))
    assert gradcheck(masked_content_weights, tuple(a.requires_grad_() for a in args))


# -------------------------------------------------------------------------------------- dealloc erase
def erase_case():
    memory = torch.stack([torch.ones(N, W, dtype=F64), 2 * torch.ones(N, W, dtype=F64)])
    free = torch.tensor([[1.0, 0.5, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]], dtype=F64)
    reads = torch.zeros(B, R, N, dtype=F64)
    reads[:, 0] = torch.tensor([0.5, 0, 0, 0, 0.5], dtype=F64)
    reads[:, 1] = torch.tensor([0, 1.0, 0, 0, 0], dtype=F64)
    reads[:, 2] = torch.tensor([1.0, 0, 0, 0, 0], dtype=F64)  # free gate 0: no effect
    reads[:, 3] = torch.tensor([0, 0, 0.25, 0, 0], dtype=F64)
    return memory, free, reads


def test_erase_freed_hand_computed():
    memory, free, reads = erase_case()
    got = erase_freed(memory, free, reads)
    retention = torch.tensor([0.5, 0.5, 0.75, 1.0, 0.5], dtype=F64)  # (1 - 1*.5), (1 - .5*1), (1 - 1*.25), 1, .5
    assert torch.allclose(got[0], retention[:, None].expand(N, W))
    assert torch.equal(got[1], memory[1])  # batch 1: every free gate 0, nothing erased


def test_erase_freed_uses_the_usage_retention():
    memory, free, reads = erase_case()  # usage 1 and no write: u_t is the retention psi itself
    psi = addr.update_usage(torch.ones(B, N, dtype=F64), torch.zeros(B, 1, N, dtype=F64), free, reads)
    assert torch.allclose(erase_freed(torch.ones(B, N, W, dtype=F64), free, reads), psi[..., None].expand(B, N, W))


def test_erase_freed_gradcheck():
    gen = torch.Generator().manual_seed(2)
    args = (torch.randn(B, N, W, generator=gen, dtype=F64), torch.rand(B, R, generator=gen, dtype=F64),
            torch.softmax(torch.randn(B, R, N, generator=gen, dtype=F64), -1))
    assert gradcheck(erase_freed, tuple(a.requires_grad_() for a in args))


# ------------------------------------------------------------------------------------- link sharpness
def test_sharpen_directional_hand_computed():
    d = torch.zeros(B, R, 1, N, dtype=F64)
    d[0, 0, 0, :3] = torch.tensor([0.5, 0.25, 0.25], dtype=F64)  # s=2: (.25, .0625, .0625)/.375, mass 1
    d[0, 1, 0, :2] = torch.tensor([0.4, 0.2], dtype=F64)  # s=2: (.16, .04)/.2 * mass .6
    d[0, 2, 0, :2] = torch.tensor([0.2, 0.2], dtype=F64)  # ties stay ties whatever s
    d[1, 0, 0] = torch.tensor([0.1, 0.2, 0.3, 0.1, 0.2], dtype=F64)  # s=1: unchanged
    d[1, 1, 0, :2] = torch.tensor([1e-4, 5e-5], dtype=F64)  # a weak link, s=4: (1, 1/16)/(17/16) * 1.5e-4
    s = torch.tensor([[2.0, 2.0, 3.0, 5.0], [1.0, 4.0, 4.0, 4.0]], dtype=F64).unsqueeze(-1)
    got = sharpen_directional(d, s)
    expected = torch.zeros_like(d)
    expected[0, 0, 0, :3] = torch.tensor([2 / 3, 1 / 6, 1 / 6], dtype=F64)
    expected[0, 1, 0, :2] = torch.tensor([0.48, 0.12], dtype=F64)
    expected[0, 2, 0, :2] = torch.tensor([0.2, 0.2], dtype=F64)
    expected[1, 0, 0] = d[1, 0, 0]
    expected[1, 1, 0, :2] = torch.tensor([1.5e-4 * 16 / 17, 1.5e-4 / 17], dtype=F64)
    assert torch.allclose(got, expected, atol=1e-12, rtol=1e-5)  # rows 0[3] and 1[2:] are empty: they stay 0
    assert torch.allclose(got.sum(-1), d.sum(-1), atol=1e-5)


def test_sharpen_directional_gradcheck_and_empty_link():
    gen = torch.Generator().manual_seed(3)
    d = (torch.softmax(torch.randn(B, R, 1, N, generator=gen, dtype=F64), -1) * 0.8).requires_grad_()
    s = (1 + torch.rand(B, R, 1, generator=gen, dtype=F64) * 2).requires_grad_()
    assert gradcheck(sharpen_directional, (d, s))
    zero, s2 = torch.zeros(B, R, 1, N, dtype=F64, requires_grad=True), s.detach().clone().requires_grad_()
    sharpen_directional(zero, s2).sum().backward()
    assert torch.isfinite(zero.grad).all() and torch.isfinite(s2.grad).all()


# ------------------------------------------------------------------------------------- whole DNC step
def random_state(memory: DNCMemory, seed: int) -> DNCState:
    gen = torch.Generator().manual_seed(seed)

    def simplex(*shape, scale=0.9):
        return torch.softmax(torch.randn(*shape, generator=gen, dtype=F64) * 2, -1) * scale

    link = simplex(B, 1, N, N, scale=0.3) * (1 - torch.eye(N, dtype=F64))
    return DNCState(torch.randn(B, N, W, generator=gen, dtype=F64), simplex(B, R, N), simplex(B, 1, N),
                    torch.rand(B, N, generator=gen, dtype=F64), link, simplex(B, 1, N, scale=0.7))


def test_interface_size_grows_by_the_option_fields():
    plain = DNCMemory(memory_size=N, word_size=W, num_reads=R).interface_size
    assert DNCMemory(memory_size=N, word_size=W, num_reads=R, masked_content=True).interface_size == plain + (R + 1) * W
    assert DNCMemory(memory_size=N, word_size=W, num_reads=R, link_sharpness=True).interface_size == plain + 2 * R
    assert DNCMemory(memory_size=N, word_size=W, num_reads=R, dealloc_erase=True).interface_size == plain


def test_improved_step_gradcheck():
    memory = DNCMemory(memory_size=N, word_size=W, num_reads=R, **ALL)
    state = random_state(memory, 4)
    vector = torch.randn(B, memory.interface_size, generator=torch.Generator().manual_seed(5), dtype=F64)

    def step(v, m, rw):
        read_words, new = memory.step(memory.parse_interface(v), state._replace(memory=m, read_weights=rw))
        return read_words, new.memory, new.read_weights

    assert gradcheck(step, (vector.requires_grad_(), state.memory.clone().requires_grad_(),
                            state.read_weights.clone().requires_grad_()))


def test_improved_dnc_invariants_over_an_unroll():
    torch.manual_seed(0)
    core = DNCCore(input_size=3, output_size=2, hidden_size=8, memory_size=N, word_size=W, num_reads=R,
                   layer_norm=True, bypass_dropout=0.2, **ALL).double()
    state = core.initial_state(B, dtype=F64)
    for t in range(12):
        _, state = core.step(torch.randn(B, 3, dtype=F64) * 3, state)
        m = state.memory_state
        assert (m.read_weights.sum(-1) <= 1 + 1e-9).all() and (m.read_weights >= 0).all()
        assert (m.write_weights.sum(-1) <= 1 + 1e-9).all() and (m.precedence.sum(-1) <= 1 + 1e-9).all()
        assert torch.equal(m.link.diagonal(dim1=-2, dim2=-1), torch.zeros(B, 1, N, dtype=F64))
        assert (m.link >= 0).all() and (m.link.sum(-1) <= 1 + 1e-9).all() and (m.link.sum(-2) <= 1 + 1e-9).all()
        assert ((m.usage >= 0) & (m.usage <= 1)).all()


@pytest.mark.parametrize("options", [dict(masked_content=True), dict(dealloc_erase=True), dict(link_sharpness=True)])
def test_options_run_the_pure_torch_path(monkeypatch, options):
    def refuse(*args, **kwargs):
        raise AssertionError("a dnc_improved option reached the C kernels")

    for node in (native.Activate, native.PreLink, native.PostLink, native_step.DNCStep):
        monkeypatch.setattr(node, "apply", refuse)
    torch.manual_seed(1)
    core = DNCCore(input_size=3, output_size=2, hidden_size=8, memory_size=N, word_size=W, num_reads=R, **options)
    y, _ = core(torch.randn(B, 6, 3))
    y.sum().backward()
    assert torch.isfinite(y).all()
    assert all(torch.isfinite(p.grad).all() for p in core.parameters() if p.grad is not None)


@pytest.mark.skipif(native.kernels() is None, reason="no C compiler: the kernels are optional")
def test_plain_dnc_still_uses_the_c_kernels(monkeypatch):
    calls = []
    original = native_step.DNCStep.apply
    monkeypatch.setattr(native_step.DNCStep, "apply", lambda *a: calls.append(1) or original(*a))
    core = DNCCore(input_size=3, output_size=2, hidden_size=8, memory_size=N, word_size=W, num_reads=R,
                   layer_norm=True, bypass_dropout=0.3)  # controller-side options keep the kernels
    core(torch.randn(B, 4, 3))[0].sum().backward()
    assert len(calls) == 4


# -------------------------------------------------------------------------------- rsDNC controller side
def test_layer_norm_lstm_hand_computed():
    ctrl = LayerNormController(input_size=2, hidden_size=3).double()
    with torch.no_grad():  # zero maps: the gates are the bias (i=0, f=1, g=0, o=0)
        ctrl.cell.input_map.weight.zero_(), ctrl.cell.hidden_map.weight.zero_()
    state = ctrl.initial_state(B, dtype=F64)._replace(cell=torch.tensor([[1.0, 2.0, 3.0]] * B, dtype=F64))
    out, new = ctrl(torch.randn(B, 2, dtype=F64), state)
    sig1 = 1 / (1 + math.exp(-1))
    assert torch.allclose(new.cell, sig1 * torch.tensor([[1.0, 2.0, 3.0]] * B, dtype=F64))
    z = math.sqrt(1.5)  # LN(c') of an arithmetic row is (-sqrt(3/2), 0, sqrt(3/2)); h' = 0.5 tanh(.)
    assert torch.allclose(out, torch.tensor([[-0.5 * math.tanh(z), 0.0, 0.5 * math.tanh(z)]] * B, dtype=F64),
                          atol=1e-5)


def test_bypass_dropout_only_touches_the_bypass_in_training():
    torch.manual_seed(2)
    core = DNCCore(input_size=3, output_size=4, hidden_size=16, memory_size=N, word_size=W, num_reads=R,
                   bypass_dropout=0.5, clip_value=None)
    x = torch.randn(B, 5, 3)
    y_train, s_train = core.train()(x)
    y_eval, s_eval = core.eval()(x)
    assert torch.equal(s_train.read_words, s_eval.read_words)  # the memory path sees the whole controller output
    assert not torch.allclose(y_train, y_eval)
    with torch.no_grad():
        core.output_layer.weight[:, :16] = 0.0  # no bypass weights: dropout can no longer change the output
    assert torch.allclose(core.train()(x)[0], core.eval()(x)[0], atol=1e-6)


@pytest.mark.parametrize("field, value", [("masked_content", "yes"), ("bypass_dropout", 1.0),
                                          ("layer_norm", 1), ("link_sharpness", None)])
def test_bad_option_is_one_line_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"^DNCCoreConfig\.{field}: expected") as info:
        DNCCoreConfig(input_size=3, output_size=2, **{field: value})
    assert "\n" not in str(info.value)


def test_registry_options_build_dnc_and_sparse_dnc():
    from clmem.learners.registry import SEQUENCE_LEARNERS
    from clmem.learners.sequence import make_sequence_learner

    assert {"masked_content", "dealloc_erase", "link_sharpness", "layer_norm", "bypass_dropout"} <= set(
        SEQUENCE_LEARNERS["dnc"])
    assert {"layer_norm", "bypass_dropout"} <= set(SEQUENCE_LEARNERS["sparse_dnc"])
    dnc = make_sequence_learner("dnc", 3, 2, hidden_size=8, memory_size=N, word_size=W, num_reads=R,
                                layer_norm=True, **ALL)
    assert isinstance(dnc.core.controller, LayerNormController) and dnc.core.memory.config.masked_content
    sparse = make_sequence_learner("sparse_dnc", 3, 2, hidden_size=8, memory_size=8, word_size=W, layer_norm=True,
                                   bypass_dropout=0.1)
    assert isinstance(sparse.core.controller, LayerNormController)
    assert sparse(torch.randn(B, 3, 3)).shape == (B, 3, 2)
