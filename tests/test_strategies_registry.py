"""The strategy registry: every built-in trains, and a plain Avalanche script can use it."""
import pytest
import torch
from avalanche.evaluation.metrics import accuracy_metrics, forgetting_metrics
from avalanche.training.plugins import EvaluationPlugin

from clmem.benchmarks import build_stream
from clmem.options import ConfigError
from strategies import STRATEGIES, create_strategy

BUILTINS = ["naive", "cumulative", "ewc", "si", "lwf", "replay", "gem", "agem", "der", "gdumb"]


def tiny_model():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))


def test_all_required_builtins_registered():
    assert set(BUILTINS) <= set(STRATEGIES.names())


def test_plain_avalanche_script_with_registry_strategy():
    """No clmem runner: an Avalanche benchmark, its own EvaluationPlugin, a registry strategy."""
    torch.manual_seed(0)
    bench = build_stream("split_digits", seed=0, n_experiences=2).benchmark
    model = tiny_model()
    evaluator = EvaluationPlugin(accuracy_metrics(experience=True, stream=True),
                                 forgetting_metrics(experience=True), loggers=[])
    strategy = create_strategy("replay", model=model,
                               optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                               criterion=torch.nn.CrossEntropyLoss(), evaluator=evaluator,
                               train_mb_size=32, train_epochs=2, mem_size=60)
    for experience in bench.train_stream:
        strategy.train(experience)
    results = strategy.eval(bench.test_stream)
    stream_acc = [v for k, v in results.items() if k.startswith("Top1_Acc_Stream/eval_phase/test_stream")]
    assert len(stream_acc) == 1 and stream_acc[0] > 0.5
    replay = [p for p in strategy.plugins if type(p).__name__ == "ReplayPlugin"]
    assert len(replay) == 1 and len(replay[0].storage_policy.buffer) == 60


@pytest.mark.parametrize("name", BUILTINS)
def test_each_builtin_trains_one_experience(name):
    torch.manual_seed(0)
    bench = build_stream("split_digits", seed=0, n_experiences=5).benchmark
    model = tiny_model()
    strategy = create_strategy(name, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                               criterion=torch.nn.CrossEntropyLoss(), evaluator=EvaluationPlugin(loggers=[]),
                               train_mb_size=64, eval_mb_size=128)
    before = [p.detach().clone() for p in model.parameters()]
    strategy.train(bench.train_stream[0])
    strategy.train(bench.train_stream[1])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_bad_strategy_options_raise_config_error():
    model = tiny_model()
    kwargs = dict(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                  criterion=torch.nn.CrossEntropyLoss())
    with pytest.raises(ConfigError, match="strategy.mem_size: unknown argument of strategy 'naive' \(expected one of: .*eval_every"):
        create_strategy("naive", mem_size=5, **kwargs)
    with pytest.raises(ConfigError, match="strategy.mem_size: expected an integer >= 1, got 0"):
        create_strategy("replay", mem_size=0, **kwargs)
    with pytest.raises(ConfigError, match="unknown strategy 'nope'"):
        create_strategy("nope", **kwargs)
