import math

import numpy as np
import pytest
import torch

from clmem.tasks import (
    AssociativeRecallTask,
    CopyConfig,
    CopyTask,
    Curriculum,
    PrioritySortTask,
    RepeatCopyConfig,
    RepeatCopyTask,
    bits_per_sequence,
    evaluate_generalisation,
    make_task,
    masked_bce_loss,
)


def test_copy_target_is_input_after_delimiter():
    task = CopyTask(num_bits=4, min_length=3, max_length=7, seed=1)
    batch = task.sample(8)
    assert batch.inputs.shape[-1] == 5 and batch.targets.shape[-1] == 4
    for x, y, m in zip(*batch):
        length = int(m.sum())
        delim = int(torch.nonzero(x[:, 4])[0])
        assert delim == length and x[:, 4].sum() == 1
        assert torch.equal(y[delim + 1:delim + 1 + length], x[:length, :4])
        assert m[delim + 1:delim + 1 + length].all() and not m[:delim + 1].any()
        assert not x[delim + 1:].any()  # no input during the output phase


def test_batch_is_padded_to_longest_and_seeded():
    a = CopyTask(num_bits=3, min_length=1, max_length=9, seed=5).sample(6)
    b = CopyTask(num_bits=3, min_length=1, max_length=9, seed=5).sample(6)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    longest = int(a.mask.sum(1).max())
    assert a.inputs.shape[1] == 2 * longest + 1


def test_repeat_copy_repeats_exactly_n_times_then_end_marker():
    task = RepeatCopyTask(num_bits=3, min_length=2, max_length=2, min_repeats=1, max_repeats=5, seed=0)
    batch = task.sample_repeats(2, length=2, repeats=3)
    x, y, m = batch.inputs[0], batch.targets[0], batch.mask[0]
    assert x.shape == (2 + 1 + 6 + 1, 5)
    seq = x[:2, :3]
    assert torch.equal(y[3:9, :3], seq.repeat(3, 1))
    assert not y[3:9, 3].any() and y[9, 3] == 1 and not y[9, :3].any()
    assert x[2, 3] == 1 and math.isclose(float(x[2, 4]), 0.0, abs_tol=1e-6)  # 3 is the mean of 1..5
    assert m[3:].all() and not m[:3].any()


def test_repeat_count_normalisation_has_zero_mean_unit_variance():
    c = RepeatCopyConfig(min_repeats=1, max_repeats=10)
    values = np.array([c.normalise_repeats(n) for n in range(1, 11)])
    assert abs(values.mean()) < 1e-9 and abs(values.std() - 1.0) < 1e-9


def test_associative_recall_answer_is_item_after_query():
    task = AssociativeRecallTask(num_bits=4, item_length=2, min_items=3, max_items=5, seed=3)
    batch = task.sample(6)
    for x, y, m in zip(*batch):
        item_starts = torch.nonzero(x[:, 4]).flatten().tolist()
        query_marks = torch.nonzero(x[:, 5]).flatten().tolist()
        assert len(query_marks) == 2 and query_marks[1] - query_marks[0] == 3
        items = [x[s + 1:s + 3, :4] for s in item_starts]
        query = x[query_marks[0] + 1:query_marks[1], :4]
        matches = [i for i, item in enumerate(items) if torch.equal(item, query)]
        out = torch.nonzero(m).flatten()
        assert out.tolist() == [query_marks[1] + 1, query_marks[1] + 2]
        assert any(i + 1 < len(items) and torch.equal(y[out], items[i + 1]) for i in matches)


def test_priority_sort_outputs_top_k_by_descending_priority():
    task = PrioritySortTask(num_bits=3, min_length=5, max_length=5, num_outputs=3, seed=2)
    x, y, m = (t[0] for t in task.sample(1))
    prio = x[:5, 3].numpy()
    assert (np.abs(prio) <= 1).all() and x[5, 4] == 1
    expected = x[:5, :3][np.argsort(-prio)[:3]]
    assert torch.equal(y[6:9], expected) and m.tolist() == [False] * 6 + [True] * 3


def test_masked_bce_loss_hand_computed():
    logits = torch.tensor([[[0.0, 2.0], [5.0, -5.0]]])
    targets = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    mask = torch.tensor([[True, False]])
    expected = (math.log(2) + (2 + math.log1p(math.exp(-2)))) / 2  # only step 0 counts
    assert math.isclose(float(masked_bce_loss(logits, targets, mask)), expected, rel_tol=1e-6)


def test_bits_per_sequence_hand_computed():
    logits = torch.tensor([[[1.0, -1.0], [1.0, 1.0]], [[-1.0, -1.0], [-1.0, -1.0]]])
    targets = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [1.0, 1.0]]])
    mask = torch.tensor([[True, True], [True, False]])
    # sequence 0: 1 + 2 wrong bits; sequence 1: 0 wrong (step 1 masked out) -> mean 1.5
    assert bits_per_sequence(logits, targets, mask) == 1.5


def test_curriculum_grows_when_error_is_low_up_to_maximum():
    cur = Curriculum(start=2, maximum=4, step=2, threshold=0.5, window=2)
    assert not cur.update(0.1) and cur.current == 2
    assert cur.update(0.0) and cur.current == 4
    assert not cur.update(0.9) and not cur.update(0.9) and cur.current == 4
    task = CopyTask(min_length=1, max_length=20, seed=0)
    batch = task.sample(16, max_length=cur.current)
    assert int(batch.mask.sum(1).max()) <= 4


def test_curriculum_does_not_grow_on_high_error():
    cur = Curriculum(start=1, maximum=10, step=1, threshold=0.2, window=3)
    for _ in range(5):
        cur.update(0.5)
    assert cur.current == 1


def _copy_oracle(x):
    """Reads the delimiter position and replays the input: a perfect copy model (logits +-10)."""
    out = torch.full((x.shape[0], x.shape[1], 4), -10.0)
    for b in range(x.shape[0]):
        length = int(torch.nonzero(x[b, :, 4])[0])
        out[b, length + 1:2 * length + 1] = x[b, :length, :4] * 20 - 10
    return out


def test_evaluate_generalisation_on_longer_sequences():
    task = make_task("copy", num_bits=4, max_length=5, seed=0)
    assert evaluate_generalisation(_copy_oracle, task, (10, 20), 4) == {10: 0.0, 20: 0.0}
    zero = evaluate_generalisation(lambda x: (torch.full(x.shape[:2] + (4,), -1.0), None), task, (10, 20), 4)
    assert set(zero) == {10, 20}
    assert 0.25 * 4 * 20 < zero[20] < 0.75 * 4 * 20  # all-zero guesses: about half of the bits wrong


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="CopyConfig.max_length"):
        CopyConfig(min_length=5, max_length=2)
    with pytest.raises(ValueError, match="num_bits"):
        CopyConfig(num_bits=0)
    with pytest.raises(ValueError, match="algorithmic task"):
        make_task("sort")
