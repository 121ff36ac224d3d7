"""Benchmark streams: offline digits streams and real MNIST through Avalanche."""
import pytest
import torch

from clmem.benchmarks import build_stream, check_mnist_root


def classes(stream):
    return [sorted(int(c) for c in e.classes_in_this_experience) for e in stream]


def test_split_digits_is_class_incremental_with_seeded_order():
    s0 = build_stream("split_digits", seed=0)
    exps = classes(s0.benchmark.train_stream)
    assert len(exps) == 5 and all(len(c) == 2 for c in exps)
    assert sorted(c for pair in exps for c in pair) == list(range(10))
    assert classes(s0.benchmark.test_stream) == exps
    assert classes(build_stream("split_digits", seed=0).benchmark.train_stream) == exps
    assert classes(build_stream("split_digits", seed=3).benchmark.train_stream) != exps
    assert s0.input_shape == (1, 8, 8) and s0.num_classes == 10
    x, y, *_ = s0.benchmark.train_stream[0].dataset[0]
    assert x.shape == (1, 8, 8) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    n_train = sum(len(e.dataset) for e in s0.benchmark.train_stream)
    n_test = sum(len(e.dataset) for e in s0.benchmark.test_stream)
    assert n_train + n_test == 1797 and abs(n_test / 1797 - 0.3) < 0.01


def test_permuted_digits_is_domain_incremental():
    s = build_stream("permuted_digits", seed=1, n_experiences=3)
    train = s.benchmark.train_stream
    assert len(train) == 3
    assert all(len(e.dataset) == len(train[0].dataset) for e in train)
    x0 = train[0].dataset[0][0]
    x1 = train[1].dataset[0][0]
    assert not torch.equal(x0, x1)  # same image, other permutation
    assert torch.allclose(x0.flatten().sort().values, x1.flatten().sort().values)


def test_missing_mnist_gives_clear_error_without_download(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"MNIST not found: expected .*MNIST/raw/train-images-idx3-ubyte"):
        build_stream("split_mnist", seed=0, dataset_root=str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # nothing downloaded or created


def test_split_mnist_reads_real_files(mnist_root):
    assert check_mnist_root(mnist_root) == mnist_root
    s = build_stream("split_mnist", seed=0, dataset_root=str(mnist_root))
    exps = classes(s.benchmark.train_stream)
    assert len(exps) == 5 and sorted(c for p in exps for c in p) == list(range(10))
    assert sum(len(e.dataset) for e in s.benchmark.train_stream) == 60000
    assert sum(len(e.dataset) for e in s.benchmark.test_stream) == 10000


def test_permuted_mnist_reads_real_files(mnist_root):
    s = build_stream("permuted_mnist", seed=0, n_experiences=2, dataset_root=str(mnist_root))
    assert len(s.benchmark.train_stream) == 2
    assert len(s.benchmark.test_stream[1].dataset) == 10000
