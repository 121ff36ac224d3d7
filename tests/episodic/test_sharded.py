"""Tests of ShardedEpisodicStore: exact merged search, payload routing, persistence, Ray shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from clmem.episodic import EpisodicStore, EpisodicStoreConfig
from clmem.episodic.sharded import ShardedEpisodicStore


def _data(seed: int, n: int, dim: int) -> torch.Tensor:
    """Seeded standard-normal ``[n, dim]`` embeddings."""
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def _assert_same_topk(sharded: ShardedEpisodicStore, single: EpisodicStore, queries: torch.Tensor, k: int) -> None:
    """The sharded top-k is the unsharded top-k (compared through the items' labels)."""
    d_sh, i_sh = sharded.search(queries, k)
    d_one, i_one = single.search(queries, k)
    assert torch.equal(sharded.get(i_sh.reshape(-1)).labels, single.get(i_one.reshape(-1)).labels)
    torch.testing.assert_close(d_sh, d_one, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_local_sharded_search_equals_unsharded(metric: str) -> None:
    cfg = EpisodicStoreConfig(dim=9, capacity=800, metric=metric)
    sharded, single = ShardedEpisodicStore(cfg, num_shards=3), EpisodicStore(cfg)
    base = _data(1, 517, 9)
    for start in range(0, 517, 100):
        labels = torch.arange(start, min(start + 100, 517))
        sharded.add(base[start:start + 100], labels=labels)
        single.add(base[start:start + 100], labels=labels)
    assert len(sharded) == 517
    _assert_same_topk(sharded, single, _data(2, 31, 9), 12)


def test_local_sharded_get_remove_sample() -> None:
    cfg = EpisodicStoreConfig(dim=5, capacity=300)
    store = ShardedEpisodicStore(cfg, num_shards=3)
    base = _data(3, 203, 5)
    gids = store.add(base, inputs=base * 2, labels=torch.arange(203), experience=torch.arange(203) % 4)
    assert len(set(gids.tolist())) == 203 and (gids >= 0).all()
    batch = store.get(gids[[7, 200, 0]])
    assert batch.labels.tolist() == [7, 200, 0] and torch.equal(batch.slot_ids, gids[[7, 200, 0]])
    assert torch.equal(batch.inputs, base[[7, 200, 0]] * 2) and batch.experiences.tolist() == [3, 0, 0]
    assert store.remove(gids[:50]) == 50 and len(store) == 153
    with pytest.raises(KeyError, match="not held"):
        store.get(gids[:1])
    _, ids = store.search(base[:50], 2)
    assert not np.isin(ids.numpy(), gids[:50].numpy()).any()
    sample = store.sample(40, torch.Generator().manual_seed(4))
    assert len(set(sample.slot_ids.tolist())) == 40
    assert torch.equal(store.get(sample.slot_ids).labels, sample.labels)
    assert torch.equal(store.live_slots(), torch.sort(gids[50:]).values)


def test_local_sharded_capacity_and_reservoir() -> None:
    cfg = EpisodicStoreConfig(dim=4, capacity=61, seed=3)
    store = ShardedEpisodicStore(cfg, num_shards=3)
    for step in range(10):
        store.add(_data(10 + step, 29, 4), labels=torch.arange(29) + 29 * step)
    assert len(store) == 61
    held = store.get(store.live_slots()).labels
    assert held.unique().numel() == 61 and int(held.max()) >= 29 * 5  # later items were sampled in


def test_sharded_save_load_round_trip(tmp_path: Path) -> None:
    cfg = EpisodicStoreConfig(dim=6, capacity=90, index="hnsw")
    store = ShardedEpisodicStore(cfg, num_shards=2)
    store.add(_data(5, 77, 6), labels=torch.arange(77))
    store.remove([0, 5, 9])
    store.save(tmp_path / "sharded.store")
    loaded = ShardedEpisodicStore.load(tmp_path / "sharded.store")
    queries = _data(6, 8, 6)
    assert len(loaded) == 74 and torch.equal(loaded.search(queries, 5)[1], store.search(queries, 5)[1])
    more = _data(7, 20, 6)
    assert torch.equal(loaded.add(more, labels=torch.arange(20)), store.add(more, labels=torch.arange(20)))


def test_sharded_argument_validation() -> None:
    cfg = EpisodicStoreConfig(dim=4, capacity=5)
    with pytest.raises(ValueError, match=r"num_shards: expected an int in \[1, capacity=5\]"):
        ShardedEpisodicStore(cfg, num_shards=6)
    with pytest.raises(ValueError, match="backend: expected one of local, ray"):
        ShardedEpisodicStore(cfg, num_shards=2, backend="dask")


@pytest.fixture(scope="module")
def ray_cluster():
    """One small local Ray instance for the Ray tests of this module."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_sharded_search_equals_unsharded(ray_cluster) -> None:  # noqa: ANN001
    cfg = EpisodicStoreConfig(dim=7, capacity=500, metric="l2")
    sharded, single = ShardedEpisodicStore(cfg, num_shards=2, backend="ray"), EpisodicStore(cfg)
    base = _data(8, 389, 7)
    sharded.add(base, labels=torch.arange(389))
    single.add(base, labels=torch.arange(389))
    _assert_same_topk(sharded, single, _data(9, 19, 7), 9)
    sharded.close(kill=True)


@pytest.mark.slow
def test_concurrent_ray_inserts_lose_nothing(ray_cluster) -> None:  # noqa: ANN001
    ray = ray_cluster
    cfg = EpisodicStoreConfig(dim=6, capacity=1000)
    owner = ShardedEpisodicStore(cfg, num_shards=2, backend="ray", name="concurrent-inserts")

    @ray.remote(num_cpus=1)
    def insert(seed: int, tag: int) -> list[int]:
        from clmem.episodic.sharded import ShardedEpisodicStore as Store
        import torch as th

        client = Store.connect("concurrent-inserts")
        kept = []
        for step in range(6):
            x = th.randn(50, 6, generator=th.Generator().manual_seed(seed * 100 + step))
            kept += client.add(x, labels=th.full((50,), tag), experience=step).tolist()
        return kept

    results = ray.get([insert.remote(11, 1), insert.remote(22, 2)])
    gids = torch.tensor(results[0] + results[1])
    assert (gids >= 0).all() and gids.unique().numel() == 600 and len(owner) == 600
    for seed, tag in ((11, 1), (22, 2)):
        x = torch.cat([torch.randn(50, 6, generator=torch.Generator().manual_seed(seed * 100 + s)) for s in range(6)])
        dist, ids = owner.search(x, 1)
        assert torch.all(dist[:, 0] < 1e-6) and (owner.get(ids[:, 0]).labels == tag).all()
    owner.close(kill=True)


@pytest.mark.slow
def test_connect_unknown_name_fails(ray_cluster) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="no episodic store named 'nobody'"):
        ShardedEpisodicStore.connect("nobody")
