"""The sequence strategy's gradient-spike guard (strategies.sequence.GradSpikeGuard): hand-computed updates,
validation in one line, and the ``spike_factor`` / ``spike_decay`` options through ``create_strategy``."""
import copy
import math

import pytest
import torch

from clmem.options import ConfigError
from strategies.sequence import GradSpikeGuard


def _param(*grad):
    p = torch.nn.Parameter(torch.zeros(len(grad)))
    p.grad = torch.tensor(grad)
    return p


def test_hand_computed_average_and_scaling():
    guard = GradSpikeGuard(factor=2.0, decay=0.5)
    p = _param(3.0, 4.0)  # norm 5: the first update sets the average and passes
    assert guard([p]) == (5.0, 1.0) and guard.average == 5.0
    p.grad = torch.tensor([6.0, 8.0])  # norm 10 = 2 * 5: passes; average 0.5 * 5 + 0.5 * 10
    assert guard([p]) == (10.0, 1.0) and guard.average == 7.5 and p.grad.tolist() == [6.0, 8.0]
    p.grad = torch.tensor([30.0, 40.0])  # norm 50 > 2 * 7.5 = 15: scaled by 15 / 50
    norm, scale = guard([p])
    assert norm == 50.0 and scale == pytest.approx(0.3)
    assert p.grad.tolist() == pytest.approx([9.0, 12.0])
    assert guard.average == pytest.approx(0.5 * 7.5 + 0.5 * 15.0) and guard.scaled == 1  # the bound enters


def test_global_norm_over_parameters_and_missing_grads():
    guard = GradSpikeGuard(factor=1.0, decay=0.0)
    a, b, none = _param(3.0), _param(4.0), torch.nn.Parameter(torch.zeros(2))
    assert guard([a, b, none]) == (5.0, 1.0)
    a.grad, b.grad = torch.tensor([6.0]), torch.tensor([8.0])  # norm 10 > 1 * 5: both halved
    assert guard([a, b, none]) == (10.0, 0.5) and a.grad.item() == 3.0 and b.grad.item() == 4.0
    assert guard.average == 5.0 and none.grad is None
    assert guard([none]) == (0.0, 1.0)


def test_non_finite_norm_leaves_gradients_and_average():
    guard = GradSpikeGuard(factor=3.0)
    p = _param(1.0, 0.0)
    guard([p])
    p.grad = torch.tensor([math.inf, 0.0])
    norm, scale = guard([p])
    assert math.isinf(norm) and scale == 1.0 and guard.average == 1.0 and math.isinf(p.grad[0].item())


@pytest.mark.parametrize("factor, decay, field", [(0.5, 0.9, "factor"), (math.nan, 0.9, "factor"),
                                                  (math.inf, 0.9, "factor"), (True, 0.9, "factor"),
                                                  ("3", 0.9, "factor"), (3.0, 1.0, "decay"),
                                                  (3.0, -0.1, "decay"), (3.0, math.nan, "decay")])
def test_bad_values_are_refused_in_one_line(factor, decay, field):
    with pytest.raises(ValueError) as info:
        GradSpikeGuard(factor, decay)
    assert str(info.value).startswith(f"GradSpikeGuard.{field}: expected") and "\n" not in str(info.value)


def _strategy(**options):
    from clmem.catalog import BENCHMARKS, MODELS
    from clmem.runner import make_evaluator, seed_everything
    from strategies.registry import create_strategy

    seed_everything(0)
    stream = BENCHMARKS.get("continual_algorithmic").builder(0, tasks="copy", num_bits=3, max_length=3,
                                                             train_samples=24, test_samples=8)
    net = MODELS.get("lstm").builder(stream.input_shape, stream.num_classes, hidden_size=8)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    return stream, create_strategy("sequence", model=net, optimizer=opt, criterion=stream.criterion(),
                                   evaluator=make_evaluator(stream), train_mb_size=4, train_epochs=2, **options)


@pytest.mark.parametrize("options, key", [({"spike_factor": 0.5}, "spike_factor"),
                                          ({"spike_factor": "x"}, "spike_factor"),
                                          ({"spike_factor": math.nan}, "spike_factor"),
                                          ({"spike_decay": 1.0}, "spike_decay")])
def test_strategy_options_are_checked(options, key):
    with pytest.raises(ConfigError) as info:
        _strategy(**options)
    assert f"strategy.{key}: expected" in str(info.value) and "\n" not in str(info.value)


def test_strategy_applies_the_guard_before_each_update():
    """Factor 1 and decay 0 make the applied norm the running minimum of the raw norms; with plain SGD each
    update moves the parameters by exactly lr times the applied gradient."""
    from avalanche.core import SupervisedPlugin

    class Record(SupervisedPlugin):
        def __init__(self):
            super().__init__()
            self.raw, self.steps = [], []

        def before_update(self, strategy, **kwargs):
            grads = [p.grad for p in strategy.model.parameters() if p.grad is not None]
            self.raw.append(float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))))
            self.before = [p.detach().clone() for p in strategy.model.parameters()]

        def after_update(self, strategy, **kwargs):
            moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(strategy.model.parameters(), self.before)])
            self.steps.append(float(torch.linalg.vector_norm(moved)) / 0.5)

    record = Record()
    stream, strategy = _strategy(spike_factor=1.0, spike_decay=0.0, clip_grad_norm=None, plugins=[record])
    assert strategy.spike_guard.factor == 1.0 and strategy.spike_guard.decay == 0.0
    strategy.train(stream.benchmark.train_stream[0])
    running_min = [min(record.raw[: i + 1]) for i in range(len(record.raw))]
    assert len(record.steps) == 12 and record.steps == pytest.approx(running_min, rel=1e-4)
    assert strategy.spike_guard.scaled == sum(r > m for r, m in zip(record.raw, running_min)) > 0


def test_strategy_default_has_no_guard():
    _, strategy = _strategy()
    assert strategy.spike_guard is None


def test_guard_state_round_trips_and_refuses_another_setting():
    guard = GradSpikeGuard(factor=2.0, decay=0.5)
    p = _param(3.0, 4.0)
    guard([p])
    p.grad = torch.tensor([30.0, 40.0])
    guard([p])
    again = GradSpikeGuard(factor=2.0, decay=0.5)
    again.load_state_dict(guard.state_dict())
    assert (again.average, again.scaled) == (guard.average, 1)
    with pytest.raises(ValueError, match="GradSpikeGuard: the checkpoint's guard has factor 2.0"):
        GradSpikeGuard(factor=3.0, decay=0.5).load_state_dict(guard.state_dict())


def test_trial_with_the_guard_resumes_with_its_running_average():
    """A resumable strategy with the guard on continues after a checkpoint exactly as the uninterrupted trial."""
    from clmem.config import Experiment
    from clmem.runner import run_trial

    raw = {"name": "guard", "benchmark": {"name": "continual_algorithmic", "tasks": "copy,copy,copy", "num_bits": 3,
                                          "max_length": 3, "train_samples": 16, "test_samples": 4},
           "model": {"name": "lstm", "hidden_size": 8},
           "strategy": {"name": "ewc_controller", "train_epochs": 1, "train_mb_size": 4, "spike_factor": 1.0,
                        "spike_decay": 0.5}, "seeds": [0]}
    trial = Experiment.from_dict(raw).trials[0]
    saved, again = [], []
    # deep copies: a report's state shares storage with the live model (the grid writes it to disk at once)
    run_trial(trial, on_experience=lambda i, r: saved.append(copy.deepcopy(r["_checkpoint"])), checkpointing=True)
    guard_states = [s for s in saved[0]["strategy"]["plugins"] if "average" in s]
    assert len(guard_states) == 1 and guard_states[0]["average"] > 0 and guard_states[0]["scaled"] > 0
    run_trial(trial, on_experience=lambda i, r: again.append(copy.deepcopy(r["_checkpoint"])), checkpointing=True,
              resume=saved[0])
    assert [c["experience"] for c in again] == [1, 2]
    final, expected = again[-1]["strategy"], saved[-1]["strategy"]
    assert [s for s in final["plugins"] if "average" in s] == [s for s in expected["plugins"] if "average" in s]
    for key, value in expected["model"].items():
        assert torch.allclose(final["model"][key], value, atol=1e-6), key
