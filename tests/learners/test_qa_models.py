"""DMN+, the key-value memory network and the story transformer on the bAbI memnet layout: hand-computed attention
gate / attention GRU / key addressing, shapes, zero attention to empty slots, overfitting 8 generated questions,
one-line errors."""
import math

import pytest
import torch
import torch.nn.functional as F

from clmem.learners.dmn import (AttentionGRUCell, AttentionGate, DMNConfig, attention_features, attention_gru,
                                attention_gru_step)
from clmem.learners.kv_memnn import KVMemNNConfig, key_addressing, value_reading
from clmem.learners.story_transformer import StoryTransformerConfig
from clmem.models import MODELS, build_model
from clmem.tasks import parse_babi, questions_of
from clmem.tasks.babi_gen import generate_babi_lines
from clmem.tasks.streams import babi_experiences

NAMES = ("dmn_plus", "kv_memnn", "story_transformer")
B, M, S, E = 2, 3, 4, 5
# word ids [B, M, S]: sample 0 has two sentences (slot 2 empty), sample 1 three; 0 is padding
STORIES = torch.tensor([[[1, 2, 3, 0], [4, 5, 0, 0], [0, 0, 0, 0]],
                        [[2, 2, 0, 0], [6, 1, 3, 5], [3, 0, 0, 0]]])


def pe_facts(stories, table):
    """Position-encoded bags of words by explicit loops: ``f_k = sum_j l_kj w_jk``,
    ``l_kj = (1 - j/J) - (k/d)(1 - 2j/J)``, J the sentence's number of words (1-based j, k)."""
    out = torch.zeros(*stories.shape[:2], table.shape[1], dtype=torch.float64)
    d = table.shape[1]
    for b in range(stories.shape[0]):
        for i in range(stories.shape[1]):
            words = [int(w) for w in stories[b, i] if w != 0]
            for j, w in enumerate(words, start=1):
                for k in range(1, d + 1):
                    l_kj = (1 - j / len(words)) - (k / d) * (1 - 2 * j / len(words))
                    out[b, i, k - 1] += l_kj * float(table[w, k - 1])
    return out


def test_attention_gate_one_step_by_hand():
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(7, E, generator=gen, dtype=torch.float64)
    table[0] = 0
    facts = pe_facts(STORIES, table)  # [B, M, E]
    q, m = torch.randn(B, E, generator=gen, dtype=torch.float64), torch.randn(B, E, generator=gen, dtype=torch.float64)
    gate = AttentionGate(E).double()
    valid = STORIES.ne(0).any(-1)
    g = gate(facts, q, m, valid)
    W1, b1 = gate.hidden.weight.detach(), gate.hidden.bias.detach()
    w2, b2 = gate.score.weight.detach()[0], float(gate.score.bias.detach())
    for b in range(B):
        scores = []
        for i in range(M):
            f = facts[b, i]
            z = [*(f * q[b]), *(f * m[b]), *(f - q[b]).abs(), *(f - m[b]).abs()]  # 4E = 20 features
            hidden = [math.tanh(sum(float(W1[r, c]) * float(z[c]) for c in range(4 * E)) + float(b1[r]))
                      for r in range(E)]
            scores.append(sum(float(w2[r]) * hidden[r] for r in range(E)) + b2)
        real = [i for i in range(M) if valid[b, i]]
        total = sum(math.exp(scores[i]) for i in real)
        expected = [math.exp(scores[i]) / total if i in real else 0.0 for i in range(M)]
        assert g[b].tolist() == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert g[0, 2] == 0.0  # the empty slot
    assert attention_features(facts, q, m).shape == (B, M, 4 * E)


def test_attention_gate_with_zero_weights_is_uniform_over_the_real_facts():
    gate = AttentionGate(E)
    for p in gate.parameters():
        torch.nn.init.zeros_(p)
    g = gate(torch.randn(B, M, E), torch.randn(B, E), torch.randn(B, E), STORIES.ne(0).any(-1))
    assert g.tolist() == [[0.5, 0.5, 0.0], [pytest.approx(1 / 3)] * 3]


def test_attention_gru_step_by_hand():
    # zero weights: r = sigmoid(b_r), h~ = tanh(b) = 0.5, h' = g h~ + (1 - g) h
    cell = AttentionGRUCell(E, E)
    with torch.no_grad():
        cell.input_weight.zero_()
        cell.hidden_weight.zero_()
        cell.bias.copy_(torch.tensor([0.0] * E + [math.atanh(0.5)] * E))
    h = torch.ones(B, E)
    out = cell(torch.randn(B, E), h, torch.tensor([0.25, 0.0]))
    assert torch.allclose(out, torch.tensor([[0.875] * E, [1.0] * E]))  # 0.25 * 0.5 + 0.75 * 1; gate 0 keeps h


def test_attention_gru_step_general_weights_by_loops():
    gen = torch.Generator().manual_seed(1)
    table = torch.randn(7, E, generator=gen, dtype=torch.float64)
    table[0] = 0
    fact = pe_facts(STORIES, table)[:, 0]  # the first fact of each story, [B, E]
    h = torch.randn(B, E, generator=gen, dtype=torch.float64)
    wi = torch.randn(2 * E, E, generator=gen, dtype=torch.float64)
    wh = torch.randn(2 * E, E, generator=gen, dtype=torch.float64)
    bias = torch.randn(2 * E, generator=gen, dtype=torch.float64)
    gate = torch.tensor([0.3, 0.9], dtype=torch.float64)
    out = attention_gru_step(fact, h, gate, wi, wh, bias)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    for b in range(B):
        for k in range(E):
            wf = lambda row: sum(float(wi[row, c] * fact[b, c]) for c in range(E)) + float(bias[row])  # noqa: E731
            uh = lambda row: sum(float(wh[row, c] * h[b, c]) for c in range(E))  # noqa: E731
            r = sig(wf(k) + uh(k))
            cand = math.tanh(wf(E + k) + r * uh(E + k))
            expected = float(gate[b]) * cand + (1 - float(gate[b])) * float(h[b, k])
            assert float(out[b, k]) == pytest.approx(expected, rel=1e-10)


def test_attention_gru_skips_zero_gates():
    cell = AttentionGRUCell(E, E)
    facts, gates = torch.randn(B, M, E), torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    episode = attention_gru(facts, gates, cell)
    alone = cell(facts[:1, 1], torch.zeros(1, E), torch.ones(1))
    assert torch.allclose(episode[0], alone[0]) and episode[1].eq(0).all()


def test_key_addressing_softmax_and_value_reading_by_hand():
    query = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    keys = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]], [[1.0, 1.0], [0.0, 0.5], [3.0, 3.0]]])
    valid = torch.tensor([[True, True, False], [True, True, True]])
    p = key_addressing(query, keys, valid)
    e = math.e
    # sample 0: scores 1, 0, (2 masked); sample 1: scores 2, 1, 6
    expected = [[e / (e + 1), 1 / (e + 1), 0.0], [e ** 2 / (e ** 2 + e + e ** 6), e / (e ** 2 + e + e ** 6),
                                                   e ** 6 / (e ** 2 + e + e ** 6)]]
    assert p.tolist()[0] == pytest.approx(expected[0]) and p.tolist()[1] == pytest.approx(expected[1])
    values = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]] * 2)
    o = value_reading(p, values)
    p0, p1 = expected[0][:2]
    assert o[0].tolist() == pytest.approx([p0 * 1 + p1 * 3, p0 * 2 + p1 * 4])


def packed(stories, question):
    """``[B, M + 1, S]`` from stories ``[B, M, S]`` and one question ``[S]`` per sample."""
    return torch.cat([stories, question.expand(len(stories), 1, -1)], dim=1)


X = packed(STORIES, torch.tensor([[1, 4, 0, 0]]))


@pytest.mark.parametrize("name", NAMES)
def test_shapes_registry_meta_and_trailing_empty_rows_change_nothing(name):
    assert MODELS.get(name).meta["accepts"] == ("qa_memnet",)
    torch.manual_seed(0)
    model = build_model(name, (M + 2, S), 7, embedding_dim=8).eval()
    assert model(X).shape == (B, 7)
    longer = torch.cat([X[:, :M], torch.zeros(B, 1, S, dtype=torch.long), X[:, M:]], dim=1)  # one more empty slot
    assert torch.allclose(model(longer), model(X), atol=1e-5)
    with pytest.raises(ValueError, match=rf"^model.name: '{name}' expects the memnet layout \(M \+ 1, S\)"):
        build_model(name, (1, 28, 28), 10)


@pytest.mark.parametrize("name", ["dmn_plus", "kv_memnn"])
def test_empty_slots_get_zero_attention(name):
    torch.manual_seed(0)
    model = build_model(name, (M + 1, S), 7, embedding_dim=8).eval()
    middle = X.clone()
    middle[1, 1] = 0  # an empty row between two sentences
    att = model.attention(middle)
    assert att.shape == (B, 3, M)
    empty = middle[:, :M].eq(0).all(-1)
    assert att[empty.unsqueeze(1).expand_as(att)].eq(0).all()
    assert torch.allclose(att.sum(-1), torch.ones(B, 3))


def test_story_transformer_does_not_attend_to_empty_slots():
    torch.manual_seed(0)
    model = build_model("story_transformer", (M + 1, S), 7, embedding_dim=8, num_heads=2).eval()
    before = model(X)
    with torch.no_grad():
        model.slot[2].add_(torch.randn(8))  # slot 2 of sample 0 is empty; sample 1 uses it
    after = model(X)
    assert torch.allclose(after[0], before[0], atol=1e-6) and not torch.allclose(after[1], before[1])


@pytest.fixture(scope="module")
def tiny_babi():
    """8 generated task-1 questions in the memnet layout: ``x [8, M + 1, S]``, ``y [8]``, vocabulary size."""
    questions = questions_of(parse_babi(generate_babi_lines(1, 8, seed=0), task=1))
    data, shape, vocab = babi_experiences([[1]], {"train": {1: questions}}, "memnet", max_memory=20)
    return data["train"][0].x, data["train"][0].y, shape, vocab


@pytest.mark.parametrize("name", NAMES)
def test_each_learner_overfits_eight_generated_questions(name, tiny_babi):
    x, y, shape, vocab = tiny_babi
    torch.manual_seed(0)
    model = build_model(name, shape, vocab, embedding_dim=16, dropout=0.0)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(60):
        loss = F.cross_entropy(model(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], losses[::8]
    assert model.eval()(x).argmax(-1).eq(y).all()


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match=r"^DMNConfig.passes: expected an int >= 1, got 0$"):
        DMNConfig(vocab_size=5, passes=0)
    with pytest.raises(ValueError, match=r"^KVMemNNConfig.dropout"):
        KVMemNNConfig(vocab_size=5, max_memory=3, dropout=1.5)
    with pytest.raises(ValueError, match=r"^StoryTransformerConfig.num_heads: expected a divisor of embedding_dim "
                                         r"\(8\), got 3$"):
        StoryTransformerConfig(vocab_size=5, max_memory=3, embedding_dim=8, num_heads=3)


def test_experiment_validation_refuses_contradicting_options_naming_the_field():
    from clmem.config import Experiment
    from clmem.options import ConfigError

    raw = {"name": "x", "benchmark": {"name": "babi_joint"}, "strategy": {"name": "naive"},
           "model": {"name": "story_transformer", "embedding_dim": 8, "num_heads": 3}}
    with pytest.raises(ConfigError, match=r"^model\.num_heads: expected a divisor of embedding_dim \(8\), got 3$"):
        Experiment.from_dict(raw)


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs_are_refused_with_one_line_naming_x(name):
    model = build_model(name, (M + 1, S), 7, embedding_dim=8)
    cases = [(X.float() + 0.5, "whole word ids"), (X.clone().fill_(7), r"word ids in \[0, 7\), got values in \[7, 7\]"),
             (X[0], r"expected word ids \[B, M \+ 1, S\]"), (torch.zeros(1, M + 2, S, dtype=torch.long),
                                                           "at most 3 memory rows"),
             (X[:0], "B >= 1"), (torch.full((1, M + 1, S), float("nan")), "finite")]
    for x, message in cases:
        with pytest.raises(ValueError, match=message) as err:
            model(x)
        assert "\n" not in str(err.value) and ".x: " in str(err.value)
