"""bAbI as an evaluation for sequence learners (issue 19 item 2): validation split from training data (whole
stories), ``en-10k`` with every training question, the validation stream's per-task metrics, the answer step."""
from pathlib import Path

import pytest
import torch

from clmem.catalog import BENCHMARKS
from clmem.config import Experiment
from clmem.options import ConfigError
from clmem.tasks.babi import BabiQuestion
from clmem.tasks.stream_metrics import report_metrics
from clmem.tasks.streams import split_validation

REAL_BABI = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "babi"


def build(name, seed=0, **options):
    return BENCHMARKS.get(name).builder(seed, **options)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One folder of generated bAbI files for the module (generating them is the slow part)."""
    return str(tmp_path_factory.mktemp("babi-generated"))


def question(line_id: int, task: int = 1) -> BabiQuestion:
    return BabiQuestion(task, line_id, (("a", "b"),), (1,), ("where",), ("x",), (1,))


def test_split_validation_takes_whole_stories_from_the_end():
    # stories: (3, 6), (3, 6, 9), (3); a new story starts where the line id does not grow
    qs = [question(i) for i in (3, 6, 3, 6, 9, 3)]
    split = split_validation({"train": {1: qs}, "test": {1: qs[:2]}}, 0.3)
    # ceil(0.3 * 6) = 2 would cut at index 4, inside the second story: moved on to index 5
    assert split["train"][1] == qs[:5] and split["valid"][1] == qs[5:] and split["test"][1] == qs[:2]
    assert split_validation({"train": {1: qs}}, 0.0) == {"train": {1: qs}}
    # 0.7: ceil(4.2) = 5 questions, cut at index 1 (inside the first story) -> the second story starts at 2
    assert split_validation({"train": {1: qs}}, 0.7)["valid"][1] == qs[2:]


def test_split_validation_refuses_bad_fractions():
    qs = [question(i) for i in (3, 6, 9)]  # one story: any cut leaves an empty split
    with pytest.raises(ValueError, match=r"^benchmark.validation_fraction: .* leaves an empty split"):
        split_validation({"train": {1: qs}}, 0.5)
    with pytest.raises(ValueError, match=r"^benchmark.validation_fraction: expected a float in \[0, 1\)"):
        split_validation({"train": {1: qs}}, 1.0)


def test_joint_stream_has_a_validation_stream(cache):
    stream = build("babi_joint", tasks="1,6", train_questions=40, test_questions=10, cache_dir=cache,
                   max_memory=4, encoding="sequence", validation_fraction=0.25)
    train, valid = stream.benchmark.train_stream, stream.benchmark.valid_stream
    assert len(train) == len(valid) == 1
    n_train, n_valid = len(train[0].dataset), len(valid[0].dataset)
    assert n_train + n_valid == 80 and 20 <= n_valid < 40
    assert {int(valid[0].dataset[i][2][0]) for i in range(n_valid)} == {1, 6}  # every task gives validation data
    x, y, _, _ = valid[0].dataset[0]
    assert tuple(x.shape) == stream.input_shape and x[-1].argmax() == 4  # answer step last: the <answer> token
    assert not hasattr(build("babi_joint", tasks="1", train_questions=8, test_questions=4,
                             cache_dir=cache).benchmark, "valid_stream")


def test_report_metrics_names_the_validation_stream():
    results = {"BabiError_qa1/eval_phase/valid_stream": 0.25, "BabiMeanError/eval_phase/valid_stream": 0.2,
               "BabiFailedTasks/eval_phase/valid_stream": 2.0, "BabiMeanError/eval_phase/test_stream": 0.3}
    assert report_metrics(results) == {"babi_valid_error_qa1": 0.25, "babi_valid_mean_error": 0.2,
                                       "babi_valid_failed_tasks": 2.0, "babi_mean_error": 0.3}


def test_validation_fraction_is_checked_in_experiment_files():
    raw = {"name": "t", "benchmark": {"name": "babi_joint", "validation_fraction": 1.5},
           "model": {"name": "memn2n"}, "strategy": {"name": "sequence"}}
    with pytest.raises(ConfigError, match="benchmark.validation_fraction"):
        Experiment.from_dict(raw)


def test_generated_data_needs_a_question_count(cache):
    with pytest.raises(ValueError, match=r"^benchmark.train_questions: expected an int"):
        build("babi_joint", tasks="1", train_questions=None, cache_dir=cache)


def test_en10k_reads_every_training_question():
    if not (REAL_BABI / "en-10k" / "qa1_single-supporting-fact_train.txt").is_file():
        pytest.skip(f"bAbI en-10k not found at {REAL_BABI} (shared data absent on this machine)")
    stream = build("babi_joint", tasks="1", data_root=str(REAL_BABI), layout="en-10k", train_questions=None,
                   test_questions=None, encoding="sequence", validation_fraction=0.1)
    bench = stream.benchmark
    n_train, n_valid = len(bench.train_stream[0].dataset), len(bench.valid_stream[0].dataset)
    assert n_train + n_valid == 10000 and 1000 <= n_valid < 1010 and len(bench.test_stream[0].dataset) == 1000
    assert torch.equal(bench.test_stream[0].dataset[0][0][-1].nonzero().flatten(), torch.tensor([4]))
