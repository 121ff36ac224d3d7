import pytest
import torch
import torch.nn.functional as F

from clmem.learners import (
    CORES,
    LSTMLearner,
    MemN2N,
    MemN2NConfig,
    make_sequence_learner,
    position_encoding,
)
from clmem.learners.memn2n import attend, encode_sentences, position_weights, time_indices
from clmem.tasks import CopyTask, Vocabulary, encode_memnet, load_babi_task, masked_bce_loss, questions_of, write_babi


@pytest.fixture(scope="module")
def task1(tmp_path_factory):
    root = tmp_path_factory.mktemp("babi_gen")
    write_babi(root, tasks=(1,), num_train=64, num_test=16, seed=0)
    questions = questions_of(load_babi_task(1, "train", root))
    vocab = Vocabulary.build(questions)
    return vocab, encode_memnet(questions, vocab, max_memory=20)


def test_position_encoding_matches_the_paper_formula():
    # J = 2 words, d = 2 dims: l_kj = (1 - j/J) - (k/d)(1 - 2j/J)
    expected = torch.tensor([
        [(1 - 1 / 2) - (1 / 2) * (1 - 2 * 1 / 2), (1 - 1 / 2) - (2 / 2) * (1 - 2 * 1 / 2)],
        [(1 - 2 / 2) - (1 / 2) * (1 - 2 * 2 / 2), (1 - 2 / 2) - (2 / 2) * (1 - 2 * 2 / 2)],
    ])
    assert torch.allclose(position_encoding(2, 2), expected)
    assert torch.allclose(position_encoding(2, 2), torch.tensor([[0.5, 0.5], [0.5, 1.0]]))
    l = position_encoding(4, 3)  # noqa: E741
    assert l.shape == (4, 3) and torch.isclose(l[2, 1], torch.tensor((1 - 3 / 4) - (2 / 3) * (1 - 6 / 4)))


def test_shapes_and_adjacent_tying(task1):
    vocab, data = task1
    model = MemN2N(vocab_size=len(vocab), embedding_dim=8, hops=3, max_memory=20).eval()
    logits = model(data.stories[:5], data.queries[:5])
    assert logits.shape == (5, len(vocab))
    assert len(model.embeddings) == 4 and len(model.temporal) == 4  # E_0..E_K shared between adjacent hops
    att = model.attention(data.stories[:5], data.queries[:5])
    assert att.shape == (5, 3, data.stories.shape[1])
    empty = ~data.stories[:5].ne(0).any(-1)
    assert torch.allclose(att.sum(-1), torch.ones(5, 3)) and (att[:, 0][empty] == 0).all()


def test_linear_start_removes_the_softmax_until_switched_off(task1):
    vocab, data = task1
    torch.manual_seed(0)
    model = MemN2N(vocab_size=len(vocab), embedding_dim=8, hops=2, max_memory=20, linear_start=True).eval()
    stories, queries = data.stories[:4], data.queries[:4]
    linear = model.attention(stories, queries)
    assert not torch.allclose(linear.sum(-1), torch.ones(4, 2))
    u = model.encode_query(queries)
    raw = torch.einsum("nmd,nd->nm", model.memories(stories)[:, :, 0], u) * stories.ne(0).any(-1)
    assert torch.allclose(linear[:, 0], raw)
    model.end_linear_start()
    assert torch.allclose(model.attention(stories, queries).sum(-1), torch.ones(4, 2))


def test_sentence_encoding_equals_the_dense_position_weighted_sum():
    torch.manual_seed(0)
    d, tables = 4, torch.randn(12, 3 * 4)
    tables[0] = 0
    words = torch.tensor([[3, 4, 5, 0, 0], [7, 8, 9, 10, 11], [2, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
    expected = []
    for row in words:
        n = int(row.ne(0).sum())  # the paper's J: the sentence's own number of words
        weights = position_encoding(n, d).repeat(1, 3) if n else torch.zeros(0, 3 * d)
        expected.append((tables[row[:n]] * weights).sum(0))
    assert torch.allclose(encode_sentences(words, tables, d, True), torch.stack(expected), atol=1e-6)
    assert torch.allclose(encode_sentences(words, tables, d, False), tables[words].sum(1))
    a, b = position_weights(words)
    assert (a[words == 0] == 0).all() and (b[words == 0] == 0).all()


def test_fixed_length_position_encoding_is_the_authors_code_formula():
    # J=4, d=2, word at j=1: 1 + 4 (k - 1.5)(1 - 2.5) / 8 -> k=1: 1.375, k=2: 0.625; at j=3: k=1 0.875, k=2 1.125
    tables = torch.zeros(6, 2)
    tables[3] = torch.tensor([1.0, 10.0])
    tables[5] = torch.tensor([2.0, 20.0])
    words = torch.tensor([[3, 0, 5], [0, 0, 0]])  # a 3-word-wide batch, J fixed at 4 (not the row's length)
    got = encode_sentences(words, tables, 2, True, fixed_length=4)
    expected = torch.tensor([[1.375 * 1 + 0.875 * 2, 0.625 * 10 + 1.125 * 20], [0.0, 0.0]])
    assert torch.allclose(got, expected)
    model = MemN2N(vocab_size=6, embedding_dim=2, hops=1, max_memory=3, position_words=2)
    with pytest.raises(ValueError, match="position_words is 2"):
        model(torch.tensor([[[3, 4, 5]]]), torch.tensor([[3]]))
    with pytest.raises(ValueError, match="position_words"):
        MemN2N(vocab_size=6, position_words=-1)


def test_model_encoding_matches_per_slot_reference(task1):
    vocab, data = task1
    torch.manual_seed(0)
    model = MemN2N(vocab_size=len(vocab), embedding_dim=6, hops=2, max_memory=20).eval()
    stories = data.stories[:3]
    memory = model.memories(stories)
    for b in range(3):
        for m in range(stories.shape[1]):
            words = stories[b, m][stories[b, m] != 0]
            if len(words) == 0:
                assert (memory[b, m] == 0).all()  # empty slots hold nothing, not even TE
                continue
            pe = position_encoding(len(words), 6)
            for h in range(3):
                ref = (model.embeddings[h].weight[words] * pe).sum(0) + model.temporal[h][m]
                assert torch.allclose(memory[b, m, h], ref, atol=1e-5)


def test_time_indices_insert_blanks_in_order_and_cap():
    valid = torch.tensor([[1] * 5 + [0] * 3, [1, 1, 0, 0, 0, 0, 0, 0], [0] * 8], dtype=torch.bool)
    assert torch.equal(time_indices(valid, 0.0, 8), torch.arange(8).expand(3, 8))
    torch.manual_seed(0)
    for _ in range(20):
        times = time_indices(valid, 0.5, 6)
        first = times[0, :5]  # 5 sentences + 3 blanks: a sorted 5-subset of 0..7, capped at 5
        assert (first[1:] >= first[:-1]).all() and (first <= 5).all() and first[0] <= 3
        assert (times[1, :2] < 3).all() and times[1, 0] < times[1, 1]
        assert torch.equal(times[:, 5:][~valid[:, 5:]], torch.tensor([5, 6, 7] * 2 + [5, 5, 5]).clamp(max=5))
    assert (time_indices(valid, 0.5, 8)[0, :5] > torch.arange(5)).any()


def test_time_indices_uniform_blank_count_spans_zero_to_ceil():
    valid = torch.ones(2, 12, dtype=torch.bool)
    valid[0, 5:] = False  # 5 sentences: ceil(0.3 * 5) = 2 blanks at most; 12 sentences: at most 4
    torch.manual_seed(0)
    shifts = {0: set(), 1: set()}
    for _ in range(200):
        times = time_indices(valid, 0.3, 50, blanks="uniform")
        for row, n in ((0, 5), (1, 12)):
            first = times[row, :n]
            assert (first[1:] > first[:-1]).all() and (first >= torch.arange(n)).all()
            shifts[row].add(int(first[-1]) - (n - 1))  # blanks inserted before the oldest sentence's index
    assert shifts[0] == {0, 1, 2} and shifts[1] == {0, 1, 2, 3, 4}
    fixed = {int(time_indices(valid, 0.3, 50)[0, :5].max()) - 4 for _ in range(50)}
    assert fixed <= {0, 1, 2} and 2 in fixed  # "ceil" (always 2 blanks here) stays within the same bounds


def test_attend_fixed_memory_counts_empty_slots_inside_the_softmax():
    torch.manual_seed(0)
    scores, valid = torch.randn(2, 3), torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    padded = torch.cat([scores * valid, torch.zeros(2, 2)], dim=1)
    assert torch.allclose(attend(scores, valid, False, False, 5), torch.softmax(padded, -1)[:, :3])
    masked = attend(scores, valid, False, True, 5)
    assert torch.allclose(masked.sum(-1), torch.ones(2)) and masked[1, 2] == 0
    assert torch.equal(attend(scores, valid, True, False, 5), scores * valid)


def test_fixed_memory_forward_does_not_depend_on_trailing_empty_slots(task1):
    vocab, data = task1
    torch.manual_seed(0)
    model = MemN2N(vocab_size=len(vocab), embedding_dim=8, max_memory=30, mask_empty=False).eval()
    stories, queries = data.stories[:6], data.queries[:6]
    longer = torch.cat([stories, torch.zeros(6, 30 - stories.shape[1], stories.shape[2], dtype=torch.long)], 1)
    assert torch.allclose(model(stories, queries), model(longer, queries), atol=1e-5)
    assert (model.attention(stories, queries).sum(-1) < 1).all()  # mass left on the empty slots


def test_random_noise_moves_temporal_indices_in_training_only(task1):
    vocab, data = task1
    torch.manual_seed(1)
    model = MemN2N(vocab_size=len(vocab), embedding_dim=8, max_memory=20, random_noise=0.5)
    stories, queries = data.stories[:8], data.queries[:8]
    assert not torch.equal(model(stories, queries), model(stories, queries))
    model.eval()
    assert torch.equal(model(stories, queries), model(stories, queries))
    quiet = MemN2N(vocab_size=len(vocab), embedding_dim=8, max_memory=20, random_noise=0.0)
    assert torch.equal(quiet(stories, queries), quiet(stories, queries))


def test_tiny_babi_task1_loss_decreases(task1):
    vocab, data = task1
    torch.manual_seed(0)
    model = MemN2N(vocab_size=len(vocab), embedding_dim=16, hops=2, max_memory=20, linear_start=True)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for step in range(40):
        if step == 20:
            model.end_linear_start()
        loss = F.cross_entropy(model(data.stories, data.queries), data.answers)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="MemN2NConfig.hops"):
        MemN2NConfig(vocab_size=10, hops=0)
    with pytest.raises(ValueError, match="MemN2NConfig.random_noise"):
        MemN2NConfig(vocab_size=10, random_noise=2.0)
    with pytest.raises(ValueError, match="MemN2NConfig.random_noise_blanks: expected one of ceil, uniform"):
        MemN2NConfig(vocab_size=10, random_noise_blanks="half")
    with pytest.raises(ValueError, match="max_memory"):
        MemN2N(vocab_size=10, max_memory=2)(torch.ones(1, 3, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.long))


def test_sequence_learners_return_logits_and_train_on_copy():
    task = CopyTask(num_bits=3, min_length=1, max_length=3, seed=0)
    batch = task.sample(4)
    for kind in ("lstm", *CORES):
        extra = {} if kind == "lstm" else {"memory_size": 8, "word_size": 4}
        torch.manual_seed(0)
        model = make_sequence_learner(kind, task.input_size, task.output_size, hidden_size=16, **extra)
        logits = model(batch.inputs)
        assert logits.shape == batch.targets.shape
        masked_bce_loss(logits, batch.targets, batch.mask).backward()
    torch.manual_seed(0)
    lstm = LSTMLearner(input_size=task.input_size, output_size=task.output_size, hidden_size=32)
    optimiser = torch.optim.Adam(lstm.parameters(), lr=0.01)
    first = None
    for _ in range(30):
        loss = masked_bce_loss(lstm(batch.inputs), batch.targets, batch.mask)
        first = first if first is not None else loss.item()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert loss.item() < first
    with pytest.raises(ValueError, match="sequence learner kind"):
        make_sequence_learner("gru", 2, 2)


def test_registry_position_formula_reference_uses_the_padded_width():
    from clmem.learners.registry import MODELS

    build = MODELS.get("memn2n").builder
    assert build((6, 7), 30).memn2n.config.position_words == 0
    net = build((6, 7), 30, position_formula="reference", embedding_dim=4)
    assert net.memn2n.config.position_words == 7 and net.memn2n.config.embedding_dim == 4
    x = torch.randint(1, 30, (2, 6, 7))
    assert net(x).shape == (2, 30)
