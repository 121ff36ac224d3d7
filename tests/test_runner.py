"""One trial in-process: R matrix, and a cross-check against Avalanche's metrics of the same run.

Definitional differences documented here (and in clmem.metrics):
* BWT: identical definitions (mean over j < T-1 of R[T-1][j] − R[j][j]) → equal values;
* forgetting: Avalanche uses first-vs-last (R[j][j] − R[T-1][j]); clmem uses Chaudhry et al.
  (max over all earlier rows − last), so clmem's value is ≥ Avalanche's, equal when accuracy
  on each experience peaks right after training on it;
* stream accuracy: Avalanche pools over test samples; clmem's ACC averages over experiences.
"""
import numpy as np
import pytest

from clmem.benchmarks import build_stream
from clmem.config import Experiment
from clmem.runner import run_trial

RAW = {
    "name": "runner",
    "benchmark": {"name": "split_digits", "n_experiences": 5},
    "model": {"name": "mlp", "hidden_size": 32, "num_layers": 1},
    "strategy": {"name": "replay", "train_epochs": 2, "lr": 0.05, "replay": {"mem_size": 40}},
    "seeds": [1],
}


@pytest.fixture(scope="module")
def result():
    reports = []
    trial = Experiment.from_dict(RAW).trials[0]
    out = run_trial(trial, on_experience=lambda i, r: reports.append((i, r)))
    return out, reports


def test_r_matrix_shape_and_reports(result):
    out, reports = result
    R = np.asarray(out.R)
    assert R.shape == (5, 5) and len(out.b) == 5
    assert ((R >= 0) & (R <= 1)).all()
    assert [i for i, _ in reports] == [0, 1, 2, 3, 4]
    assert reports[2][1]["R"] == out.R[:3]
    assert reports[-1][1]["ACC"] == pytest.approx(R[-1].mean())
    assert "ACC" not in reports[0][1]
    # class-incremental: never-seen classes are never predicted correctly by a trained head
    assert R[0, 1:].max() < 0.05


def test_cross_check_with_avalanche_metrics(result):
    out, _ = result
    R = np.asarray(out.R)
    avl = out.avalanche
    assert out.summary["BWT"] == pytest.approx(avl["avl_bwt"], abs=1e-9)
    first_vs_last = np.mean([R[j, j] - R[-1, j] for j in range(4)])
    assert avl["avl_forgetting"] == pytest.approx(first_vs_last, abs=1e-9)
    assert out.summary["Forgetting"] >= avl["avl_forgetting"] - 1e-12
    sizes = [len(e.dataset) for e in build_stream("split_digits", seed=1).benchmark.test_stream]
    pooled = float(np.dot(R[-1], sizes) / np.sum(sizes))
    assert avl["avl_stream_acc"] == pytest.approx(pooled, abs=1e-9)
