"""EpisodicStore bookkeeping: growing payload arrays, in-place replacement, compacting removal, full-store policies."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

from clmem.episodic import EpisodicStore, EpisodicStoreConfig
from clmem.episodic.payload import PayloadBuffer
from clmem.episodic.sharded import route


def _data(seed: int, n: int, dim: int) -> torch.Tensor:
    """Seeded standard-normal ``[n, dim]`` embeddings."""
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def _check_consistent(store: EpisodicStore, tags: dict[int, int], vectors: dict[int, torch.Tensor]) -> None:
    """Every held slot returns its own payload and embedding, and an l2 search for it finds that slot."""
    live = store.live_slots()
    assert sorted(tags) == live.tolist()
    batch = store.get(live)
    assert batch.labels.tolist() == [tags[s] for s in live.tolist()]
    assert torch.equal(batch.embeddings, torch.stack([vectors[s] for s in live.tolist()]))
    _, ids = store.search(batch.embeddings, 1)
    assert torch.equal(ids[:, 0], live)


def test_payload_arrays_grow_by_doubling_and_keep_rows() -> None:
    buffer = PayloadBuffer(capacity=1000)
    assert buffer.rows == 0 and buffer.experiences.shape == (1000,)  # fixed-size ids span the capacity
    labels = torch.arange(300)
    for start in range(0, 300, 30):
        slots = np.arange(start, start + 30)
        given = {"inputs": labels[slots, None].float() * 2, "labels": labels[slots], "logits": None}
        buffer.check_schema(given)
        buffer.write(slots, np.arange(30), start, given)
    assert 300 <= buffer.rows <= 1000 and buffer.optional["labels"].shape[0] == buffer.rows
    out = buffer.read(np.array([299, 0, 150]), np.zeros((3, 2), dtype=np.float32))
    assert out.labels.tolist() == [299, 0, 150] and out.inputs[:, 0].tolist() == [598.0, 0.0, 300.0]
    assert out.experiences.tolist() == [270, 0, 150]
    buffer.write(np.array([999]), np.array([0]), 7, {"inputs": torch.ones(1, 1), "labels": torch.tensor([5]),
                                                       "logits": None})
    assert buffer.rows == 1000 and buffer.read(np.array([999]), np.zeros((1, 2), np.float32)).labels.tolist() == [5]


@pytest.mark.parametrize("index", ["flat", "ivf", "hnsw"])
def test_replacement_and_removal_keep_ids_payloads_and_vectors_aligned(index: str) -> None:
    cfg = EpisodicStoreConfig(dim=8, capacity=150, index=index, nlist=2, nprobe=2, seed=3)
    store = EpisodicStore(cfg)
    tags: dict[int, int] = {}
    vectors: dict[int, torch.Tensor] = {}
    for step in range(8):  # fills after 3 batches, then the reservoir replaces items in place
        base = _data(step, 50, 8)
        slots = store.add(base, labels=torch.arange(50) + 50 * step)
        for row, slot in enumerate(slots.tolist()):
            if slot >= 0:
                tags[slot], vectors[slot] = 50 * step + row, base[row]
        if step in (3, 5):  # removals leave holes that later batches refill
            gone = torch.arange(step, 150, 7)
            store.remove(gone)
            for slot in gone.tolist():
                tags.pop(slot, None)
        _check_consistent(store, tags, vectors)
    assert store.seen == 400


def test_flat_index_holds_each_vector_once_and_compacts_on_removal() -> None:
    store = EpisodicStore(EpisodicStoreConfig(dim=4, capacity=100))
    store.add(_data(1, 100, 4), labels=torch.arange(100))
    assert store._index.ntotal == 100  # full store: replacements overwrite, no growth
    store.add(_data(2, 60, 4), labels=torch.arange(60))
    assert store._index.ntotal == 100
    store.remove(torch.arange(0, 100, 3))
    assert store._index.ntotal == len(store) == 66
    _, ids = store.search(_data(3, 20, 4), 66)
    assert sorted(ids[0].tolist()) == store.live_slots().tolist()


def test_class_balanced_full_store_replaces_largest_class() -> None:
    store = EpisodicStore(EpisodicStoreConfig(dim=2, capacity=12, policy="class_balanced", seed=1))
    store.add(torch.zeros(12, 2), labels=torch.tensor([0] * 9 + [1] * 3))
    slots = store.add(torch.ones(3, 2), labels=torch.tensor([2, 2, 2]))
    assert (slots >= 0).all()
    labels = store.get(store.live_slots()).labels
    assert torch.bincount(labels).tolist() == [6, 3, 3]
    _, ids = store.search(torch.ones(1, 2), 3)
    assert sorted(ids[0].tolist()) == sorted(slots.tolist())


def test_format_1_state_loads() -> None:
    """A state written before the index held the only copy of the embeddings (IndexIDMap + payload copy)."""
    store = EpisodicStore(EpisodicStoreConfig(dim=5, capacity=40))
    store.add(_data(4, 40, 5), labels=torch.arange(40))
    store.remove([3, 7])
    state = store.state_dict()
    live = store.live_slots()
    old = faiss.IndexIDMap(faiss.IndexFlatL2(5))
    old.add_with_ids(store.get(live).embeddings.numpy(), live.numpy())
    state.update(format="clmem.episodic.store/1", index={"index": torch.from_numpy(faiss.serialize_index(old))})
    state["payload"] = {**state["payload"], "embeddings": store.get(live).embeddings}
    clone = EpisodicStore(store.config)
    clone.load_state_dict(state)
    queries = _data(5, 6, 5)
    assert torch.equal(clone.search(queries, 4)[1], store.search(queries, 4)[1])
    assert torch.equal(clone.get(live).labels, store.get(live).labels)


@pytest.mark.parametrize("rows,shards,cursor", [(10, 3, 0), (7, 4, 2), (2, 4, 3), (12, 2, 1)])
def test_slice_routing_gives_round_robin_counts(rows: int, shards: int, cursor: int) -> None:
    parts, nxt = route(rows, shards, cursor)
    counts = np.bincount([s for s, sl in parts for _ in range(sl.start, sl.stop)], minlength=shards)
    robin = np.bincount((cursor + np.arange(rows)) % shards, minlength=shards)
    assert counts.tolist() == robin.tolist() and nxt == (cursor + rows) % shards
    assert [sl.start for _, sl in parts] == sorted(sl.start for _, sl in parts) and parts[-1][1].stop == rows
