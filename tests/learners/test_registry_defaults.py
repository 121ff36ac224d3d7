"""``build_model`` and an experiment file build the same model (registry defaults), and ``mann`` defaults to
Santoro et al.'s sizes with one write head per read head."""
import pytest

from clmem.config import Experiment
from clmem.models import build_model
from clmem.options import ConfigError


def _trial_model(model: dict) -> dict:
    raw = {"name": "defaults", "benchmark": {"name": "continual_algorithmic", "tasks": "copy", "num_bits": 3,
                                             "max_length": 3, "train_samples": 4, "test_samples": 4},
           "model": model, "strategy": {"name": "sequence"}, "seeds": [0]}
    return Experiment.from_dict(raw).trials[0]["model"]


def test_mann_defaults_are_the_papers_sizes():
    config = build_model("mann", (10, 6), 5).core.config
    assert (config.hidden_size, config.memory_size, config.word_size) == (200, 128, 40)
    assert (config.num_reads, config.num_writes) == (4, 4)
    assert build_model("mann", (10, 6), 5, num_reads=2).core.config.num_writes == 2  # null: one per read head
    assert build_model("mann", (10, 6), 5, num_reads=3, num_writes=1).core.config.num_writes == 1


@pytest.mark.parametrize("name", ["ntm", "dnc", "mann", "sparse_dnc", "gated"])
def test_build_model_and_an_experiment_file_agree(name):
    resolved = {k: v for k, v in _trial_model({"name": name}).items() if k != "name"}
    by_file = build_model(name, (10, 6), 5, **resolved).core.config
    by_call = build_model(name, (10, 6), 5).core.config
    assert by_file == by_call


def test_mann_write_heads_above_read_heads_are_refused_in_one_line():
    with pytest.raises(ConfigError) as info:
        _trial_model({"name": "mann", "num_reads": 2, "num_writes": 3})
    assert str(info.value).startswith("model.num_writes: expected an int <= num_reads (2)")
    assert "\n" not in str(info.value)
