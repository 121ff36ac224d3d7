"""A gated memory grows between experiences (strategies.memory_growth): by the plugin, by the ``grow_memory``
option of the sequence strategies (from create_strategy and from an experiment file), capped at its capacity,
refused in one line for a model that cannot grow, and restored from a checkpoint."""
import copy

import pytest
import torch

from clmem.config import Experiment
from clmem.options import ConfigError
from strategies.memory_growth import MemoryGrowthPlugin, growing_memories


def _stream(n_tasks: int = 3):
    from clmem.catalog import BENCHMARKS

    tasks = ",".join(["copy"] * n_tasks)
    return BENCHMARKS.get("continual_algorithmic").builder(0, tasks=tasks, num_bits=3, max_length=3,
                                                           train_samples=8, test_samples=4)


def _gated(stream, memory_size=3, max_memory_size=6):
    from clmem.catalog import MODELS

    return MODELS.get("gated").builder(stream.input_shape, stream.num_classes, hidden_size=8, memory_size=memory_size,
                                       word_size=4, num_reads=1, max_memory_size=max_memory_size)


def _strategy(stream, model, name="sequence", **options):
    from clmem.runner import make_evaluator, seed_everything
    from strategies.registry import create_strategy

    seed_everything(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return create_strategy(name, model=model, optimizer=opt, criterion=stream.criterion(),
                           evaluator=make_evaluator(stream), train_mb_size=4, train_epochs=1, **options)


def _slots(model) -> list[int]:
    return [int(m.slots) for m in growing_memories(model)]


@pytest.mark.parametrize("name", ["sequence", "ewc_controller"])
def test_grow_memory_adds_slots_after_each_experience_up_to_capacity(name):
    stream = _stream()
    model = _gated(stream)
    strategy = _strategy(stream, model, name, grow_memory=2)
    assert _slots(model) == [3]
    seen = []
    for experience in stream.benchmark.train_stream:
        strategy.train(experience)
        seen.append(_slots(model))
    assert seen == [[5], [6], [6]]  # 3 + 2, then capped at max_memory_size 6
    plugin = next(p for p in strategy.plugins if isinstance(p, MemoryGrowthPlugin))
    assert plugin.history == seen
    assert int(model.state_dict()["core.memory.slots"]) == 6


def test_without_the_option_nothing_grows():
    stream = _stream(2)
    model = _gated(stream)
    strategy = _strategy(stream, model)
    for experience in stream.benchmark.train_stream:
        strategy.train(experience)
    assert _slots(model) == [3] and not any(isinstance(p, MemoryGrowthPlugin) for p in strategy.plugins)


def test_plugin_in_a_plain_avalanche_script_and_its_state_round_trips():
    from avalanche.training.supervised import Naive

    stream = _stream(2)
    model = _gated(stream, memory_size=2, max_memory_size=4)
    plugin = MemoryGrowthPlugin(1)
    naive = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                  criterion=stream.criterion(), train_mb_size=4, train_epochs=1, plugins=[plugin],
                  evaluator=None)
    naive.train(stream.benchmark.train_stream[0])
    assert plugin.history == [[3]]
    again = MemoryGrowthPlugin(1)
    again.load_state_dict(copy.deepcopy(plugin.state_dict()))
    assert again.history == [[3]]
    with pytest.raises(ValueError, match="MemoryGrowthPlugin.slots_per_experience: the checkpoint grew by 1"):
        MemoryGrowthPlugin(2).load_state_dict(plugin.state_dict())


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2"])
def test_plugin_refuses_bad_sizes_in_one_line(bad):
    with pytest.raises(ValueError) as info:
        MemoryGrowthPlugin(bad)
    assert str(info.value).startswith("MemoryGrowthPlugin.slots_per_experience: expected an int >= 1")


def test_plugin_refuses_a_model_that_cannot_grow_before_training():
    stream = _stream(1)
    fixed = _gated(stream, memory_size=3, max_memory_size=None)
    with pytest.raises(ValueError, match="strategy.grow_memory: model CoreSequenceLearner has no memory that can"):
        _strategy(stream, fixed, grow_memory=1).train(stream.benchmark.train_stream[0])


def test_plugin_refuses_avalanche_simple_mlp_in_a_plain_script_before_any_update():
    from avalanche.models import SimpleMLP
    from avalanche.training.supervised import Naive

    stream = _stream(1)
    model = SimpleMLP(num_classes=4, input_size=12, hidden_size=8)
    before = copy.deepcopy(model.state_dict())
    naive = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                  criterion=torch.nn.CrossEntropyLoss(), train_mb_size=4, train_epochs=1,
                  plugins=[MemoryGrowthPlugin(1)], evaluator=None)
    with pytest.raises(ValueError) as info:
        naive.train(stream.benchmark.train_stream[0])
    assert str(info.value) == ("strategy.grow_memory: model SimpleMLP has no memory that can grow (expected the "
                               "gated learner with max_memory_size > memory_size)")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _raw(model: dict, grow, strategy: str = "sequence") -> dict:
    return {"name": "grow", "benchmark": {"name": "continual_algorithmic", "tasks": "copy,copy", "num_bits": 3,
                                          "max_length": 3, "train_samples": 8, "test_samples": 4},
            "model": model, "strategy": {"name": strategy, "train_epochs": 1, "grow_memory": grow},
            "seeds": [0]}


@pytest.mark.parametrize("model", [{"name": "lstm"}, {"name": "gated", "memory_size": 4},
                                   {"name": "gated", "memory_size": 4, "max_memory_size": 4}])
def test_experiment_file_refuses_growth_of_a_memory_that_cannot_grow(model):
    with pytest.raises(ConfigError) as info:
        Experiment.from_dict(_raw(model, 2))
    message = str(info.value)
    assert message.startswith("strategy.grow_memory: model") and "has no memory that can grow" in message
    assert "\n" not in message


@pytest.mark.parametrize("grow, words", [(-1, "expected"), (1.5, "expected"), ("x", "expected")])
def test_experiment_file_refuses_bad_grow_memory(grow, words):
    with pytest.raises(ConfigError, match=rf"strategy\.grow_memory: {words}"):
        Experiment.from_dict(_raw({"name": "gated", "memory_size": 4, "max_memory_size": 8}, grow))


def test_trial_from_an_experiment_file_grows_and_resumes_with_the_same_slots():
    from clmem.runner import run_trial

    raw = _raw({"name": "gated", "hidden_size": 8, "memory_size": 3, "word_size": 4, "num_reads": 1,
                "max_memory_size": 5}, 1, "ewc_controller")  # resumable: its state is all in state_dicts
    raw["benchmark"]["tasks"] = "copy,copy,copy"
    trial = Experiment.from_dict(raw).trials[0]
    saved = []
    full = run_trial(trial, on_experience=lambda i, report: saved.append(copy.deepcopy(report["_checkpoint"])),
                     checkpointing=True)
    assert [int(c["strategy"]["model"]["core.memory.slots"]) for c in saved] == [4, 5, 5]
    assert {"slots_per_experience": 1, "history": [[4], [5], [5]]} in saved[-1]["strategy"]["plugins"]
    # resumed after the first experience: the restored memory has 4 slots and the trial ends as the full one
    again = []
    resumed = run_trial(trial, on_experience=lambda i, report: again.append(report["_checkpoint"]),
                        checkpointing=True, resume=saved[0])
    assert [c["experience"] for c in again] == [1, 2] and resumed.R == full.R
    final, expected = again[-1]["strategy"]["model"], saved[-1]["strategy"]["model"]
    assert final.keys() == expected.keys()
    for key in expected:  # the same weights, the same memory size
        assert torch.allclose(final[key].float(), expected[key].float(), atol=1e-6), key
