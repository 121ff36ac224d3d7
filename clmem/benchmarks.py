"""Avalanche benchmark streams by name.

Offline (no download, data shipped with scikit-learn): ``split_digits`` (class-incremental) and
``permuted_digits`` (domain-incremental). Real: ``split_mnist`` and ``permuted_mnist`` through
Avalanche, reading MNIST from ``dataset_root`` (default ``$CLMEM_DATA/mnist``); when the files are
absent they fail at once with a clear error instead of attempting a download.

Every builder takes the trial ``seed`` plus its declared options and returns a :class:`Stream`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import TensorDataset

from clmem.options import Opt
from clmem import registries
from clmem.datafiles import (MNIST_FILES, PREFLIGHT, check_mnist, check_mnist_root,  # noqa: F401 (re-exported)
                             default_data_root, preflight)

#: Offline sequence/QA streams register from :mod:`clmem.tasks.streams` (imported on first lookup).
BENCHMARKS = registries.BENCHMARKS.extend(extensions=("clmem.tasks.streams", "clmem.tasks.omniglot",
                                               "clmem.tasks.reasoning_streams"))



class Stream(NamedTuple):
    """An Avalanche benchmark plus what a model and the metrics need to know about it.

    ``metric`` names the score that fills R; ``metric_prefix`` is the Avalanche metric-name prefix
    of its per-experience values (``<prefix>/eval_phase/test_stream/[TaskNNN/]ExpNNN``) and
    ``eval_metrics`` a factory of the extra Avalanche ``PluginMetric`` s that produce it (None:
    Avalanche's top-1 accuracy). Error-type scores set ``higher_is_better=False``. ``criterion``
    is a factory of the training loss (None: cross-entropy). ``report`` maps Avalanche's eval
    results to extra per-experience metrics to log (e.g. per-task errors). ``model_adapter`` wraps
    a built model so its outputs match the targets (e.g. the answer step of a sequence learner).
    """

    benchmark: Any
    input_shape: tuple[int, ...]
    num_classes: int
    metric: str = "accuracy"
    higher_is_better: bool = True
    metric_prefix: str = "Top1_Acc_Exp"
    eval_metrics: Any = None
    criterion: Any = None
    report: Any = None
    model_adapter: Any = None


class _LabelledTensors(TensorDataset):
    """A ``TensorDataset`` exposing ``targets``, as Avalanche's classification datasets expect."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        super().__init__(x, y)
        self.targets = y


def _digits_split(split_seed: int, test_fraction: float, per_class: int | None = None):
    """scikit-learn's bundled 8×8 digits as [N, 1, 8, 8] tensors in [0, 1], stratified split.

    ``per_class``: keep only the first ``per_class`` samples of each class in each split (after the
    seeded split), for quick runs; ``None`` keeps all.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]
    y = data.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, random_state=split_seed, stratify=y
    )
    as_t = torch.from_numpy
    return _first_per_class(as_t(x_tr), as_t(y_tr), per_class), _first_per_class(as_t(x_te), as_t(y_te), per_class)


def _first_per_class(x: torch.Tensor, y: torch.Tensor, per_class: int | None):
    if per_class is None:
        return x, y
    keep = torch.cat([torch.nonzero(y == c).flatten()[:per_class] for c in y.unique()]).sort().values
    return x[keep], y[keep]


_DIGITS_OPTS = {
    "test_fraction": Opt(float, 0.3, min=0.05, max=0.9, help="held-out fraction of each class"),
    "split_seed": Opt(int, 0, min=0, help="seed of the train/test split (fixed across trials)"),
    "per_class": Opt(int, None, min=1, nullable=True, help="keep at most this many samples per class and split "
                                                           "(quick runs; null: all)"),
}


@BENCHMARKS.register(
    "split_digits",
    {"n_experiences": Opt(int, 5, choices=(1, 2, 5, 10)), **_DIGITS_OPTS},
    "class-incremental scikit-learn digits, classes split over experiences in a seeded order",
    kind="image", tiny={"n_experiences": 2, "per_class": 4},
)
def split_digits(seed: int, n_experiences: int = 5, test_fraction: float = 0.3, split_seed: int = 0,
                 per_class: int | None = None):
    from avalanche.benchmarks import nc_benchmark

    (x_tr, y_tr), (x_te, y_te) = _digits_split(split_seed, test_fraction, per_class)
    bench = nc_benchmark(
        _LabelledTensors(x_tr, y_tr), _LabelledTensors(x_te, y_te), n_experiences,
        task_labels=False, seed=seed,
    )
    return Stream(bench, (1, 8, 8), 10)


def _permuted(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(x.shape[0], -1)[:, perm]
    return flat.reshape(x.shape)


@BENCHMARKS.register(
    "permuted_digits",
    {"n_experiences": Opt(int, 5, min=1, max=50), **_DIGITS_OPTS},
    "domain-incremental digits: each experience applies its own seeded pixel permutation",
    kind="image", tiny={"n_experiences": 2, "per_class": 4},
)
def permuted_digits(seed: int, n_experiences: int = 5, test_fraction: float = 0.3, split_seed: int = 0,
                    per_class: int | None = None):
    from avalanche.benchmarks import benchmark_from_datasets
    # attaches task label 0 (mbatch[-1]), which Avalanche's LwF, GDumb and the templates read;
    # as_taskaware_classification_dataset does not
    from avalanche.benchmarks.utils.classification_dataset import _make_taskaware_classification_dataset

    def as_cls(dataset):
        return _make_taskaware_classification_dataset(dataset, task_labels=0)

    (x_tr, y_tr), (x_te, y_te) = _digits_split(split_seed, test_fraction, per_class)
    gen = torch.Generator().manual_seed(seed)
    train, test = [], []
    for _ in range(n_experiences):
        perm = torch.randperm(x_tr[0].numel(), generator=gen)
        train.append(as_cls(_LabelledTensors(_permuted(x_tr, perm), y_tr)))
        test.append(as_cls(_LabelledTensors(_permuted(x_te, perm), y_te)))
    return Stream(benchmark_from_datasets(train=train, test=test), (1, 8, 8), 10)


_MNIST_ROOT = Opt(str, None, nullable=True, help="folder with MNIST/raw/; default $CLMEM_DATA/mnist")


@BENCHMARKS.register(
    "split_mnist",
    {"n_experiences": Opt(int, 5, choices=(1, 2, 5, 10)), "dataset_root": _MNIST_ROOT},
    "Avalanche SplitMNIST, class-incremental, seeded class order",
    kind="image", preflight=check_mnist,
)
def split_mnist(seed: int, n_experiences: int = 5, dataset_root: str | None = None):
    from avalanche.benchmarks.classic import SplitMNIST

    root = check_mnist_root(dataset_root or default_data_root("mnist"))
    bench = SplitMNIST(n_experiences=n_experiences, seed=seed, dataset_root=str(root))
    return Stream(bench, (1, 28, 28), 10)


@BENCHMARKS.register(
    "permuted_mnist",
    {"n_experiences": Opt(int, 10, min=1, max=50), "dataset_root": _MNIST_ROOT},
    "Avalanche PermutedMNIST, domain-incremental, seeded permutations",
    kind="image", preflight=check_mnist,
)
def permuted_mnist(seed: int, n_experiences: int = 10, dataset_root: str | None = None):
    from avalanche.benchmarks.classic import PermutedMNIST

    root = check_mnist_root(dataset_root or default_data_root("mnist"))
    bench = PermutedMNIST(n_experiences=n_experiences, seed=seed, dataset_root=str(root))
    return Stream(bench, (1, 28, 28), 10)


def build_stream(name: str, seed: int, **options) -> Stream:
    """Build the benchmark ``name`` with the trial ``seed`` and its options."""
    return BENCHMARKS.get(name).builder(seed, **options)


