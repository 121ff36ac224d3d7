"""A plain Avalanche script (no clmem runner) with EWCController and EpisodicReplay attached."""
import warnings

import torch

from clmem.benchmarks import build_stream
from clmem.models import MLP
from strategies.episodic_replay import EpisodicReplay
from strategies.ewc_controller import EWCController


def test_plain_avalanche_script_with_both_plugins_reports_through_avalanche_metrics():
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.supervised import Naive

    torch.manual_seed(0)
    benchmark = build_stream("split_digits", seed=0).benchmark
    model = MLP(64, 10, hidden_size=32, num_layers=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evaluator = EvaluationPlugin(accuracy_metrics(minibatch=False, epoch=True, experience=True, stream=True),
                                     loggers=[])
    ewc = EWCController(ewc_lambda=10.0, mode="online", params="controller", fisher_samples=100)
    replay = EpisodicReplay(mem_size=100, retrieval="nearest", alpha=0.1, beta=0.5)
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), train_mb_size=16,
                     train_epochs=1, eval_mb_size=128, plugins=[ewc, replay], evaluator=evaluator)
    for i, exp in enumerate(benchmark.train_stream[:3]):
        strategy.train(exp)
        strategy.eval(benchmark.test_stream[: i + 1])
    metrics = evaluator.get_last_metrics()
    stream_acc = metrics["Top1_Acc_Stream/eval_phase/test_stream/Task000"]
    assert 0.0 < stream_acc <= 1.0
    assert "Top1_Acc_Epoch/train_phase/train_stream/Task000" in metrics
    assert {f"Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp00{j}" for j in range(3)} <= set(metrics)
    # the plugins did their work: online EWC holds one running Fisher over the body only
    assert ewc.experiences_seen == 3 and len(ewc.fishers) == 1
    assert set(ewc.fishers[0]) == {"body.1.weight", "body.1.bias"}
    assert len(replay.store) == 100 and replay.replayed > 0
    assert replay.iterations == sum(-(-len(e.dataset) // 16) for e in benchmark.train_stream[:3])
