"""experiments/continual_babi_dnc.yaml validates: the sentence-level DNC and MemN2N under the same four strategies
on one en-10k stream (the same training data for both), and its odd values are refused in one line."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

from clmem.config import Experiment, load_file
from clmem.options import ConfigError

FILE = Path(__file__).resolve().parents[1] / "experiments" / "continual_babi_dnc.yaml"


def test_file_crosses_the_dnc_and_memn2n_with_every_strategy_on_one_stream():
    trials = Experiment.from_dict(load_file(FILE)).trials
    pairs = {(t["model"]["name"], t["strategy"]["name"]) for t in trials}
    strategies = ["sequence", "ewc_controller", "sequence_replay", "episodic_replay"]
    assert pairs == {(m, s) for m in ("sentence_dnc", "memn2n") for s in strategies}
    benchmarks = {tuple(sorted(t["benchmark"].items())) for t in trials}
    assert len(benchmarks) == 1  # the same data for every trial
    bench = trials[0]["benchmark"]
    assert (bench["layout"], bench["train_questions"], bench["encoding"]) == ("en-10k", None, "memnet")
    dnc = next(t for t in trials if t["model"]["name"] == "sentence_dnc")["model"]
    assert (dnc["memory_size"], dnc["word_size"], dnc["num_reads"], dnc["layer_norm"]) == (32, 32, 4, True)


@pytest.mark.parametrize("section, key, value, field", [
    ("benchmark", "layout", "en-100k", "benchmark.layout"),
    ("benchmark", "train_questions", 0, "benchmark.train_questions"),
    ("strategy", "lr", float("nan"), "strategy.lr"),
    ("strategy", "train_epochs", "four", "strategy.train_epochs"),
])
def test_odd_values_are_refused_in_one_line(section, key, value, field):
    raw = copy.deepcopy(load_file(FILE))
    raw[section][key] = value
    with pytest.raises(ConfigError) as err:
        Experiment.from_dict(raw)
    assert "\n" not in str(err.value) and field in str(err.value)


def test_unknown_dnc_option_is_named():
    raw = copy.deepcopy(load_file(FILE))
    raw["model"]["sentence_dnc"]["memory_slots"] = 32
    with pytest.raises(ConfigError, match=r"model\.sentence_dnc\.memory_slots") as err:
        Experiment.from_dict(raw)
    assert "\n" not in str(err.value)
