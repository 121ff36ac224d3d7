"""clmem's strategies as a researcher uses them: a plain Avalanche 0.6 script that imports only ``strategies``,
with Avalanche's own models (``SimpleMLP``, ``SimpleCNN``), evaluator and plugins."""
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from clmem.benchmarks import build_stream
from clmem.options import ConfigError
from strategies import STRATEGIES, create_strategy
from strategies.episodic_replay import EpisodicReplay

ROOT = Path(__file__).resolve().parents[2]
CLMEM_STRATEGIES = [e.name for e in STRATEGIES if e.builder.__module__ != "strategies.registry"]


def test_importing_strategies_alone_registers_every_strategy_and_model():
    code = ("import strategies, clmem.models, sys; "
            "print(sorted(strategies.STRATEGIES.names())); print(sorted(clmem.models.MODELS.names()))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    strategy_names, model_names = out.stdout.splitlines()
    for name in ("ewc_controller", "episodic_replay", "hopfield_kv", "ncm", "sequence", "sequence_ewc",
                 "sequence_replay", "naive", "replay"):
        assert f"'{name}'" in strategy_names
    for name in ("mlp", "cnn", "lstm", "ntm", "dnc", "mann", "sparse_dnc", "memn2n"):
        assert f"'{name}'" in model_names


def _evaluator():
    from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
    from avalanche.training.plugins import EvaluationPlugin

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return EvaluationPlugin(accuracy_metrics(experience=True, stream=True), loss_metrics(stream=True),
                                loggers=[])


@pytest.fixture(scope="module")
def digits():
    return build_stream("split_digits", seed=0, n_experiences=2).benchmark


@pytest.mark.parametrize("name", CLMEM_STRATEGIES)
def test_every_clmem_strategy_in_a_plain_avalanche_script(name, digits):
    from avalanche.models import SimpleMLP
    from avalanche.training.plugins import EarlyStoppingPlugin

    torch.manual_seed(0)
    model = SimpleMLP(num_classes=10, input_size=64, hidden_size=32, hidden_layers=1)
    evaluator = _evaluator()
    stopper = EarlyStoppingPlugin(patience=1, val_stream_name="test_stream", metric_name="Top1_Acc_Stream")
    strategy = create_strategy(name, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                               evaluator=evaluator, train_mb_size=32, train_epochs=3, eval_every=1,
                               plugins=[stopper])
    assert strategy.eval_every == 1 and stopper in strategy.plugins
    for exp in digits.train_stream:
        strategy.train(exp, eval_streams=[digits.test_stream])
    results = strategy.eval(digits.test_stream)
    acc = results["Top1_Acc_Stream/eval_phase/test_stream/Task000"]
    assert 0.0 <= acc <= 1.0 and acc > 0.2  # 2 experiences of 5 classes each: chance is 0.1
    assert torch.isfinite(torch.tensor(results["Loss_Stream/eval_phase/test_stream/Task000"]))
    # eval_every=1 ran the periodic evaluation the early stopper reads
    assert stopper.best_val is not None


def test_avalanche_arguments_pass_through_and_unknown_ones_are_one_line(digits):
    from avalanche.models import SimpleMLP
    from avalanche.training.storage_policy import ReservoirSamplingBuffer

    model = SimpleMLP(num_classes=10, input_size=64, hidden_size=16, hidden_layers=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    policy = ReservoirSamplingBuffer(max_size=20)
    replay = create_strategy("replay", model=model, optimizer=opt, storage_policy=policy, peval_mode="iteration",
                             eval_every=5)
    small = build_stream("split_digits", seed=0, n_experiences=2, per_class=6).benchmark
    assert isinstance(replay._criterion, torch.nn.CrossEntropyLoss)  # Avalanche's default criterion
    peval = next(p for p in replay.plugins if type(p).__name__ == "PeriodicEval")
    assert replay.train_mb_size == 1 and peval.peval_mode == "iteration"  # Avalanche's default and ours passed
    replay.train(small.train_stream[0])
    assert len(policy.buffer) == 20  # 5 classes x 6 samples offered, the buffer holds its 20
    ewc = create_strategy("ewc_controller", model=model, optimizer=opt, params=["features.", "classifier."])
    assert any(p.__class__.__name__ == "EWCController" for p in ewc.plugins)
    with pytest.raises(ConfigError, match=r"^strategy\.eval_evry: unknown argument of strategy 'naive' "
                                          r"\(expected one of: .*eval_every.*\)$"):
        create_strategy("naive", model=model, optimizer=opt, eval_evry=1)
    with pytest.raises(ConfigError, match=r"strategy\.params: expected a string .*list.*, got an empty list"):
        create_strategy("ewc_controller", model=model, optimizer=opt, params=[])


def _image_models():
    from avalanche.models import SimpleCNN, SimpleMLP

    return {"SimpleMLP": lambda: SimpleMLP(num_classes=10, input_size=64, hidden_size=32, hidden_layers=1),
            "SimpleCNN": lambda: SimpleCNN(num_classes=10)}


class _ThreeChannels(torch.nn.Module):
    """``[B, 1, 8, 8]`` → ``[B, 3, 32, 32]`` before an Avalanche ``SimpleCNN`` (built for CIFAR-sized RGB)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.nn.functional.interpolate(x, size=32).expand(-1, 3, -1, -1))


@pytest.mark.parametrize("model_name", ["SimpleMLP", "SimpleCNN"])
@pytest.mark.parametrize("name", ["hopfield_kv", "ncm", "episodic_replay"])
def test_feature_strategies_on_avalanche_models(name, model_name, digits):
    torch.manual_seed(0)
    model = _image_models()[model_name]()
    if model_name == "SimpleCNN":
        model = _ThreeChannels(model)
    epochs = 4 if model_name == "SimpleMLP" else 1  # the SimpleCNN case checks the feature hook, not learning
    extra = {"retrieval": "nearest", "mem_size": 50, "train_epochs": epochs} if name == "episodic_replay" else {}
    strategy = create_strategy(name, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                               evaluator=_evaluator(), train_mb_size=16, **extra)
    for exp in digits.train_stream:
        strategy.train(exp)
    acc = strategy.eval(digits.test_stream)["Top1_Acc_Stream/eval_phase/test_stream/Task000"]
    replay = next((p for p in strategy.plugins if isinstance(p, EpisodicReplay)), None)
    if replay is not None:  # features came from get_features (SimpleMLP) or the last Linear's input (SimpleCNN)
        assert replay.replayed > 0 and len(replay.store) == 50
        assert replay.store.config.dim == (32 if model_name == "SimpleMLP" else 64)
    if replay is None or model_name == "SimpleMLP":  # a SimpleCNN needs more than 4 epochs to learn
        assert acc > 0.3, f"{name} on {model_name}: stream accuracy {acc}"  # chance: 0.1 (2 x 5 classes)
