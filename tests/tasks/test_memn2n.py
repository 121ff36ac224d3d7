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
    u = model._encode(queries, model.embeddings[0])
    raw = torch.einsum("nmd,nd->nm", model._memory(stories, 0), u) * stories.ne(0).any(-1)
    assert torch.allclose(linear[:, 0], raw)
    model.end_linear_start()
    assert torch.allclose(model.attention(stories, queries).sum(-1), torch.ones(4, 2))


def test_random_noise_inserts_empty_memories_in_training_only(task1):
    vocab, data = task1
    model = MemN2N(vocab_size=len(vocab), embedding_dim=8, max_memory=20, random_noise=0.5)
    valid = data.stories.ne(0).any(-1)
    torch.manual_seed(1)
    noisy, noisy_valid = model._insert_noise(data.stories, valid)
    n_real = valid.sum(1)
    assert (noisy.ne(0).any(-1).sum(1) == torch.clamp(n_real, max=noisy.shape[1])).all()
    assert (noisy_valid.sum(1) >= noisy.ne(0).any(-1).sum(1)).all() and noisy_valid.sum() > valid.sum()
    model.eval()
    assert torch.equal(model(data.stories[:3], data.queries[:3]), model(data.stories[:3], data.queries[:3]))


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
