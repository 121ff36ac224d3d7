"""Continual streams of memory tasks (clmem.tasks.streams): layouts, orders, metrics, bAbI data."""
from pathlib import Path

import pytest
import torch

from clmem.catalog import BENCHMARKS
from clmem.options import ConfigError
from clmem.tasks.streams import (IGNORE, ALGORITHMIC_TASKS, AnswerError, BitsPerSequence, SequenceError,
                                 masked_bit_loss, parse_groups)

REAL_BABI = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "babi"
SMALL_ALGO = {"num_bits": 3, "max_length": 3, "max_repeats": 2, "max_items": 3, "train_samples": 16,
              "test_samples": 8}


def build(name, seed=0, **options):
    return BENCHMARKS.get(name).builder(seed, **options)


def test_algorithmic_experiences_follow_tasks_and_order():
    stream = build("continual_algorithmic", tasks="priority_sort,copy", **SMALL_ALGO)
    train, test = stream.benchmark.train_stream, stream.benchmark.test_stream
    assert len(train) == len(test) == 2
    # info[:, 0] is the task index in ALGORITHMIC_TASKS: the experiences keep the given order
    first = [int(exp.dataset[0][2][0]) for exp in train]
    assert first == [ALGORITHMIC_TASKS.index("priority_sort"), ALGORITHMIC_TASKS.index("copy")]
    assert len(train[0].dataset) == 16 and len(test[1].dataset) == 8
    x, y, info, task_label = train[1].dataset[0]
    assert tuple(x.shape) == stream.input_shape and x.shape[-1] == 3 + 2
    assert y.shape[-1] == stream.num_classes == 3 + 1
    assert stream.metric == "bits_per_sequence" and not stream.higher_is_better
    # copy never scores the end-marker channel; only {0, 1, IGNORE} occur
    assert bool((y[:, 3] == IGNORE).all()) and set(torch.unique(y).tolist()) <= {0.0, 1.0, IGNORE}


def test_algorithmic_random_order_is_seeded_permutation():
    orders = []
    for seed in (0, 0, 3):
        stream = build("continual_algorithmic", seed=seed, order="random", **SMALL_ALGO)
        orders.append([int(exp.dataset[0][2][0]) for exp in stream.benchmark.train_stream])
    assert orders[0] == orders[1] and sorted(orders[0]) == [0, 1, 2, 3]
    assert orders[2] != orders[0]  # seed 3 permutes differently (checked once, fixed seeds)


def test_algorithmic_copy_scores_exactly_the_output_phase():
    stream = build("continual_algorithmic", tasks="copy", **SMALL_ALGO)
    for x, y, info, _ in (stream.benchmark.train_stream[0].dataset[i] for i in range(8)):
        length = int(info[1])
        scored = (y[:, :3] != IGNORE).all(dim=1)
        assert scored.nonzero().flatten().tolist() == list(range(length + 1, 2 * length + 1))
        assert torch.equal(y[length + 1:2 * length + 1, :3], x[:length, :3])  # target = the input bits


def test_unknown_task_and_groups_are_rejected():
    with pytest.raises(ValueError, match="unknown algorithmic task 'sorting'"):
        build("continual_algorithmic", tasks="copy,sorting", **SMALL_ALGO)
    with pytest.raises(ValueError, match="distinct bAbI tasks"):
        parse_groups("1,2", "1,2;2")
    assert parse_groups("3,1", None) == [[3], [1]] and parse_groups("x", "1,2; 6 ;7,15") == [[1, 2], [6], [7, 15]]
    with pytest.raises(ValueError, match="no offline generator"):
        build("continual_babi", tasks="1,3", train_questions=5, test_questions=5)


def _run_metric(metric, outputs, targets):
    class FakeStrategy:  # what an Avalanche metric reads during evaluation
        pass

    s = FakeStrategy()
    metric.reset()
    for out, y in zip(outputs, targets):
        s.mb_output, s.mb_y = out, y
        metric.update(s)
    return metric.result()


def test_bits_per_sequence_and_error_metrics_by_hand():
    # two sequences, 2 steps x 2 channels; IGNORE entries never count
    y = torch.tensor([[[1.0, 0.0], [IGNORE, IGNORE]],
                      [[1.0, 1.0], [0.0, IGNORE]]])
    logits = torch.tensor([[[2.0, 3.0], [5.0, 5.0]],     # 1 wrong bit (channel 1), ignored step
                           [[-1.0, -1.0], [4.0, -9.0]]])  # 3 wrong bits
    assert _run_metric(BitsPerSequence(), [logits], [y]) == pytest.approx((1 + 3) / 2)
    # a second batch of one perfect sequence: mean over all 3 sequences
    perfect = (torch.tensor([[[1.0, 0.0], [IGNORE, IGNORE]]]), torch.tensor([[[9.0, -9.0], [9.0, 9.0]]]))
    assert _run_metric(BitsPerSequence(), [logits, perfect[1]], [y, perfect[0]]) == pytest.approx(4 / 3)
    assert _run_metric(SequenceError(), [logits, perfect[1]], [y, perfect[0]]) == pytest.approx(2 / 3)
    assert str(BitsPerSequence()) == "BitsPerSeq_Exp"
    # the masked loss ignores IGNORE entries: equal to BCE on the 5 scored entries
    scored = y != IGNORE
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[scored], y[scored])
    assert masked_bit_loss(logits, y).item() == pytest.approx(expected.item(), rel=1e-6)
    # answer error: [B, V] logits, or [B, T, V] read at the last step
    answers = torch.tensor([2, 0, 1])
    flat = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    assert _run_metric(AnswerError(), [flat], [answers]) == pytest.approx(1 / 3)
    seq = torch.stack([torch.zeros_like(flat), flat], dim=1)
    assert _run_metric(AnswerError(), [seq], [answers]) == pytest.approx(1 / 3)


def test_babi_generated_groups_order_and_layouts(tmp_path):
    common = dict(train_questions=20, test_questions=10, cache_dir=str(tmp_path), max_memory=6)
    stream = build("continual_babi", groups="6;1,2", **common)
    train = stream.benchmark.train_stream
    assert len(train) == 2 and len(train[0].dataset) == 20 and len(train[1].dataset) == 40
    tasks = [sorted({int(train[e].dataset[i][2][0]) for i in range(len(train[e].dataset))}) for e in range(2)]
    assert tasks == [[6], [1, 2]]
    x, y, info, _ = train[1].dataset[0]
    assert x.dtype == torch.long and tuple(x.shape) == stream.input_shape and x.shape[0] <= 6 + 1
    assert 0 < int(y) < stream.num_classes and stream.metric == "error" and not stream.higher_is_better
    # cached data is reused; the sequence encoding is one-hot and left-padded (last step = <answer>)
    seq = build("continual_babi", tasks="15,7", encoding="sequence", **common)
    assert [int(exp.dataset[0][2][0]) for exp in seq.benchmark.test_stream] == [15, 7]
    x, y, _, _ = seq.benchmark.test_stream[0].dataset[3]
    assert tuple(x.shape) == seq.input_shape and x.shape[1] == seq.num_classes
    assert x[-1].argmax() == 4 and x[-1].sum() == 1  # id 4 is <answer>
    joint = build("babi_joint", tasks="1,6,7", **common)
    assert len(joint.benchmark.train_stream) == 1 and len(joint.benchmark.train_stream[0].dataset) == 60


def test_babi_real_files():
    if not (REAL_BABI / "en" / "qa3_three-supporting-facts_train.txt").is_file():
        pytest.skip(f"real bAbI not found at {REAL_BABI} (shared data absent on this machine)")
    stream = build("continual_babi", tasks="3,20", data_root=str(REAL_BABI), train_questions=50,
                   test_questions=30, max_memory=50)
    test = stream.benchmark.test_stream
    assert len(test) == 2 and [len(e.dataset) for e in test] == [30, 30]
    assert {int(test[1].dataset[i][2][0]) for i in range(30)} == {20}
    assert stream.input_shape[0] > 7  # task 3 stories are long: more memories than the generated tasks


def test_stream_options_validate_in_experiment_files():
    from clmem.config import Experiment

    raw = {"name": "t", "benchmark": {"name": "continual_babi", "encoding": "words"},
           "model": {"name": "memn2n"}, "strategy": {"name": "sequence"}}
    with pytest.raises(ConfigError, match="benchmark.encoding"):
        Experiment.from_dict(raw)
