"""EpisodicReplay: state round trip (same items replayed), nearest retrieval against brute force."""
import pytest
import torch

from strategies.episodic_replay import EpisodicReplay, nearest_slots


def filled(n=60, dim=8, seed=0, **kwargs):
    g = torch.Generator().manual_seed(seed)
    plugin = EpisodicReplay(mem_size=40, seed=seed, **kwargs)
    for start in range(0, n, 10):  # six batches of 10: the reservoir is full and replacing
        feats = torch.randn(10, dim, generator=g)
        x = torch.randn(10, 1, 2, 2, generator=g)
        y = torch.randint(0, 4, (10,), generator=g)
        logits = torch.randn(10, 4, generator=g)
        plugin.add(feats, x, y, logits, experience=start // 20)
    return plugin


@pytest.mark.parametrize("num_shards", [1, 2])
@pytest.mark.parametrize("retrieval", ["random", "nearest"])
def test_state_round_trip_replays_the_same_items(num_shards, retrieval):
    plugin = filled(num_shards=num_shards, retrieval=retrieval, alpha=0.1)
    plugin.iterations, plugin.replayed = 7, 123
    clone = EpisodicReplay(mem_size=40, seed=99, num_shards=num_shards, retrieval=retrieval, alpha=0.1)
    clone.load_state_dict(plugin.state_dict())
    assert (clone.iterations, clone.replayed, len(clone.store)) == (7, 123, 40)
    queries = torch.randn(3, 8, generator=torch.Generator().manual_seed(5))
    for _ in range(3):  # successive retrievals stay in step (same sampling generator state)
        a, b = plugin.retrieve(queries, 12), clone.retrieve(queries, 12)
        assert torch.equal(a.slot_ids, b.slot_ids)
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
        assert torch.equal(a.logits, b.logits)
    # the policy state came along too: the next insertions land in the same slots
    extra = torch.randn(10, 8, generator=torch.Generator().manual_seed(6))
    x, y, lg = torch.zeros(10, 1, 2, 2), torch.zeros(10, dtype=torch.long), torch.zeros(10, 4)
    assert torch.equal(plugin.add(extra, x, y, lg, 3), clone.add(extra, x, y, lg, 3))


def brute_force_topk(embeddings, slots, query, k):
    d = ((embeddings - query) ** 2).sum(1)
    return slots[torch.argsort(d, stable=True)[:k]].tolist()


def test_nearest_returns_the_stored_items_nearest_to_the_batch():
    plugin = filled(retrieval="nearest")
    held = plugin.store.get(plugin.store.live_slots())
    queries = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    # one query: its n nearest items, nearest first
    got = plugin.retrieve(queries[:1], 7)
    assert got.slot_ids.tolist() == brute_force_topk(held.embeddings, held.slot_ids, queries[0], 7)
    # a batch: rank-by-rank union of each query's top-k (k = ceil(n / B)), deduplicated
    got = plugin.retrieve(queries, 8)
    per_query = [brute_force_topk(held.embeddings, held.slot_ids, q, 2) for q in queries]
    expected = []
    for rank in range(2):
        for lst in per_query:
            if lst[rank] not in expected:
                expected.append(lst[rank])
    assert got.slot_ids.tolist() == expected[:8]
    assert torch.equal(got.embeddings, held.embeddings[torch.isin(held.slot_ids, got.slot_ids)][
        torch.argsort(torch.argsort(got.slot_ids))])


def test_nearest_excluding_current_experience_is_nearest_among_the_others():
    plugin = filled(retrieval="nearest")
    held = plugin.store.get(plugin.store.live_slots())
    others = held.experiences != 2
    query = torch.randn(1, 8, generator=torch.Generator().manual_seed(2))
    got = plugin.retrieve(query, 5, current_experience=2)
    assert (got.experiences != 2).all()
    assert got.slot_ids.tolist() == brute_force_topk(held.embeddings[others], held.slot_ids[others], query[0], 5)


def test_nearest_slots_rule():
    ids = torch.tensor([[3, 5, -1], [3, 7, 9]])
    assert nearest_slots(ids, 10).tolist() == [3, 5, 7, 9]
    assert nearest_slots(ids, 2).tolist() == [3, 5]


def test_class_balanced_policy_and_option_errors():
    plugin = EpisodicReplay(mem_size=40, policy="class_balanced")
    labels = torch.tensor([0] * 50 + [1] * 10)
    for start in range(0, 60, 10):
        rows = slice(start, start + 10)
        plugin.add(torch.randn(10, 3), torch.zeros(10, 2), labels[rows])
    counts = torch.bincount(plugin.store.get(plugin.store.live_slots()).labels, minlength=2)
    assert counts.tolist() == [30, 10]  # every late class-1 item replaced a class-0 item
    with pytest.raises(ValueError, match="retrieval"):
        EpisodicReplay(retrieval="farthest")


@pytest.mark.parametrize("retrieval", ["random", "nearest"])
def test_joint_forward_keeps_the_strategy_view_and_stores_pre_update_features(retrieval):
    """One forward over current + replayed rows: the strategy sees only current rows; with lr=0 the
    stored embeddings and logits are exactly the model's features and outputs of the stored inputs."""
    from avalanche.core import SupervisedPlugin
    from avalanche.training.supervised import Naive

    from clmem.benchmarks import build_stream
    from clmem.models import MLP

    class Watch(SupervisedPlugin):
        sizes: list = []

        def after_training_iteration(self, strategy, **kwargs):
            self.sizes.append((len(strategy.mb_x), len(strategy.mb_y), len(strategy.mb_output)))

    torch.manual_seed(0)
    benchmark = build_stream("split_digits", seed=0).benchmark
    model = MLP(64, 10, hidden_size=16, num_layers=1)
    replay, watch = EpisodicReplay(mem_size=30, batch_size_mem=8, retrieval=retrieval, alpha=0.5), Watch()
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0), train_mb_size=12,
                     train_epochs=1, eval_mb_size=64, plugins=[replay, watch])
    for exp in benchmark.train_stream[:2]:
        strategy.train(exp)
    assert replay.replayed > 0 and len(replay.store) == 30 and replay._hook is None
    assert all(a == b == c and a <= 12 for a, b, c in watch.sizes)
    held = replay.store.get(replay.store.live_slots())
    with torch.no_grad():
        torch.testing.assert_close(held.embeddings, model.get_features(held.inputs), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(held.logits, model(held.inputs), rtol=1e-5, atol=1e-5)
