"""The sequence strategy (strategies.sequence) with the continual streams: CLI + MLflow, Avalanche plugins,
curriculum, gradient clipping and the answer-step read-out."""
import math

import pytest
import torch
import yaml

from clmem.catalog import BENCHMARKS, MODELS
from clmem.cli import main
from clmem.runner import make_evaluator, seed_everything
from clmem.tasks.streams import report_metrics
from strategies.registry import create_strategy

ALGO = {"tasks": "copy,associative_recall", "num_bits": 3, "max_length": 3, "max_items": 3,
        "train_samples": 24, "test_samples": 8}


def _strategy(stream, name="sequence", model="lstm", plugins=(), lr=0.01, optimizer="adam", **options):
    seed_everything(0)
    net = MODELS.get(model).builder(stream.input_shape, stream.num_classes, hidden_size=16)
    opt = (torch.optim.Adam if optimizer == "adam" else torch.optim.SGD)(net.parameters(), lr=lr)
    options.setdefault("train_mb_size", 8)
    options.setdefault("train_epochs", 1)
    return create_strategy(name, model=net, optimizer=opt, criterion=stream.criterion(),
                           evaluator=make_evaluator(stream), plugins=list(plugins), **options)


class Recorder:
    """An Avalanche plugin recording the (task, length) info of every training minibatch."""

    def __new__(cls):
        from avalanche.core import SupervisedPlugin

        class _Recorder(SupervisedPlugin):
            def __init__(self):
                super().__init__()
                self.batches = []

            def before_forward(self, strategy, **kwargs):
                if strategy.is_training:
                    self.batches.append((strategy.experience.current_experience, strategy.mbatch[2].clone()))

        return _Recorder()


def test_cli_run_with_ewc_logs_per_experience_bits_to_mlflow(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    exp = {"name": "seq_ewc", "benchmark": {"name": "continual_algorithmic", **ALGO},
           "model": {"name": "lstm", "hidden_size": 16},
           "strategy": {"name": "sequence_ewc", "ewc_lambda": 50.0, "train_epochs": 1, "train_mb_size": 8,
                        "optimizer": "adam", "lr": 0.01},
           "seeds": [0]}
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(exp))
    uri = f"sqlite:///{tmp_path}/m.db"
    assert main(["run", str(tmp_path / "e.yaml"), "--tracking-uri", uri]) == 0
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("seq_ewc")
    runs = client.search_runs([experiment.experiment_id], "tags.`clmem.kind` = 'trial'")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["strategy.name"] == "sequence_ewc"
    for j in range(2):  # R row entries: bits per sequence of experience j after each experience
        history = client.get_metric_history(run.info.run_id, f"acc_exp_{j}")
        assert sorted(m.step for m in history) == [0, 1]
        # bits per sequence: a mean count of wrong bits, at most every scored bit (3 bits x at most 3 steps)
        assert all(0.0 <= m.value <= 9.0 for m in history)
        assert any(m.value != round(m.value) or m.value > 1.0 for m in history)  # a count, not an accuracy
    assert {"ACC", "BWT", "FWT", "Forgetting"} <= set(run.data.metrics)
    assert math.isfinite(run.data.metrics["ACC"])


def test_replay_plugin_attaches_unchanged():
    from avalanche.training.plugins import ReplayPlugin

    stream = BENCHMARKS.get("continual_algorithmic").builder(0, **ALGO)
    replay, recorder = ReplayPlugin(mem_size=10), Recorder()
    strategy = _strategy(stream, plugins=[replay, recorder])
    for exp in stream.benchmark.train_stream:
        strategy.train(exp)
    buffered = {int(replay.storage_policy.buffer[i][2][0]) for i in range(len(replay.storage_policy.buffer))}
    assert len(replay.storage_policy.buffer) == 10 and buffered == {0, 2}  # copy and associative recall
    seen_second = {int(t) for e, info in recorder.batches if e == 1 for t in info[:, 0]}
    assert seen_second == {0, 2}  # the second experience's minibatches mix in replayed copy sequences
    results = strategy.eval(stream.benchmark.test_stream)
    bits = [v for k, v in results.items() if k.startswith("BitsPerSeq_Exp/eval_phase/test_stream/")]
    assert len(bits) == 2 and all(v >= 0 for v in bits)
    flat = report_metrics(results)
    assert set(flat) == {"bits_per_seq_exp_0", "bits_per_seq_exp_1", "seq_error_exp_0", "seq_error_exp_1"}
    assert sorted(flat[f"bits_per_seq_exp_{j}"] for j in range(2)) == sorted(bits)


def test_curriculum_limits_training_lengths_and_grows():
    stream = BENCHMARKS.get("continual_algorithmic").builder(0, **{**ALGO, "tasks": "copy"})
    frozen = Recorder()  # threshold 0: the limit never grows
    _strategy(stream, plugins=[frozen], curriculum=True, curriculum_start=1, curriculum_threshold=0.0,
              train_epochs=2).train(stream.benchmark.train_stream[0])
    lengths = torch.cat([info[:, 1] for _, info in frozen.batches])
    assert len(lengths) > 0 and int(lengths.max()) == 1
    growing = Recorder()  # threshold 1 (every error rate is below): grows after every window of 1 update
    strategy = _strategy(stream, plugins=[growing], curriculum=True, curriculum_start=1, curriculum_threshold=1.01,
                         curriculum_window=1, train_epochs=2)
    strategy.train(stream.benchmark.train_stream[0])
    assert int(torch.cat([info[:, 1] for _, info in growing.batches]).max()) == 3 and strategy.curriculum.current > 3


def test_gradient_clipping_bounds_the_update():
    stream = BENCHMARKS.get("continual_algorithmic").builder(0, **{**ALGO, "tasks": "copy"})
    strategy = _strategy(stream, optimizer="sgd", lr=1.0, clip_grad_norm=1e-3, train_mb_size=24)
    before = torch.cat([p.detach().flatten().clone() for p in strategy.model.parameters()])
    strategy.train(stream.benchmark.train_stream[0])  # one SGD step (24 samples, one minibatch)
    after = torch.cat([p.detach().flatten() for p in strategy.model.parameters()])
    assert 0 < float((after - before).norm()) <= 1e-3 * (1 + 1e-4)


def test_babi_sequence_encoding_reads_the_answer_step(tmp_path):
    stream = BENCHMARKS.get("continual_babi").builder(
        0, tasks="1,6", encoding="sequence", train_questions=24, test_questions=12, cache_dir=str(tmp_path),
        max_memory=4)
    strategy = _strategy(stream, name="sequence_replay", mem_size=8, train_epochs=1)
    strategy.train(stream.benchmark.train_stream[0])
    results = strategy.eval(stream.benchmark.test_stream)
    for j in range(2):
        acc = next(v for k, v in results.items() if k.startswith("Top1_Acc_Exp/") and k.endswith(f"Exp00{j}"))
        err = next(v for k, v in results.items() if k.startswith("Error_Exp/") and k.endswith(f"Exp00{j}"))
        assert err == pytest.approx(1.0 - acc)
    per_task = {k.split("/")[0]: v for k, v in results.items() if k.startswith("BabiError_qa")}
    assert set(per_task) == {"BabiError_qa1", "BabiError_qa6"}
    failed = results["BabiFailedTasks/eval_phase/test_stream"]
    assert failed == sum(v > 0.05 for v in per_task.values())
    flat = report_metrics(results)  # what the runner can pass to MLflow
    assert flat["babi_failed_tasks"] == failed and flat["babi_error_qa6"] == per_task["BabiError_qa6"]
    assert set(flat) == {"error_exp_0", "error_exp_1", "babi_error_qa1", "babi_error_qa6", "babi_mean_error",
                         "babi_failed_tasks"}
