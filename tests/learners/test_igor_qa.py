"""The I/G/O/R network on bAbI (``igor_qa``): a FAISS memory per story; O's top-k equals brute force and never
returns padding; the attention over the retrieved slots is hand-checked and gradchecked; G merges a story longer
than the memory into the nearest slot by delete + re-add; registry, validation and state_dict round trip."""

import io
import math

import numpy as np
import pytest
import torch

from clmem.learners import igor_qa
from clmem.learners.igor_qa import (IGORQA, IGORQAConfig, attend_topk, memory_scores, search_stories,
                                    write_stories)
from clmem.models import MODELS, build_model

pytest.importorskip("faiss", reason="FAISS is needed: pip install 'clmem[cpu]'")


def test_retrieval_and_attention_hand_computed():
    # one story, three sentences; slot 0 is the most recent row, so oldest first the memory is rows 2, 1, 0
    keys = torch.tensor([[[1.0, 1.0], [0.0, 1.0], [1.0, 0.0]]])
    values = torch.tensor([[[1.0, 0.0], [5.0, 5.0], [0.0, 1.0]]])
    memory = write_stories(keys, values, torch.ones(1, 3, dtype=torch.bool), memory_size=4, metric="ip")
    assert memory.held.tolist() == [3] and memory.keys.tolist() == [[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]]
    query = torch.tensor([[2.0, 1.0]])  # inner products with slots 0, 1, 2: 2, 1, 3
    slots = search_stories(memory, query, 2)
    assert slots.tolist() == [[2, 0]]
    read, weights = attend_topk(query, memory.keys, memory.values, slots, "ip")
    a = math.e / (1 + math.e)  # softmax(3, 2)
    torch.testing.assert_close(weights, torch.tensor([[a, 1 - a]]))
    torch.testing.assert_close(read, torch.tensor([[a, 1 - a]]))  # a * v(slot 2) + (1 - a) * v(slot 0)
    # squared L2: distances 2, 4, 1 -> slots 2, 0; scores -1, -2
    l2 = write_stories(keys, values, torch.ones(1, 3, dtype=torch.bool), memory_size=4, metric="l2")
    assert search_stories(l2, query, 2).tolist() == [[2, 0]]
    assert memory_scores(query, l2.keys, "l2").tolist() == [[-2.0, -4.0, -1.0]]


def random_memory(metric, seed=0, batch=5, rows=9, dim=6, memory_size=12):
    gen = torch.Generator().manual_seed(seed)
    keys, values = torch.randn(batch, rows, dim, generator=gen), torch.randn(batch, rows, dim, generator=gen)
    valid = torch.rand(batch, rows, generator=gen) < 0.6
    valid[0] = False  # an empty story
    valid[1] = True  # a full one
    keys, values = keys * valid.unsqueeze(-1), values * valid.unsqueeze(-1)  # padding rows encode to zeros
    memory = write_stories(keys, values, valid, memory_size, metric)
    return memory, valid, torch.randn(batch, dim, generator=gen)


def brute_force(memory, query, k, metric):
    """Top-k slot ids of each story by scoring every held slot in torch (-1 past the held count)."""
    scores = memory_scores(query, memory.keys, metric)
    held = torch.arange(memory.keys.shape[1]) < memory.held.unsqueeze(1)
    top = scores.masked_fill(~held, float("-inf")).topk(min(k, scores.shape[1]), dim=1)
    slots = torch.where(torch.isfinite(top.values), top.indices, -1)
    return torch.cat([slots, torch.full((len(slots), k - slots.shape[1]), -1)], dim=1)


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("k", [1, 4, 12])
def test_top_k_equals_brute_force_and_padding_is_never_retrieved(metric, k):
    memory, valid, query = random_memory(metric)
    slots = search_stories(memory, query, k)
    assert slots.tolist() == brute_force(memory, query, k, metric).tolist()
    hits = (slots >= 0).sum(dim=1)
    assert hits.tolist() == valid.sum(dim=1).clamp(max=k).tolist()  # only sentences, never a padding row
    assert (slots < memory.held.unsqueeze(1)).all()
    # the vectors held under the hits are those sentences' keys
    for b, index in enumerate(memory.indexes):
        got = slots[b][slots[b] >= 0].numpy()
        np.testing.assert_allclose(index.vectors(got), memory.keys[b, got].numpy())


def test_a_zero_query_under_l2_finds_sentences_not_the_zero_padding():
    keys = torch.tensor([[[3.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])  # one sentence, two padding rows (zero keys)
    memory = write_stories(keys, keys.clone(), torch.tensor([[True, False, False]]), 3, "l2")
    assert search_stories(memory, torch.zeros(1, 2), 3).tolist() == [[0, -1, -1]]
    read, weights = attend_topk(torch.zeros(1, 2), memory.keys, memory.values, torch.tensor([[-1, -1]]), "l2")
    assert not read.any() and not weights.any()  # a story without hits reads zeros


def test_g_merges_a_story_longer_than_the_memory_into_the_nearest_slot_by_delete_and_readd(monkeypatch):
    calls = []
    remove, put = igor_qa.FlatIndex.remove, igor_qa.FlatIndex.put
    monkeypatch.setattr(igor_qa.FlatIndex, "remove", lambda self, s: calls.append(("remove", s.tolist()))
                        or remove(self, s))
    monkeypatch.setattr(igor_qa.FlatIndex, "put", lambda self, v, s, h: calls.append(("put", s.tolist(),
                                                                                     v.tolist())) or put(self, v, s, h))
    # oldest first: [1, 0], [0, 1], [0.8, 0.2], [0.6, 0.4]  (rows are most recent first)
    keys = torch.tensor([[[0.6, 0.4], [0.8, 0.2], [0.0, 1.0], [1.0, 0.0]]], requires_grad=True)
    values = torch.tensor([[[4.0], [3.0], [2.0], [1.0]]], requires_grad=True)
    memory = write_stories(keys, values, torch.ones(1, 4, dtype=torch.bool), memory_size=2, metric="l2")
    # [0.8, 0.2] is nearest to slot 0 -> (1, 0) + (0.8, 0.2) over 2 = (0.9, 0.1); then [0.6, 0.4]: squared
    # distances 0.18 to (0.9, 0.1) and 0.72 to (0, 1) -> slot 0 again: (2 * (0.9, 0.1) + (0.6, 0.4)) / 3
    torch.testing.assert_close(memory.keys[0], torch.tensor([[0.8, 0.2], [0.0, 1.0]]))
    torch.testing.assert_close(memory.values[0], torch.tensor([[8 / 3], [2.0]]))  # (1 + 3 + 4) / 3 and 2
    assert memory.counts.tolist() == [[3.0, 1.0]] and memory.held.tolist() == [2]
    assert [c[:2] for c in calls] == [("put", [0, 1]), ("remove", [0]), ("put", [0]), ("remove", [0]), ("put", [0])]
    np.testing.assert_allclose(memory.indexes[0].vectors(np.array([0, 1])), memory.keys[0].detach().numpy())
    memory.keys.sum().backward()  # gradients reach every merged sentence: 1/3 each in slot 0
    torch.testing.assert_close(keys.grad[0, :, 0], torch.tensor([1 / 3, 1 / 3, 1.0, 1 / 3]))


def test_gradcheck_of_the_attention_over_retrieved_slots():
    gen = torch.Generator().manual_seed(1)
    query = torch.randn(3, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    keys = torch.randn(3, 5, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    values = torch.randn(3, 5, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    slots = torch.tensor([[4, 0, 2], [1, -1, -1], [3, 3, 1]])
    for metric in ("ip", "l2"):
        assert torch.autograd.gradcheck(lambda q, k, v: attend_topk(q, k, v, slots, metric)[0],
                                        (query, keys, values))
    attend_topk(query, keys, values, slots, "ip")[0].sum().backward()
    # only retrieved slots get gradient (a lone hit has weight 1 whatever its key: its key gets none)
    assert not keys.grad[0, [1, 3]].any() and keys.grad[0, [0, 2, 4]].abs().sum(-1).gt(0).all()
    assert not values.grad[1, [0, 2, 3, 4]].any() and values.grad[1, 1].any() and not keys.grad[1].any()


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return IGORQA(IGORQAConfig(**{**dict(vocab_size=12, max_memory=5, embedding_dim=8, memory_size=6, k=3,
                                         hops=2), **overrides}))


def stories(seed=0, batch=4):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(1, 12, (batch, 6, 3), generator=gen)
    x[0, 3:5] = 0  # a short story: two padding rows
    x[1, :5] = 0  # no sentence at all
    return x


def test_forward_trains_and_retrieves_only_sentences():
    model = tiny_model()
    x = stories()
    logits = model(x)
    assert logits.shape == (4, 12) and torch.isfinite(logits).all()
    logits.logsumexp(-1).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.eval()
    slots, weights = model.retrievals(x)
    assert slots.shape == weights.shape == (4, 2, 3)
    assert (slots[0] < 3).all() and (slots[1] == -1).all() and not weights[1].any()
    torch.testing.assert_close(weights[[0, 2, 3]].sum(-1), torch.ones(3, 2))
    with pytest.raises(ValueError, match=r"^IGORQA.forward.x: expected at most 5 memory rows"):
        model(torch.ones(2, 7, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"^IGORQA.forward.x: expected word ids in \[0, 12\)"):
        model(torch.full((2, 3, 3), 12))


def test_state_dict_round_trip():
    model, fresh = tiny_model(seed=0), tiny_model(seed=1)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    model.eval(), fresh.eval()
    x = stories(seed=3)
    torch.testing.assert_close(fresh(x), model(x))
    assert torch.equal(fresh.retrievals(x)[0], model.retrievals(x)[0])


def test_registered_for_memnet_streams_with_declared_options():
    entry = MODELS.get("igor_qa")
    assert entry.meta["accepts"] == ("qa_memnet",) and entry.meta["config"] is IGORQAConfig
    model = build_model("igor_qa", (6, 3), 12, embedding_dim=8, memory_size=4, k=2, hops=1, metric="l2")
    assert isinstance(model, IGORQA) and model.config.max_memory == 5 and model(stories()).shape == (4, 12)
    with pytest.raises(ValueError, match=r"^model.name: 'igor_qa' expects the memnet layout"):
        build_model("igor_qa", (1, 8, 8), 5)
    with pytest.raises(ValueError, match=r"^IGORQAConfig.k: expected an int <= memory_size \(4\), got 5$"):
        IGORQAConfig(vocab_size=4, max_memory=3, memory_size=4, k=5)
    with pytest.raises(ValueError, match=r"^IGORQAConfig.metric: expected one of ip, l2, got 'cos'$"):
        IGORQAConfig(vocab_size=4, max_memory=3, metric="cos")
    with pytest.raises(ValueError, match=r"^IGORQAConfig.random_noise: expected a number in \[0.0, 1.0\]"):
        IGORQAConfig(vocab_size=4, max_memory=3, random_noise=float("nan"))
    mlp = build_model("igor_qa", (6, 3), 12, embedding_dim=8, memory_size=4, k=2, response_hidden=7)
    assert [type(m).__name__ for m in mlp.response] == ["Linear", "ReLU", "Linear"] and mlp.response[0].out_features == 7
    assert mlp(stories()).shape == (4, 12) and isinstance(model.response, torch.nn.Linear)
    with pytest.raises(ValueError, match=r"^IGORQAConfig.response_hidden: expected an int >= 0, got -1$"):
        IGORQAConfig(vocab_size=4, max_memory=3, response_hidden=-1)
    for name in ("embedding_dim", "memory_size", "k", "hops"):
        with pytest.raises(ValueError, match=rf"^IGORQAConfig.{name}: expected an int >= 1, got 0$"):
            IGORQAConfig(vocab_size=4, max_memory=3, **{name: 0})
