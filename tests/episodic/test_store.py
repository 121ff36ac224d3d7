"""Tests of EpisodicStore: search correctness, policies, persistence, state and config validation."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from clmem.episodic import EpisodicStore, EpisodicStoreConfig, StoreFileError
from clmem.episodic import persist


def _data(seed: int, n: int, dim: int) -> torch.Tensor:
    """Seeded standard-normal ``[n, dim]`` embeddings."""
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def _brute_force(base: np.ndarray, queries: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k with numpy (squared L2 or inner product)."""
    if metric == "l2":
        dist = ((queries[:, None, :] - base[None, :, :]) ** 2).sum(-1)
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    else:
        dist = queries @ base.T
        order = np.argsort(-dist, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dist, order, axis=1), order


def _labels_held(store: EpisodicStore) -> np.ndarray:
    """Labels of every held item (used as item tags)."""
    return store.get(store.live_slots()).labels.numpy()


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_flat_search_equals_brute_force(metric: str) -> None:
    store = EpisodicStore(EpisodicStoreConfig(dim=12, capacity=400, metric=metric))
    base, queries = _data(1, 347, 12), _data(2, 23, 12)
    slots = store.add(base, labels=torch.arange(347))
    assert slots.tolist() == list(range(347))
    dist, ids = store.search(queries, 7)
    ref_d, ref_i = _brute_force(base.numpy(), queries.numpy(), 7, metric)
    assert np.array_equal(ids.numpy(), ref_i)
    np.testing.assert_allclose(dist.numpy(), ref_d, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("index", ["ivf", "hnsw"])
def test_approximate_indexes_have_high_recall(index: str, metric: str) -> None:
    cfg = EpisodicStoreConfig(dim=16, capacity=1500, index=index, metric=metric, nlist=8, nprobe=6)
    store = EpisodicStore(cfg)
    base, queries = _data(3, 1213, 16), _data(4, 50, 16)
    for start in range(0, 1213, 200):
        store.add(base[start:start + 200], labels=torch.arange(start, min(start + 200, 1213)))
    _, ids = store.search(queries, 10)
    _, ref = _brute_force(base.numpy(), queries.numpy(), 10, metric)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids.numpy(), ref)])
    assert recall >= 0.9, recall


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_ivf_is_exact_before_training(metric: str) -> None:
    cfg = EpisodicStoreConfig(dim=10, capacity=5000, index="ivf", metric=metric, nlist=64, nprobe=1)
    store = EpisodicStore(cfg)
    base, queries = _data(5, 211, 10), _data(6, 17, 10)
    store.add(base)
    assert len(store) < cfg.ivf_train_size
    _, ids = store.search(queries, 5)
    assert np.array_equal(ids.numpy(), _brute_force(base.numpy(), queries.numpy(), 5, metric)[1])


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("index", ["flat", "ivf", "hnsw"])
def test_get_and_remove(index: str, metric: str) -> None:
    cfg = EpisodicStoreConfig(dim=8, capacity=700, index=index, metric=metric, nlist=4, nprobe=4)
    store = EpisodicStore(cfg)
    base = _data(7, 613, 8)
    inputs = torch.arange(613 * 3, dtype=torch.float32).reshape(613, 3)
    logits = _data(8, 613, 5)
    slots = store.add(base, inputs=inputs, labels=torch.arange(613) % 9, logits=logits, experience=4)
    batch = store.get(slots[[5, 0, 600]])
    assert torch.equal(batch.inputs, inputs[[5, 0, 600]]) and torch.equal(batch.logits, logits[[5, 0, 600]])
    assert batch.labels.tolist() == [5, 0, 600 % 9] and batch.experiences.tolist() == [4, 4, 4]
    assert torch.equal(batch.embeddings, base[[5, 0, 600]])
    gone = torch.arange(0, 613, 2)  # remove half: also exercises the HNSW rebuild
    assert store.remove(gone) == len(gone) and store.remove(gone) == 0
    assert len(store) == 613 - len(gone)
    _, ids = store.search(base[:40], 3)
    assert not np.isin(ids.numpy(), gone.numpy()).any()
    if metric == "l2":  # held vectors still find themselves
        assert (ids[1::2, 0] == torch.arange(1, 40, 2)).all()
    with pytest.raises(KeyError, match="not held"):
        store.get([0])


def test_search_pads_missing_hits() -> None:
    store = EpisodicStore(EpisodicStoreConfig(dim=4, capacity=10))
    store.add(_data(9, 3, 4))
    dist, ids = store.search(_data(10, 2, 4), 5)
    assert (ids[:, 3:] == -1).all() and torch.isinf(dist[:, 3:]).all()


def test_reservoir_inclusion_frequency_is_capacity_over_seen() -> None:
    capacity, stream, trials = 50, 500, 150
    counts = np.zeros(stream)
    for trial in range(trials):
        store = EpisodicStore(EpisodicStoreConfig(dim=2, capacity=capacity, seed=trial))
        for start in range(0, stream, 25):
            store.add(torch.zeros(25, 2), labels=torch.arange(start, start + 25))
        assert len(store) == capacity and store.seen == stream
        counts[_labels_held(store)] += 1
    freq = counts / trials
    expected = capacity / stream
    assert abs(freq[:100].mean() - expected) < 0.02 and abs(freq[-100:].mean() - expected) < 0.02
    assert np.all(np.abs(freq - expected) < 0.12)


def test_class_balanced_policy_keeps_classes_within_one() -> None:
    store = EpisodicStore(EpisodicStoreConfig(dim=3, capacity=53, policy="class_balanced", seed=11))
    rng = np.random.default_rng(12)
    for _ in range(60):
        labels = torch.from_numpy(rng.choice(5, size=37, p=[0.5, 0.2, 0.15, 0.1, 0.05]))
        store.add(torch.randn(37, 3), labels=labels)
    _, counts = np.unique(_labels_held(store), return_counts=True)
    assert len(store) == 53 and len(counts) == 5 and counts.max() - counts.min() <= 1


def test_class_balanced_requires_labels() -> None:
    store = EpisodicStore(EpisodicStoreConfig(dim=3, capacity=8, policy="class_balanced"))
    with pytest.raises(ValueError, match="labels"):
        store.add(torch.randn(4, 3))


def test_payload_schema_is_fixed_by_first_add() -> None:
    store = EpisodicStore(EpisodicStoreConfig(dim=3, capacity=30))
    store.add(torch.randn(4, 3), inputs=torch.randn(4, 2))
    with pytest.raises(ValueError, match="inputs expected"):
        store.add(torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"embeddings: expected shape \(N, 3\)"):
        store.add(torch.randn(4, 5), inputs=torch.randn(4, 2))


def test_sample_is_seeded_and_distinct() -> None:
    store = EpisodicStore(EpisodicStoreConfig(dim=4, capacity=90))
    store.add(_data(13, 71, 4), labels=torch.arange(71))
    first = store.sample(20, torch.Generator().manual_seed(3))
    again = store.sample(20, torch.Generator().manual_seed(3))
    assert torch.equal(first.slot_ids, again.slot_ids) and len(set(first.slot_ids.tolist())) == 20
    assert len(store.sample(500)) == 71


def _filled_store(index: str = "hnsw") -> EpisodicStore:
    """A small store with every payload kind, some replacements and some removals."""
    store = EpisodicStore(EpisodicStoreConfig(dim=6, capacity=120, index=index, nlist=2, nprobe=2, seed=5))
    for step in range(4):
        store.add(_data(20 + step, 41, 6), inputs=_data(30 + step, 41, 2), labels=torch.arange(41) % 3,
                  logits=_data(40 + step, 41, 3), experience=step)
    store.remove([1, 2, 3])
    return store


def _assert_same(a: EpisodicStore, b: EpisodicStore) -> None:
    """Same items, payloads and search results."""
    assert len(a) == len(b) and torch.equal(a.live_slots(), b.live_slots())
    pa, pb = a.get(a.live_slots()), b.get(b.live_slots())
    for name in ("embeddings", "inputs", "labels", "logits", "experiences"):
        assert torch.equal(getattr(pa, name), getattr(pb, name)), name
    queries = _data(99, 9, 6)
    assert torch.equal(a.search(queries, 4)[1], b.search(queries, 4)[1])


@pytest.mark.parametrize("index", ["flat", "ivf", "hnsw"])
def test_state_dict_round_trip_continues_identically(index: str) -> None:
    store = _filled_store(index)
    clone = EpisodicStore(store.config)
    clone.load_state_dict(store.state_dict())
    _assert_same(store, clone)
    more = _data(50, 30, 6)
    extra = {"inputs": torch.zeros(30, 2), "labels": torch.arange(30) % 3, "logits": torch.zeros(30, 3)}
    assert torch.equal(store.add(more, **extra), clone.add(more, **extra))


def test_state_dict_rejects_other_config() -> None:
    other = EpisodicStore(EpisodicStoreConfig(dim=6, capacity=121))
    with pytest.raises(ValueError, match="config.capacity"):
        other.load_state_dict(_filled_store().state_dict())


def test_save_load_round_trip(tmp_path: Path) -> None:
    store = _filled_store()
    store.save(tmp_path / "mem.store")
    _assert_same(store, EpisodicStore.load(tmp_path / "mem.store"))
    assert [p.name for p in tmp_path.iterdir()] == ["mem.store"]


def test_interrupted_save_keeps_previous_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "mem.store"
    store = _filled_store()
    store.save(path)
    before = EpisodicStore.load(path)
    store.add(_data(60, 41, 6), inputs=torch.ones(41, 2), labels=torch.zeros(41, dtype=torch.long),
              logits=torch.ones(41, 3))

    def write_half_then_fail(fh, header, payload):  # noqa: ANN001 - stand-in for the real writer
        fh.write(header + payload[: len(payload) // 2])
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(persist, "_write_all", write_half_then_fail)
    with pytest.raises(OSError, match="simulated"):
        store.save(path)
    _assert_same(before, EpisodicStore.load(path))
    assert [p.name for p in tmp_path.iterdir()] == ["mem.store"]


_KILLED_WRITER = """
import sys, time, torch
from clmem.episodic import EpisodicStore, EpisodicStoreConfig, persist
store = EpisodicStore(EpisodicStoreConfig(dim=6, capacity=64))
store.add(torch.randn(64, 6, generator=torch.Generator().manual_seed(1)))
def slow_half(fh, header, payload):
    fh.write(header + payload[: len(payload) // 2]); fh.flush()
    print("HALF", flush=True); time.sleep(60)
persist._write_all = slow_half
store.save(sys.argv[1])
"""


def test_save_killed_mid_write_leaves_old_copy(tmp_path: Path) -> None:
    path = tmp_path / "mem.store"
    old = EpisodicStore(EpisodicStoreConfig(dim=6, capacity=64))
    old.add(_data(70, 33, 6))
    old.save(path)
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_KILLED_WRITER), str(path)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "HALF"
    finally:
        child.kill()
        child.wait()
    loaded = EpisodicStore.load(path)
    assert len(loaded) == 33 and torch.equal(loaded.get(loaded.live_slots()).embeddings, _data(70, 33, 6))


@pytest.mark.parametrize(("damage", "message"), [
    (lambda raw: raw[:-10], "truncated"),
    (lambda raw: raw[:-5] + bytes([raw[-5] ^ 0xFF]) + raw[-4:], "corrupted"),
    (lambda raw: b"garbage" + raw, "not a clmem episodic store"),
])
def test_damaged_file_gives_one_line_error(tmp_path: Path, damage, message: str) -> None:  # noqa: ANN001
    path = tmp_path / "mem.store"
    _filled_store("flat").save(path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(StoreFileError, match=message) as err:
        EpisodicStore.load(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize(("field", "value"), [
    ("dim", 0), ("capacity", -3), ("capacity", True), ("index", "ivfpq"), ("metric", "cosine"),
    ("policy", "fifo"), ("device", "tpu"), ("nlist", 2.5), ("hnsw_m", 0), ("seed", -1),
])
def test_config_validation_names_the_field(field: str, value: object) -> None:
    kwargs = {"dim": 4, "capacity": 10, field: value}
    with pytest.raises(ValueError, match=rf"^EpisodicStoreConfig\.{field}: expected") as err:
        EpisodicStoreConfig(**kwargs)
    assert "\n" not in str(err.value)


def test_nprobe_above_nlist_is_rejected() -> None:
    with pytest.raises(ValueError, match="EpisodicStoreConfig.nprobe: expected at most nlist=4"):
        EpisodicStoreConfig(dim=4, capacity=10, nlist=4, nprobe=5)


def test_missing_faiss_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ImportError, match=r"pip install 'clmem\[cpu\]'"):
        EpisodicStore(EpisodicStoreConfig(dim=4, capacity=10))


def _faiss_gpu_present() -> bool:
    """True when FAISS has GPU support and sees a GPU."""
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


@pytest.mark.skipif(_faiss_gpu_present(), reason="checks the CPU-only fallback")
def test_device_resolution_without_gpu() -> None:
    assert EpisodicStore(EpisodicStoreConfig(dim=4, capacity=10, device="auto")).device == "cpu"
    with pytest.raises(RuntimeError, match="device='cuda' cannot be honoured") as err:
        EpisodicStore(EpisodicStoreConfig(dim=4, capacity=10, device="cuda"))
    assert "\n" not in str(err.value)


@pytest.mark.gpu
@pytest.mark.skipif(not _faiss_gpu_present(), reason="needs faiss-gpu and a CUDA device")
@pytest.mark.parametrize("index", ["flat", "ivf"])
def test_gpu_search_matches_cpu(index: str) -> None:
    stores = [EpisodicStore(EpisodicStoreConfig(dim=16, capacity=900, index=index, nlist=4, nprobe=4, device=d))
              for d in ("cpu", "cuda")]
    base, queries = _data(80, 817, 16), _data(81, 21, 16)
    for store in stores:
        store.add(base)
        store.remove(torch.arange(0, 817, 5))
        store.add(base[:40])
    assert stores[1].device == "cuda"
    assert torch.equal(stores[0].search(queries, 6)[1], stores[1].search(queries, 6)[1])
