"""No silent NaN: FiniteGuard stops a strategy at the first non-finite loss, gradient or parameter with one
line naming the strategy, experience and iteration; a trial that diverges ends FAILED in MLflow with that
line, and clmem compare does not rank it."""
import re
import warnings

import pytest
import torch
import yaml
from torch import nn

from clmem.models import MLP
from strategies import create_strategy
from strategies.finite_guard import FiniteGuard, NonFiniteError, first_non_finite


def _benchmark(second_x: torch.Tensor):
    """Two experiences of 8 samples of 4 features (labels 0/1); the second one's inputs are ``second_x``."""
    from avalanche.benchmarks import tensors_benchmark

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 4, generator=g), torch.arange(8) % 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tensors_benchmark([(x, y), (second_x, y)], [(x, y), (x, y)], task_labels=[0, 0])


def _naive(model, lr: float, name: str = "naive"):
    from clmem.runner import make_evaluator

    return create_strategy(name, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=lr),
                           train_mb_size=4, evaluator=make_evaluator())


def _train(strategy, experiences) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for experience in experiences:
            strategy.train(experience)


def test_nan_input_stops_at_the_loss_with_one_line_naming_strategy_experience_iteration():
    torch.manual_seed(0)
    bench = _benchmark(torch.full((8, 4), float("nan")))
    # a plain torch model: clmem's own models refuse a non-finite batch before the loss (tests/test_numerics.py)
    strategy = _naive(nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)), lr=0.1)
    with pytest.raises(NonFiniteError) as info:
        _train(strategy, bench.train_stream)
    assert str(info.value) == "non-finite loss in strategy 'naive' at experience 1, iteration 0 (loss=nan)"
    assert any(isinstance(p, FiniteGuard) for p in strategy.plugins)


def test_infinite_learning_rate_stops_after_the_update_naming_the_parameter():
    torch.manual_seed(0)
    bench = _benchmark(torch.zeros(8, 4))
    strategy = _naive(MLP(4, 2, hidden_size=5, num_layers=1), lr=float("inf"), name="ewc_controller")
    with pytest.raises(NonFiniteError) as info:
        _train(strategy, bench.train_stream)
    assert str(info.value) == ("non-finite parameter in strategy 'ewc_controller' at experience 0, iteration 0 "
                               "after the update (parameter 'body.1.weight')")


class SqrtAtZero(nn.Module):
    """``linear(x) + sqrt(z) * 0`` with ``z = 0``: a finite loss whose gradient w.r.t. ``z`` is 0 · ∞ = NaN."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 2)
        self.z = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.linear(x) + torch.sqrt(self.z) * 0.0


def test_nan_gradient_with_a_finite_loss_names_the_parameter():
    torch.manual_seed(0)
    bench = _benchmark(torch.zeros(8, 4))
    strategy = _naive(SqrtAtZero(), lr=0.1)
    with pytest.raises(NonFiniteError) as info:
        _train(strategy, bench.train_stream)
    assert str(info.value) == "non-finite gradient in strategy 'naive' at experience 0, iteration 0 (parameter 'z')"


def test_first_non_finite_and_state():
    named = [("a", torch.ones(3)), ("b", None), ("c", torch.tensor([1.0, float("inf")])), ("d", torch.tensor([0, 1]))]
    assert first_non_finite(named) == "c"
    assert first_non_finite(named[:2]) is None
    # norms that overflow float32 while every value is finite are not an error
    assert first_non_finite([("big", torch.full((4,), 3e38))]) is None
    guard = FiniteGuard("naive")
    assert guard.state_dict() == {}
    guard.load_state_dict({})
    with pytest.raises(ValueError, match="FiniteGuard.strategy_name"):
        FiniteGuard("")


def test_diverging_trial_ends_failed_with_the_message_and_is_not_ranked(tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    from clmem.cli import main
    from clmem.compare import group_rows
    from clmem.tracking import runs_table

    monkeypatch.chdir(tmp_path)
    exp = {"name": "diverge", "benchmark": {"name": "split_digits", "n_experiences": 2},
           "model": {"name": "mlp", "hidden_size": 16, "num_layers": 1},
           "strategy": {"name": "naive", "train_epochs": 1, "lr": [0.05, 1.0e30]}, "seeds": [0]}
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(exp))
    uri = f"sqlite:///{tmp_path}/m.db"
    assert main(["run", str(tmp_path / "e.yaml"), "--trial", "0", "--tracking-uri", uri]) == 0
    with pytest.raises(NonFiniteError):
        main(["run", str(tmp_path / "e.yaml"), "--trial", "1", "--tracking-uri", uri])

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("diverge")
    trials = client.search_runs([experiment.experiment_id], "tags.`clmem.kind` = 'trial'")
    by_lr = {float(r.data.params["strategy.lr"]): r for r in trials}
    failed, finished = by_lr[1.0e30], by_lr[0.05]
    assert (failed.info.status, finished.info.status) == ("FAILED", "FINISHED")
    message = failed.data.tags["clmem.error"]
    assert re.fullmatch(r"NonFiniteError: non-finite (loss|gradient|parameter) in strategy 'naive' at experience 0, "
                        r"iteration \d+ .*", message), message
    assert "\n" not in message and "clmem.error" not in finished.data.tags
    parents = client.search_runs([experiment.experiment_id], "tags.`clmem.kind` = 'run'")
    assert sorted(p.info.status for p in parents) == ["FAILED", "FINISHED"]

    rows = group_rows(runs_table(trials), ["strategy.lr"])
    assert [(r["group"]["strategy.lr"], r["n"]) for r in rows] == [(finished.data.params["strategy.lr"], 1)]
    capsys.readouterr()
    assert main(["compare", "diverge", "--tracking-uri", uri, "--format", "csv"]) == 0  # the latest: the failed run
    out = capsys.readouterr().out
    assert "1e+30" not in out
