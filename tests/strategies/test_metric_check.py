"""ScoreabilityCheck: one warning when Avalanche's accuracy metrics are attached to a stream whose targets
they cannot score (bit streams), none on a classification stream; its state round-trips."""
import warnings

import pytest
import torch
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import EvaluationPlugin

from clmem.benchmarks import build_stream
from clmem.models import build_model
from strategies import create_strategy
from strategies.metric_check import ScoreabilityCheck, accuracy_unscoreable


def _train_and_eval(stream, model_name: str, **model_opts) -> list[str]:
    """One experience of training and one evaluation of the test stream; the check's warnings."""
    torch.manual_seed(0)
    model = build_model(model_name, stream.input_shape, stream.num_classes, **model_opts)
    evaluator = EvaluationPlugin(accuracy_metrics(minibatch=True, experience=True, stream=True), loggers=[])
    strategy = create_strategy("naive", model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                               criterion=stream.criterion() if stream.criterion else None,
                               evaluator=evaluator, train_mb_size=4, eval_mb_size=4, train_epochs=1)
    assert any(isinstance(p, ScoreabilityCheck) for p in strategy.plugins)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        strategy.train(stream.benchmark.train_stream[0])
        strategy.eval(stream.benchmark.test_stream[:2])
        strategy.train(stream.benchmark.train_stream[1])
    return [str(w.message) for w in caught if "cannot score" in str(w.message)]


def test_warns_once_on_a_bit_stream_with_accuracy_metrics():
    stream = build_stream("continual_algorithmic", 0, train_samples=8, test_samples=4)
    messages = _train_and_eval(stream, "lstm", hidden_size=8)
    assert len(messages) == 1
    assert "\n" not in messages[0]
    assert "bits per sequence" in messages[0] and "BitsPerSequence" in messages[0]
    assert "Top1_Acc_Exp" in messages[0] and "float32" in messages[0]


def test_silent_on_split_digits_with_an_mlp():
    stream = build_stream("split_digits", 0, n_experiences=5)
    assert _train_and_eval(stream, "mlp", hidden_size=16, num_layers=1) == []


def test_rules_on_hand_made_tensors():
    logits = torch.zeros(3, 4)
    assert accuracy_unscoreable(logits, torch.tensor([0, 1, 3])) == ""
    assert accuracy_unscoreable(logits, torch.eye(4)[:3]) == ""  # one-hot targets: Avalanche takes the argmax
    assert "float32 [3]" in accuracy_unscoreable(logits, torch.tensor([0.0, 1.0, 3.0]))
    assert "[3, 4]" in accuracy_unscoreable(logits, torch.full((3, 4), 0.5))  # not one-hot
    seq = accuracy_unscoreable(torch.zeros(2, 5, 7), torch.tensor([1, 2]))  # logits [B, T, V] vs answers [B]
    assert "outputs are [2, 5, 7]" in seq and "int64 [2]" in seq
    assert accuracy_unscoreable((logits, None), torch.tensor([0, 1, 2])) == ""  # (logits, state) outputs


def test_state_round_trip_and_bad_state():
    check = ScoreabilityCheck()
    assert check.state_dict() == {"checked": False, "warned": False}
    other = ScoreabilityCheck()
    other.load_state_dict({"checked": True, "warned": True})
    check.load_state_dict(other.state_dict())
    assert (check.checked, check.warned) == (True, True)
    with pytest.raises(ValueError, match="'warned' expected a bool"):
        check.load_state_dict({"checked": True, "warned": "yes"})


def test_hint_names_each_stream_kinds_own_metrics():
    from strategies.metric_check import own_metrics_hint

    assert "BitsPerSequence" in own_metrics_hint(torch.zeros(2, 5, 4))  # bit targets [B, T, O]
    assert "AnswerError" in own_metrics_hint(torch.tensor([1, 2]))  # QA answers [B]
    assert "EpisodeAccuracy" in own_metrics_hint(torch.zeros(2, 5, dtype=torch.long))  # episode labels [B, T]
