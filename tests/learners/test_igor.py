"""I/G/O/R memory network over a real FAISS EpisodicStore: G merges into the nearest slot by delete + re-add,
O's top-k equals brute force, the store round-trips through state_dict, writes happen in training only."""

import copy
import io
import math

import pytest
import torch

from clmem.learners.igor import IGORConfig, IGORNetwork, VectorMemory, attend_retrieved, merge_means
from clmem.models import MODELS, build_model

pytest.importorskip("faiss", reason="FAISS is needed: pip install 'clmem[cpu]'")


def held(memory):
    """``{slot: vector}`` of everything the store holds."""
    slots = memory.store.live_slots()
    return dict(zip(slots.tolist(), memory.store.get(slots).embeddings.tolist()))


def test_free_slots_fill_first_then_g_merges_into_the_nearest_slot_by_delete_and_readd():
    memory = VectorMemory(feature_size=2, memory_size=3)
    slots = memory.write(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]))
    assert slots.tolist() == [0, 1, 2] and memory.counts.tolist() == [1.0, 1.0, 1.0]
    calls = []
    store = memory.store
    remove, add = store.remove, store.add
    store.remove = lambda ids: calls.append(("remove", torch.as_tensor(ids).tolist())) or remove(ids)
    store.add = lambda vectors: calls.append(("add", torch.as_tensor(vectors).tolist())) or add(vectors)
    assert memory.write(torch.tensor([[9.0, 1.0]])).tolist() == [1]  # nearest to [10, 0]
    assert calls == [("remove", [1]), ("add", [[9.5, 0.5]])]  # running mean (1 * [10, 0] + [9, 1]) / 2
    assert held(memory) == {0: [0.0, 0.0], 1: [9.5, 0.5], 2: [0.0, 10.0]}
    assert memory.counts.tolist() == [1.0, 2.0, 1.0] and len(memory) == 3


@pytest.mark.parametrize("index", ["flat", "hnsw"])
def test_several_merges_in_one_batch_are_running_means(index):
    memory = VectorMemory(feature_size=2, memory_size=2, index=index)
    memory.write(torch.tensor([[0.0, 0.0], [10.0, 10.0]]))
    memory.write(torch.tensor([[1.0, 0.0], [9.0, 9.0], [2.0, 3.0]]))
    # slot 0: ([0, 0] + [1, 0] + [2, 3]) / 3; slot 1: ([10, 10] + [9, 9]) / 2
    got = held(memory)
    assert got[1] == [9.5, 9.5] and got[0] == pytest.approx([1.0, 1.0])
    assert memory.counts.tolist() == [3.0, 2.0]


def test_max_count_caps_the_running_mean():
    memory = VectorMemory(feature_size=1, memory_size=1, max_count=1)
    memory.write(torch.tensor([[0.0]]))
    for value in (4.0, 4.0):
        memory.write(torch.tensor([[value]]))
    assert held(memory) == {0: [3.0]}  # (0 + 4) / 2 = 2, then (1 * 2 + 4) / 2 = 3


def test_merge_means_hand_computed():
    old = torch.tensor([[1.0, 1.0], [0.0, 4.0]])
    new, total, added = merge_means(old, torch.tensor([3.0, 1.0]), torch.tensor([[5.0, 1.0], [0.0, 0.0]]),
                                    torch.tensor([0, 1]), 2)
    torch.testing.assert_close(new, torch.tensor([[2.0, 1.0], [0.0, 2.0]]))
    assert total.tolist() == [4.0, 2.0] and added.tolist() == [1.0, 1.0]


@pytest.mark.parametrize("index", ["flat", "hnsw"])
def test_o_top_k_equals_brute_force(index):
    gen = torch.Generator().manual_seed(0)
    memory = VectorMemory(feature_size=4, memory_size=40, index=index)
    memory.write(torch.randn(40, 4, generator=gen))
    memory.write(torch.randn(10, 4, generator=gen))  # merges: slot vectors move
    query = torch.randn(6, 4, generator=gen)
    found = memory.retrieve(query, 5)
    slots = memory.store.live_slots()
    vectors = memory.store.get(slots).embeddings
    brute = torch.cdist(query, vectors).topk(5, largest=False).indices
    assert found.slots.tolist() == slots[brute].tolist() and found.valid.all()
    torch.testing.assert_close(found.vectors, vectors[brute])


def test_o_with_fewer_slots_than_k_and_empty_memory():
    memory = VectorMemory(feature_size=2, memory_size=4)
    empty = memory.retrieve(torch.zeros(3, 2), 2)
    assert not empty.valid.any() and (empty.slots == -1).all() and not empty.vectors.any()
    memory.write(torch.tensor([[1.0, 0.0]]))
    found = memory.retrieve(torch.zeros(1, 2), 3)
    assert found.valid.tolist() == [[True, False, False]] and found.slots.tolist() == [[0, -1, -1]]


def test_non_finite_or_overflowing_vectors_are_errors():
    memory = VectorMemory(feature_size=2, memory_size=1)
    with pytest.raises(ValueError, match=r"^VectorMemory.write.features: expected finite values"):
        memory.write(torch.tensor([[float("inf"), 0.0]]))
    memory.write(torch.tensor([[1e20, 0.0]]))
    with pytest.raises(ValueError, match=r"^VectorMemory.retrieve.query: expected finite values"):
        memory.retrieve(torch.tensor([[float("nan"), 0.0]]), 1)
    with pytest.raises(ValueError, match=r"^VectorMemory.retrieve.query: .* fit in float32, got values up to 1e\+20$"):
        memory.retrieve(torch.tensor([[-1e20, 0.0]]), 1)  # squared distance 4e40 overflows float32
    with pytest.raises(ValueError, match=r"^VectorMemory.write.features: .* fit in float32"):
        memory.write(torch.tensor([[-1e20, 0.0]]))
    assert held(memory)[0] == pytest.approx([1e20, 0.0]) and len(memory) == 1  # the failed write changed nothing


def test_attention_over_retrieved_vectors_hand_computed():
    query = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    retrieved = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]]], dtype=torch.float64)
    valid = torch.tensor([[True, True, False]])
    out, weights = attend_retrieved(query, retrieved, valid, torch.tensor(1.0, dtype=torch.float64))
    # squared distances / D: 0.5 and 2.0 -> softmax(-0.5, -2.0); the third slot is not valid
    a = 1.0 / (1.0 + math.exp(-1.5))
    torch.testing.assert_close(weights, torch.tensor([[a, 1 - a, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(out, torch.tensor([[a, 2 * (1 - a)]], dtype=torch.float64))
    beta = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, b: attend_retrieved(q, retrieved, valid, b)[0],
                                    (torch.randn(1, 2, dtype=torch.float64, requires_grad=True), beta))
    none, _ = attend_retrieved(query, retrieved, torch.zeros(1, 3, dtype=torch.bool), beta)
    assert torch.equal(none, torch.zeros(1, 2, dtype=torch.float64))


def small_network(seed=0, **overrides):
    torch.manual_seed(seed)
    return IGORNetwork(IGORConfig(**{**dict(input_size=12, num_classes=3, hidden_size=8, feature_size=4,
                                            memory_size=6, k=3), **overrides}))


def test_writes_happen_in_training_forward_only_and_gradients_skip_the_memory():
    model = small_network()
    x = torch.randn(4, 1, 3, 4)
    model.eval()
    model(x)
    assert len(model.memory) == 0
    model.train()
    model(x).sum().backward()  # read (empty memory), then write the 4 features
    assert len(model.memory) == 4
    model.zero_grad()
    logits = model(torch.randn(4, 1, 3, 4))  # reads the stored vectors, then fills and merges
    assert logits.shape == (4, 3) and len(model.memory) == 6 and float(model.memory.counts.sum()) == 8.0
    logits.sum().backward()
    assert model.log_beta.grad is not None and float(model.log_beta.grad.abs()) > 0
    assert all(p.grad is not None for p in model.input_map.parameters())
    assert not model.memory.counts.requires_grad and list(model.memory.parameters()) == []
    model.eval()
    before = held(model.memory)
    model(torch.randn(4, 1, 3, 4))
    assert held(model.memory) == before
    with pytest.raises(ValueError, match="expected finite values"):
        model.memory.write(torch.full((1, 4), float("nan")))


@pytest.mark.parametrize("index", ["flat", "hnsw"])
def test_state_dict_round_trip_restores_the_store(index):
    model = small_network(index=index)
    model.train()
    for _ in range(3):
        model(torch.randn(4, 12))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = small_network(seed=1, index=index)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert held(fresh.memory) == held(model.memory)
    assert torch.equal(fresh.memory.counts, model.memory.counts)
    x = torch.randn(5, 12)
    model.eval(), fresh.eval()
    torch.testing.assert_close(fresh(x), model(x))
    model.train(), fresh.train()
    model(x), fresh(x)  # both go on writing identically
    assert held(fresh.memory) == held(model.memory)


def test_deep_copy_has_its_own_store():
    model = small_network()
    model.train()
    model(torch.randn(6, 12))
    twin = copy.deepcopy(model)
    assert held(twin.memory) == held(model.memory)
    model(torch.randn(6, 12) * 5)
    assert held(twin.memory) != held(model.memory)
    model.memory.reset()
    assert len(model.memory) == 0 and len(twin.memory) == 6 and not model.memory.counts.any()


def test_registered_for_image_streams():
    entry = MODELS.get("igor")
    assert entry.meta["accepts"] == ("image",)
    model = build_model("igor", (1, 8, 8), 5, hidden_size=16, feature_size=8, memory_size=10, k=4, index="hnsw")
    assert isinstance(model, IGORNetwork) and model.memory.store.config.index == "hnsw"
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 5)
    with pytest.raises(ValueError, match="expects image inputs"):
        build_model("igor", (8, 8), 5)
    with pytest.raises(ValueError, match=r"^IGORConfig.k: expected an int <= memory_size \(4\), got 5$"):
        IGORConfig(input_size=4, num_classes=2, memory_size=4, k=5)
