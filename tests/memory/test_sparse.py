"""Sparse Access Memory: dense equivalence at K = N, incremental index, sparse gradients, gradcheck, invariants."""

from __future__ import annotations

import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("faiss")

from clmem.memory.sparse import (  # noqa: E402
    SparseMemory,
    SparseMemoryConfig,
    dense_initial_state,
    dense_memory_step,
    parse_interface,
)

B, N, W, R, H, K = 2, 7, 3, 2, 1, 4


def _interfaces(cfg: SparseMemoryConfig, steps: int, seed: int, dtype=torch.float64, scale: float = 2.0):
    gen = torch.Generator().manual_seed(seed)
    raw = torch.randn(steps, B, cfg.interface_size, generator=gen, dtype=dtype) * scale
    return [parse_interface(raw[t], cfg) for t in range(steps)]


def _memory(seed: int, dtype=torch.float64, requires_grad: bool = False) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(B, N, W, generator=gen, dtype=dtype).requires_grad_(requires_grad)


@pytest.mark.parametrize(("heads", "zero_init"), [(1, False), (2, False), (1, True)])
def test_k_equal_n_matches_dense_reference(heads, zero_init):
    cfg = SparseMemoryConfig(memory_size=N, word_size=W, num_reads=R, num_writes=heads, k_neighbours=N)
    memory = SparseMemory(cfg)
    m0 = torch.zeros(B, N, W, dtype=torch.float64) if zero_init else _memory(0)
    sparse_state = memory.initial_state(B, dtype=torch.float64) if zero_init else memory.initial_state(B, memory=m0)
    dense_state = dense_initial_state(m0, R)
    for interface in _interfaces(cfg, steps=5, seed=1):
        sparse_reads, sparse_state = memory.step(interface, sparse_state)
        dense_reads, dense_state = dense_memory_step(interface, dense_state, cfg)
        torch.testing.assert_close(sparse_reads, dense_reads)
        torch.testing.assert_close(SparseMemory.dense_read_weights(sparse_state), dense_state.read_weights)
        torch.testing.assert_close(sparse_state.store.memory, dense_state.memory)
        assert torch.equal(sparse_state.store.usage, dense_state.usage)


def test_k_equal_n_gradients_match_dense_reference():
    cfg = SparseMemoryConfig(memory_size=N, word_size=W, num_reads=R, num_writes=2, k_neighbours=N)
    memory = SparseMemory(cfg)
    gen = torch.Generator().manual_seed(18)
    raw = torch.randn(4, B, cfg.interface_size, generator=gen, dtype=torch.float64)
    grads = []
    for dense in (False, True):
        m0, vectors = _memory(19, requires_grad=True), raw.clone().requires_grad_(True)
        state = dense_initial_state(m0, R) if dense else memory.initial_state(B, memory=m0)
        total = 0.0
        for t in range(4):
            interface = parse_interface(vectors[t], cfg)
            reads, state = dense_memory_step(interface, state, cfg) if dense else memory.step(interface, state)
            total = total + (reads * torch.linspace(-1, 1, W, dtype=torch.float64)).sum()
        grads.append(torch.autograd.grad(total, (m0, vectors)))
    for sparse_grad, dense_grad in zip(*grads):
        torch.testing.assert_close(sparse_grad, dense_grad)


def test_index_is_updated_incrementally_and_finds_new_row():
    cfg = SparseMemoryConfig(memory_size=N, word_size=W, num_reads=R, k_neighbours=K)
    memory = SparseMemory(cfg)
    state = memory.initial_state(B, memory=_memory(2))
    for interface in _interfaces(cfg, steps=3, seed=3):
        _, state = memory.step(interface, state)
    for b, index in enumerate(state.store.indexes):
        assert index.n_builds == 1 and index.ntotal == N
        assert 0 < index.n_updated_rows <= 3 * (R * K + 1)
        written = torch.unique(state.write_indices[b])
        for slot in written.tolist():  # each written row is its own nearest neighbour in the index
            query = state.store.memory[b, slot].unsqueeze(0).numpy()
            if query.any():
                scores = torch.nn.functional.cosine_similarity(state.store.memory[b], state.store.memory[b, slot])
                top = index.search(query, 1)[0, 0]
                assert scores[top] == pytest.approx(1.0, abs=1e-5)


def test_slot_index_ranks_implicit_zero_rows_at_cosine_zero():
    from clmem.memory.sparse_index import SlotIndex

    index = SlotIndex(dim=W)
    index.build(None, size=N)
    assert index.ntotal == 0 and index.size == N
    query = torch.tensor([[1.0, 0.0, 0.0]]).numpy()
    assert index.search(query, 3).tolist() == [[0, 1, 2]]  # ties among zero rows: lowest slots first
    index.update(torch.tensor([5, 1]).numpy(), torch.tensor([[2.0, 0.0, 0.0], [-1.0, 0.0, 0.0]]).numpy())
    assert index.ntotal == 2 and index.n_updated_rows == 2
    assert index.search(query, 3).tolist() == [[5, 0, 2]]  # positive, then zero rows, before the negative row
    assert index.search(query, N).tolist() == [[5, 0, 2, 3, 4, 6, 1]]
    index.clear()
    assert index.ntotal == 0 and index.search(query, 2).tolist() == [[0, 1]]


def test_gradients_reach_only_touched_rows():
    cfg = SparseMemoryConfig(memory_size=N, word_size=W, num_reads=1, k_neighbours=2)
    memory = SparseMemory(cfg)
    m0 = _memory(4, requires_grad=True)
    gen = torch.Generator().manual_seed(5)
    raw = torch.randn(B, cfg.interface_size, generator=gen, dtype=torch.float64)
    reads, state = memory.step(parse_interface(raw, cfg), memory.initial_state(B, memory=m0))
    reads.square().sum().backward()
    touched = torch.zeros(B, N, dtype=torch.bool)
    touched.scatter_(1, state.read_indices.reshape(B, -1), True)
    touched.scatter_(1, state.write_indices, True)
    assert (~touched).any()
    assert torch.all(m0.grad[~touched] == 0)
    assert m0.grad[touched].abs().sum() > 0


def test_gradcheck_one_step():
    cfg = SparseMemoryConfig(memory_size=N, word_size=W, num_reads=R, num_writes=2, k_neighbours=K)
    memory = SparseMemory(cfg)
    gen = torch.Generator().manual_seed(6)
    m0 = torch.randn(B, N, W, generator=gen, dtype=torch.float64, requires_grad=True)
    raw = torch.randn(B, cfg.interface_size, generator=gen, dtype=torch.float64, requires_grad=True)
    warmup = _interfaces(cfg, steps=1, seed=7)[0]

    def two_steps(m, vector):  # the second step writes to the slots read by the first one
        _, state = memory.step(warmup, memory.initial_state(B, memory=m))
        reads, _ = memory.step(parse_interface(vector, cfg), state)
        return reads

    assert torch.autograd.gradcheck(two_steps, (m0, raw), eps=1e-6, atol=1e-5, fast_mode=True)


def test_weight_invariants():
    cfg = SparseMemoryConfig(memory_size=N, word_size=W, num_reads=R, num_writes=2, k_neighbours=K)
    memory = SparseMemory(cfg)
    state = memory.initial_state(B, dtype=torch.float64)
    for interface in _interfaces(cfg, steps=4, seed=8, scale=5.0):
        _, state = memory.step(interface, state)
        for weights in (SparseMemory.dense_read_weights(state), SparseMemory.dense_write_weights(state)):
            assert torch.all(weights >= 0)
            assert torch.all(weights.sum(-1) <= 1 + 1e-12)
        assert torch.all(state.read_weights >= 0) and torch.all(state.write_weights >= 0)
        assert torch.all(state.store.usage <= state.time)


def test_stale_state_and_detach():
    cfg = SparseMemoryConfig(memory_size=N, word_size=W, num_reads=R, k_neighbours=K)
    memory = SparseMemory(cfg)
    first = memory.initial_state(B, memory=_memory(9, requires_grad=True))
    interfaces = _interfaces(cfg, steps=2, seed=10)
    _, second = memory.step(interfaces[0], first)
    with pytest.raises(RuntimeError, match="stale state"):
        memory.step(interfaces[1], first)
    detached = SparseMemory.detach_state(second)
    assert detached.pool.shape[0] == 0 and not detached.read_words.requires_grad
    before = detached.store.memory.clone()
    reads, _ = memory.step(interfaces[1], detached)
    assert reads.shape == (B, R, W)
    assert not torch.equal(before, detached.store.memory)


def test_recycled_buffers_restart_from_zero_memory():
    cfg = SparseMemoryConfig(memory_size=N, word_size=W, num_reads=R, k_neighbours=K, recycle_buffers=True)
    memory = SparseMemory(cfg)
    interfaces = _interfaces(cfg, steps=3, seed=12)
    reads_per_run, finals = [], []
    for _ in range(2):
        state = memory.initial_state(B, dtype=torch.float64)
        assert torch.all(state.store.memory == 0) and torch.all(state.store.usage == 0)
        reads = []
        for interface in interfaces:
            read, state = memory.step(interface, state)
            reads.append(read)
        reads_per_run.append(torch.stack(reads))
        finals.append(state)
    assert finals[0].store.indexes is finals[1].store.indexes  # recycled, not rebuilt
    assert all(index.n_builds == 1 and index.ntotal == N for index in finals[1].store.indexes)
    torch.testing.assert_close(reads_per_run[0], reads_per_run[1])
    with pytest.raises(RuntimeError, match="stale state"):
        memory.step(interfaces[0], finals[0])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"memory_size": 0}, "memory_size"),
        ({"word_size": -1}, "word_size"),
        ({"num_reads": 1.5}, "num_reads"),
        ({"k_neighbours": N + 1}, "k_neighbours"),
        ({"usage_threshold": 0.0}, "usage_threshold"),
        ({"nlist": N + 1}, "nlist"),
        ({"num_writes": True}, "num_writes"),
        ({"recycle_buffers": 1}, "recycle_buffers"),
    ],
)
def test_config_validation(kwargs, field):
    args = {"memory_size": N, "word_size": W, "num_reads": R, **kwargs}
    with pytest.raises(ValueError, match=rf"^SparseMemoryConfig\.{field}: "):
        SparseMemoryConfig(**args)


def test_missing_faiss_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    memory = SparseMemory(SparseMemoryConfig(memory_size=N, word_size=W, num_reads=R, k_neighbours=K))
    with pytest.raises(ImportError, match=r"^faiss is not installed: pip install 'clmem\[cpu\]'"):
        memory.initial_state(B)


def test_approximate_index_for_large_memory():
    cfg = SparseMemoryConfig(memory_size=5000, word_size=W, num_reads=R, k_neighbours=K, nprobe=4)
    assert cfg.resolved_nlist == 71
    memory = SparseMemory(cfg)
    state = memory.initial_state(1)
    interfaces = _interfaces(SparseMemoryConfig(memory_size=N, word_size=W, num_reads=R), steps=3, seed=11,
                             dtype=torch.float32)
    written = set()
    for interface in interfaces:
        first_row = {f: v[:1] for f, v in interface._asdict().items() if v is not None}
        _, state = memory.step(interface._replace(**first_row), state)
        written |= set(state.write_indices[0].tolist())
    index = state.store.indexes[0]
    assert index.size == 5000 and index.n_builds == 1  # zero rows are implicit: FAISS holds the written rows only
    assert index.ntotal == len(written) <= 3 * (R * K + 1)
    assert state.read_indices.shape == (1, R, K)
    assert torch.all(state.read_indices >= 0) and torch.all(state.read_indices < 5000)


def _core(**kwargs):
    from clmem.memory.sparse import SparseDNCCore

    torch.manual_seed(13)
    args = dict(input_size=3, output_size=2, hidden_size=5, memory_size=N, word_size=W, num_reads=R,
                k_neighbours=K)
    return SparseDNCCore(**{**args, **kwargs})


def test_sparse_dnc_core_gradcheck_one_step():
    core = _core().double()
    gen = torch.Generator().manual_seed(14)
    x = torch.randn(B, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    m0 = torch.randn(B, N, W, generator=gen, dtype=torch.float64, requires_grad=True)

    def one_step(x_t, memory0):
        state = core.initial_state(B, dtype=torch.float64)
        state = state._replace(memory_state=core.memory.initial_state(B, memory=memory0))
        y, _ = core.step(x_t, state)
        return y

    assert torch.autograd.gradcheck(one_step, (x, m0), eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("use_links", [False, True])
def test_sparse_dnc_core_forward_trace_and_detach(use_links):
    core = _core(controller="feedforward", use_links=use_links)
    x = torch.randn(B, 4, 3, generator=torch.Generator().manual_seed(15))
    y, state, trace = core(x, return_trace=True)
    assert y.shape == (B, 4, 2)
    assert trace.read_weights.shape == (B, 4, R, N) and trace.write_weights.shape == (B, 4, 1, N)
    assert torch.all(trace.read_weights.sum(-1) <= 1 + 1e-6)
    y.square().sum().backward()
    assert all(p.grad is not None for p in core.parameters())
    detached = core.detach_state(state)
    assert not detached.read_words.requires_grad and detached.memory_state.pool.shape[0] == 0
    y2, _ = core(x, detached)
    assert y2.shape == (B, 4, 2)


def test_sparse_dnc_core_config_validation():
    from clmem.memory.sparse import SparseDNCCoreConfig

    with pytest.raises(ValueError, match=r"^SparseDNCCoreConfig\.k_neighbours: "):
        SparseDNCCoreConfig(input_size=3, output_size=2, memory_size=N, word_size=W, num_reads=R, k_neighbours=N + 1)
    with pytest.raises(ValueError, match=r"^SparseDNCCoreConfig\.checkpoint_every: "):
        SparseDNCCoreConfig(input_size=3, output_size=2, memory_size=N, word_size=W, num_reads=R, checkpoint_every=2)


def _link_interface(key, write, alpha, modes, strength=100.0):
    from clmem.memory.sparse import SparseInterface

    f64 = dict(dtype=torch.float64)
    return SparseInterface(
        read_keys=torch.tensor(key, **f64).expand(B, 1, W), read_strengths=torch.full((B, 1), strength, **f64),
        write_vectors=torch.tensor(write, **f64).expand(B, 1, W), write_gates=torch.full((B, 1), alpha, **f64),
        interpolation_gates=torch.zeros(B, 1, **f64), read_modes=torch.tensor(modes, **f64).expand(B, 1, 3))


@pytest.mark.parametrize(("mode", "start", "expected"), [("forward", 0, 1), ("backward", 2, 1)])
def test_sparse_links_follow_write_order(mode, start, expected):
    cfg = SparseMemoryConfig(memory_size=N, word_size=W, num_reads=1, k_neighbours=K, use_links=True,
                             link_neighbours=2)
    memory = SparseMemory(cfg)
    state = memory.initial_state(B, dtype=torch.float64)
    vectors = torch.eye(W, dtype=torch.float64).tolist()
    content = [0.0, 1.0, 0.0]
    written = []
    for t in range(3):  # write e_t to the least-used slot (alpha = 1, gamma = 0); read e_start at the last step
        key = vectors[start] if t == 2 else [1.0, 1.0, 1.0]
        _, state = memory.step(_link_interface(key, vectors[t], 1.0, content), state)
        written.append(state.write_indices[:, -1])
    modes = [0.0, 0.0, 1.0] if mode == "forward" else [1.0, 0.0, 0.0]
    reads, state = memory.step(_link_interface([1.0, 1.0, 1.0], vectors[0], 0.0, modes), state)
    torch.testing.assert_close(reads[:, 0], torch.tensor(vectors[expected], dtype=torch.float64).expand(B, W),
                               atol=1e-3, rtol=0)
    top = state.read_indices[torch.arange(B), 0, state.read_weights[:, 0].argmax(-1)]
    assert torch.equal(top, written[expected])


def test_sparse_links_invariants():
    cfg = SparseMemoryConfig(memory_size=N, word_size=W, num_reads=R, k_neighbours=K, use_links=True,
                             link_neighbours=3)
    memory = SparseMemory(cfg)
    state = memory.initial_state(B, dtype=torch.float64)
    for interface in _interfaces(cfg, steps=6, seed=16):
        _, state = memory.step(interface, state)
        links = state.store.links
        for values in (links.prev_val, links.next_val, links.prec_val):
            assert torch.all(values >= 0)
        assert torch.all(links.prev_val.sum(-1) <= 1 + 1e-9) and torch.all(links.prec_val.sum(-1) <= 1 + 1e-9)
        self_link = links.prev_idx == torch.arange(N).view(1, N, 1)
        assert torch.all(links.prev_val[self_link] == 0)  # no self-links
        dense_reads = SparseMemory.dense_read_weights(state)
        assert torch.all(dense_reads >= 0) and torch.all(dense_reads.sum(-1) <= 1 + 1e-9)


@settings(max_examples=15, deadline=None)
@given(batch=st.integers(1, 2), slots=st.integers(2, 9), word=st.integers(1, 4), reads=st.integers(1, 3),
       heads=st.integers(1, 2), k=st.integers(1, 9), links=st.booleans(), seed=st.integers(0, 2**16))
def test_sparse_step_invariants_property(batch, slots, word, reads, heads, k, links, seed):
    k, heads = min(k, slots), min(heads, slots)
    cfg = SparseMemoryConfig(memory_size=slots, word_size=word, num_reads=reads, num_writes=heads,
                             k_neighbours=k, use_links=links)
    memory = SparseMemory(cfg)
    state = memory.initial_state(batch, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(3):
        raw = torch.randn(batch, cfg.interface_size, generator=gen, dtype=torch.float64) * 3
        reads_t, state = memory.step(parse_interface(raw, cfg), state)
        assert reads_t.shape == (batch, reads, word) and torch.isfinite(reads_t).all()
        for dense in (SparseMemory.dense_read_weights(state), SparseMemory.dense_write_weights(state)):
            assert torch.all(dense >= 0) and torch.all(dense.sum(-1) <= 1 + 1e-9)
        assert torch.all((state.read_indices >= 0) & (state.read_indices < slots))


@settings(max_examples=25, deadline=None)
@given(values=st.lists(st.floats(0, 1), min_size=1, max_size=8), data=st.data())
def test_merge_top_sums_duplicates_and_keeps_strongest(values, data):
    from clmem.memory.sparse_links import merge_top

    indices = data.draw(st.lists(st.integers(0, 4), min_size=len(values), max_size=len(values)))
    keep = data.draw(st.integers(1, len(values)))
    idx, val = merge_top(torch.tensor([indices]), torch.tensor([values], dtype=torch.float64), keep)
    totals = {}
    for i, v in zip(indices, values):
        totals[i] = totals.get(i, 0.0) + v
    expected = sorted(totals.values(), reverse=True)[:keep]
    assert val[0][: len(expected)].tolist() == pytest.approx(expected)
    assert torch.all(val >= 0)
    kept = [i for i, v in zip(idx[0].tolist(), val[0].tolist()) if v > 0]
    assert len(kept) == len(set(kept))


@pytest.mark.parametrize("count", [1, 2])
def test_store_least_used_matches_full_scan(count):
    from clmem.memory.sparse import SparseStore
    from clmem.memory.sparse_addressing import least_used

    store = SparseStore(torch.zeros(B, 50, W), indexes=[], base=None)
    gen = torch.Generator().manual_seed(17)
    for time in range(1, 40):
        picks = store.least_used(count, window=8)
        assert torch.equal(picks, least_used(store.usage, count))
        touched = torch.cat([picks, torch.randint(0, 50, (B, 3), generator=gen)], dim=1)
        store.usage.scatter_(1, touched, time)  # the picked slots and a few random ones are accessed
    assert store.unused_from is None  # every slot has been used: back to full scans
