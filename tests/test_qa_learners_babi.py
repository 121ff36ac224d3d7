"""benchmarks/qa_learners_babi.py: the validation split holds out whole stories, ``--set`` parses its values."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pytest

from clmem.tasks.babi import load_babi_task, questions_of

ROOT = Path(__file__).resolve().parents[1]
BABI = ROOT.parent / "shared" / "data" / "babi"
sys.path.insert(0, str(ROOT / "benchmarks"))
import qa_learners_babi as Q  # noqa: E402


@pytest.fixture
def stories():
    if not (BABI / "en" / "qa2_two-supporting-facts_train.txt").is_file():
        pytest.skip(f"bAbI not found at {BABI} (shared data absent on this machine)")
    return load_babi_task(2, "train", BABI, "en")


def _story_of(stories):
    return {id(q): i for i, s in enumerate(stories) for q in s.questions}


def test_story_split_holds_out_whole_stories(stories):
    fit, val = Q.validation_split(stories, "stories", np.random.default_rng(0))
    owner = _story_of(stories)
    held = {owner[id(q)] for q in val}
    assert len(held) == len(stories) // 10
    assert held.isdisjoint(owner[id(q)] for q in fit)
    assert len(fit) + len(val) == len(questions_of(stories))


def test_question_split_shares_stories_with_training(stories):
    fit, val = Q.validation_split(stories, "questions", np.random.default_rng(0))
    owner = _story_of(stories)
    assert len(val) == len(questions_of(stories)) // 10
    assert {owner[id(q)] for q in val} & {owner[id(q)] for q in fit}  # the leak the default avoids


@pytest.mark.parametrize("text, expected", [("layer_norm=false", ("layer_norm", False)),
                                            ("bypass_dropout=0.2", ("bypass_dropout", 0.2)),
                                            (" answer_steps = 2", ("answer_steps", 2))])
def test_set_parses_yaml_values(text, expected):
    assert Q.option_override(text) == expected


@pytest.mark.parametrize("text", ["layer_norm", "=1"])
def test_set_refuses_a_missing_name_or_value_in_one_line(text):
    with pytest.raises(argparse.ArgumentTypeError, match="--set: expected OPTION=VALUE"):
        Q.option_override(text)


@pytest.mark.parametrize("argv, words", [
    (["--set", "answer_steps=-1"], "--set sentence_dnc.answer_steps: expected an integer >= 0, got -1"),
    (["--set", "memory_slots=3"], "--set: sentence_dnc has no option 'memory_slots'"),
    (["--lr", "nan"], "--lr: expected a finite number > 0, got nan"),
])
def test_bad_overrides_are_refused_before_anything_runs(monkeypatch, capsys, argv, words):
    monkeypatch.setattr(sys, "argv", ["qa_learners_babi.py", "--models", "sentence_dnc", *argv])
    with pytest.raises(SystemExit) as exit_info:
        Q.parse_args()
    assert exit_info.value.code != 0 and words in capsys.readouterr().err
