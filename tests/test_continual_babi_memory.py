"""experiments/continual_babi_memory.yaml validates, the pairs it leaves out are refused in one line, and the
sentence-per-step DNC (``sentence_dnc``) it compares reads its steps as documented (hand-computed)."""
from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import pytest
import torch

from clmem.config import Experiment, load_file
from clmem.learners.sentence_dnc import sentence_steps
from clmem.models import build_model
from clmem.options import ConfigError

ROOT = Path(__file__).resolve().parents[1]
FILE = ROOT / "experiments" / "continual_babi_memory.yaml"


def _raw() -> dict:
    return load_file(FILE)


def test_file_expands_to_every_learner_under_every_strategy():
    trials = Experiment.from_dict(_raw()).trials
    pairs = {(t["model"]["name"], t["strategy"]["name"]) for t in trials}
    models = ["sentence_dnc", "memn2n", "dmn_plus", "kv_memnn", "story_transformer", "igor_qa"]
    strategies = ["sequence", "ewc_controller", "sequence_replay", "episodic_replay"]
    assert pairs == {(m, s) for m in models for s in strategies}
    assert len(trials) == 24
    assert {t["benchmark"]["encoding"] for t in trials} == {"memnet"}  # one stream, the same data for all
    dnc = next(t for t in trials if t["model"]["name"] == "sentence_dnc")["model"]
    assert dnc["layer_norm"] is True and dnc["masked_content"] is False


@pytest.mark.parametrize("section, name, key, words", [
    ("model", "igor", "model.name", "takes image streams, not qa_memnet"),
    ("model", "dnc", "model.name", "qa_sequence"),
    ("model", "sparse_dnc", "model.name", "qa_sequence"),
    ("strategy", "hopfield_kv", "strategy.name", "cannot train on qa_memnet"),
    ("strategy", "ncm", "strategy.name", "cannot train on qa_memnet"),
    ("strategy", "der", "strategy.name", "cannot train on qa_memnet"),
])
def test_left_out_pairs_are_refused_in_one_line(section, name, key, words):
    raw = copy.deepcopy(_raw())
    raw[section] = {"name": name}
    with pytest.raises(ConfigError) as err:
        Experiment.from_dict(raw)
    message = str(err.value)
    assert "\n" not in message and key in message and words in message


def test_sentence_dnc_bad_option_is_one_line():
    raw = copy.deepcopy(_raw())
    raw["model"]["sentence_dnc"]["embedding_dim"] = 0
    with pytest.raises(ConfigError, match=r"model\.sentence_dnc\.embedding_dim") as err:
        Experiment.from_dict(raw)
    assert "\n" not in str(err.value)


def test_sentence_steps_hand_computed():
    # V = 4, E = 2; rows: slot 0 (most recent) = word 1, slot 1 (oldest) = words 2 3, question = word 3.
    table = torch.tensor([[0.0, 0.0], [2.0, 4.0], [1.0, 1.0], [2.0, 2.0]])
    x = torch.tensor([[[1, 0], [2, 3], [3, 0]]])
    # PE l_kj = (1 - j/J) + (k/d)(2j/J - 1): one word -> [1/2, 1]; two words -> j=1: [.5, .5], j=2: [.5, 1]
    expected = torch.tensor([[[1.5, 2.5, 0.0],   # oldest: 0.5 * [1, 1] + [0.5, 1] * [2, 2]
                              [1.0, 4.0, 0.0],   # most recent: [2, 4] * [0.5, 1]
                              [1.0, 2.0, 1.0]]])  # the question, flagged
    assert torch.allclose(sentence_steps(x, table), expected)
    empty = torch.tensor([[[1, 0], [0, 0], [3, 0]]])  # an empty slot comes first, as zeros
    assert torch.allclose(sentence_steps(empty, table)[0, 0], torch.zeros(3))


def test_answer_steps_repeat_the_flagged_question_step():
    table = torch.tensor([[0.0, 0.0], [2.0, 4.0], [1.0, 1.0], [2.0, 2.0]])
    x = torch.tensor([[[1, 0], [2, 3], [3, 0]]])
    steps = sentence_steps(x, table, answer_steps=2)
    assert steps.shape == (1, 5, 3)
    assert torch.equal(steps[:, :3], sentence_steps(x, table))
    assert torch.allclose(steps[0, 3:], torch.tensor([[1.0, 2.0, 1.0], [1.0, 2.0, 1.0]]))


def test_time_encoding_adds_each_slots_age_to_its_sentence_only():
    table = torch.tensor([[0.0, 0.0], [2.0, 4.0], [1.0, 1.0], [2.0, 2.0]])
    time_table = torch.tensor([[10.0, 20.0], [30.0, 40.0], [50.0, 60.0]])  # M' = 3 >= M = 2
    x = torch.tensor([[[1, 0], [2, 3], [3, 0]], [[1, 0], [0, 0], [3, 0]]])
    steps = sentence_steps(x, table, time_table=time_table)
    # story 0: oldest = slot 1 -> [1.5, 2.5] + T[1]; recent = slot 0 -> [1, 4] + T[0]; question unchanged
    assert torch.allclose(steps[0], torch.tensor([[31.5, 42.5, 0.0], [11.0, 24.0, 0.0], [1.0, 2.0, 1.0]]))
    # story 1: slot 1 is empty and stays zeros
    assert torch.allclose(steps[1], torch.tensor([[0.0, 0.0, 0.0], [11.0, 24.0, 0.0], [1.0, 2.0, 1.0]]))
    with pytest.raises(ValueError, match=r"sentence_steps\.time_table: expected at least 2 rows, got 1"):
        sentence_steps(x, table, time_table=time_table[:1])


def test_time_encoding_and_input_dropout_options():
    options = dict(embedding_dim=4, hidden_size=8, memory_size=4, word_size=4)
    x = torch.tensor([[[1, 0], [2, 3], [3, 0]], [[2, 2], [0, 0], [1, 0]]])
    torch.manual_seed(0)
    model = build_model("sentence_dnc", (3, 2), 4, time_encoding=True, input_dropout=0.5, **options)
    assert model.time_table.shape == (2, 4)
    model.eval()  # no dropout at evaluation: the output is the core's on the time-encoded steps
    full, _ = model.core(sentence_steps(x, model.embedding.weight, time_table=model.time_table))
    assert torch.allclose(model(x), full[:, -1])
    model.train()
    model(x).sum().backward()
    assert model.time_table.grad.abs().sum() > 0
    assert build_model("sentence_dnc", (3, 2), 4, **options).time_table is None
    for key, value, words in (("time_encoding", 1, "true or false"), ("input_dropout", 1.0, "in [0, 1)")):
        with pytest.raises(ValueError, match=rf"SentenceDNC\.{key}: expected .*{re.escape(words)}"):
            build_model("sentence_dnc", (3, 2), 4, **{key: value}, **options)


def test_sentence_dnc_answers_at_the_last_answer_step():
    torch.manual_seed(0)
    options = dict(embedding_dim=4, hidden_size=8, memory_size=4, word_size=4)
    plain = build_model("sentence_dnc", (3, 2), 4, **options)
    torch.manual_seed(0)
    hops = build_model("sentence_dnc", (3, 2), 4, answer_steps=2, **options)
    x = torch.tensor([[[1, 0], [2, 3], [3, 0]], [[2, 2], [0, 0], [1, 0]]])
    table = plain.embedding.weight
    full, _ = plain.core(sentence_steps(x, table, answer_steps=2))
    assert torch.allclose(hops(x), full[:, -1]) and torch.allclose(plain(x), full[:, 2])
    with pytest.raises(ValueError, match=r"SentenceDNC\.answer_steps: expected an int >= 0, got -1"):
        build_model("sentence_dnc", (3, 2), 4, answer_steps=-1, **options)


def test_sentence_dnc_answers_at_the_question_and_refuses_bad_ids():
    torch.manual_seed(0)
    model = build_model("sentence_dnc", (3, 2), 4, embedding_dim=4, hidden_size=8, memory_size=4, word_size=4)
    x = torch.tensor([[[1, 0], [2, 3], [3, 0]], [[2, 2], [0, 0], [1, 0]]])
    logits = model(x)
    assert logits.shape == (2, 4)
    logits.sum().backward()
    assert model.embedding.weight.grad[1:].abs().sum() > 0 and model.embedding.weight.grad[0].abs().sum() == 0
    with pytest.raises(ValueError, match=r"SentenceDNC\.forward\.x: expected word ids in \[0, 4\)"):
        model(torch.full((1, 3, 2), 4))


def test_benchmark_target_line():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _experiment_mode import _target

    run = lambda m, s, acc: {"model": m, "strategy": s, "summary": {"ACC": acc}}  # noqa: E731
    runs = [run("memn2n", "sequence", 0.6), run("memn2n", "sequence_replay", 0.2),
            run("sentence_dnc", "sequence", 0.9), run("sentence_dnc", "episodic_replay", 0.25)]
    assert "**not met**" in _target(runs)[0] and "+0.050" in _target(runs)[0]
    assert "**met**" in _target(runs + [run("sentence_dnc", "ewc_controller", 0.15)])[0]
