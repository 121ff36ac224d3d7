"""EWC on every controller: ``ewc_controller``'s Fisher on each sequence learner equals a per-sample loop
written out here (``zero_grad``, the loss of one sample, ``backward``, squared gradients), and Avalanche's
``ewc`` / ``si`` train on a DNC. Tiny sizes: a 2-bit copy stream of 6 sequences, 8 hidden units, 5 slots."""
import math
import warnings

import pytest
import torch

from clmem.models import build_model
from clmem.runner import make_evaluator, seed_everything
from clmem.tasks.streams import AnswerCrossEntropy, MaskedBitLoss, continual_algorithmic
from strategies import create_strategy
from strategies.finite_guard import NonFiniteError

CORES = ("lstm", "ntm", "dnc", "mann", "sparse_dnc")
SIZES = {"hidden_size": 8, "memory_size": 5, "word_size": 3}


@pytest.fixture(scope="module")
def copy_stream():
    return continual_algorithmic(0, tasks="copy", num_bits=2, max_length=2, train_samples=6, test_samples=2)


def _learner(kind: str, input_shape, num_classes: int):
    seed_everything(0)
    options = {"hidden_size": 8} if kind == "lstm" else dict(SIZES)
    return build_model(kind, input_shape, num_classes, **options)


def reference_fisher(model, dataset, criterion) -> dict[str, torch.Tensor]:
    """Mean over the dataset's samples of the squared gradient of the loss of that one sample, divided by
    the largest entry over all parameters (the plugin's default ``fisher_norm="max"``)."""
    model.eval()
    sums = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(len(dataset)):
        item = dataset[i]
        model.zero_grad()
        out = model(item[0].unsqueeze(0))
        if isinstance(out, tuple):
            out = out[0]
        criterion(out, torch.as_tensor(item[1]).unsqueeze(0)).backward()
        for n, p in model.named_parameters():
            if p.grad is not None:
                sums[n] += p.grad ** 2
    model.train()
    fisher = {n: s / len(dataset) for n, s in sums.items()}
    top = max(float(f.max()) for f in fisher.values())
    return {n: f / top for n, f in fisher.items()}


def _train_one(strategy, experience) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        strategy.train(experience)


def _plugin(strategy):
    return next(p for p in strategy.plugins if type(p).__name__ == "EWCController")


def _check_against_reference(model, strategy, experience, criterion) -> None:
    _train_one(strategy, experience)
    fisher = _plugin(strategy).fishers[0]
    reference = reference_fisher(model, experience.dataset, criterion)
    assert set(fisher) == {n for n, _ in model.named_parameters()}
    assert max(float(f.max()) for f in fisher.values()) == pytest.approx(1.0)
    for name, value in fisher.items():
        assert torch.isfinite(value).all(), name
        torch.testing.assert_close(value, reference[name], rtol=1e-4, atol=1e-7, msg=name)


@pytest.mark.parametrize("kind", CORES)
def test_fisher_of_each_sequence_learner_equals_the_per_sample_loop(kind, copy_stream):
    model = _learner(kind, copy_stream.input_shape, copy_stream.num_classes)
    criterion = MaskedBitLoss()
    strategy = create_strategy("ewc_controller", model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                               criterion=criterion, train_mb_size=3, evaluator=make_evaluator(copy_stream),
                               params="all")
    _check_against_reference(model, strategy, copy_stream.benchmark.train_stream[0], criterion)


def test_fisher_of_memn2n_on_the_memnet_layout_equals_the_per_sample_loop():
    """MemN2N reads ``x [B, M + 1, S]`` word ids (M = 3 memories of S = 4 words, then the question) and
    answers one of V = 9 words; its ``nonzero`` (only non-empty memories are encoded) defeats ``vmap``."""
    from avalanche.benchmarks import tensors_benchmark

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 9, (5, 4, 4), generator=g)
    x[0, 1] = 0  # an empty memory row
    y = torch.randint(1, 9, (5,), generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bench = tensors_benchmark([(x, y)], [(x[:2], y[:2])], task_labels=[0])
    seed_everything(0)
    model = build_model("memn2n", (4, 4), 9, embedding_dim=5, hops=2)
    criterion = AnswerCrossEntropy()
    strategy = create_strategy("ewc_controller", model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                               criterion=criterion, train_mb_size=5, evaluator=make_evaluator(), params="all")
    _check_against_reference(model, strategy, bench.train_stream[0], criterion)


def test_controller_parameters_of_a_wrapped_core_are_its_controller_only(copy_stream):
    from strategies.ewc_controller import select_parameters

    model = _learner("dnc", copy_stream.input_shape, copy_stream.num_classes)
    names = select_parameters(model, "controller")
    assert names and all(n.startswith("core.controller.") for n in names)
    assert "core.output_layer.weight" in select_parameters(model, "all")


@pytest.mark.parametrize("name, options", [("ewc", {"ewc_lambda": 10.0}), ("si", {"si_lambda": 1.0})])
def test_avalanche_ewc_and_si_train_a_dnc(name, options, copy_stream):
    model = _learner("dnc", copy_stream.input_shape, copy_stream.num_classes)
    before = [p.detach().clone() for p in model.parameters()]
    strategy = create_strategy(name, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                               criterion=MaskedBitLoss(), train_mb_size=3, evaluator=make_evaluator(copy_stream),
                               **options)
    try:
        _train_one(strategy, copy_stream.benchmark.train_stream[0])
    except NonFiniteError as exc:  # pragma: no cover - the failure message is the assertion
        pytest.fail(str(exc))
    assert math.isfinite(float(strategy.loss))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_normalize_fisher_by_hand():
    from strategies.ewc_controller import normalize_fisher

    fisher = {"a": torch.tensor([1.0, 4.0]), "b": torch.tensor([[2.0, 1.0]])}
    by_max = normalize_fisher(fisher, "max")
    torch.testing.assert_close(by_max["a"], torch.tensor([0.25, 1.0]))
    torch.testing.assert_close(by_max["b"], torch.tensor([[0.5, 0.25]]))
    by_mean = normalize_fisher(fisher, "mean")  # mean entry (1 + 4 + 2 + 1) / 4 = 2
    torch.testing.assert_close(by_mean["a"], torch.tensor([0.5, 2.0]))
    assert normalize_fisher(fisher, "none")["a"] is fisher["a"]
    zero = {"a": torch.zeros(3)}
    assert torch.equal(normalize_fisher(zero, "max")["a"], torch.zeros(3))
    with pytest.raises(ValueError, match="fisher_norm"):
        normalize_fisher(fisher, "sum")


def test_vmap_and_loop_agree_and_vmap_alone_fails_loudly_on_a_custom_function(copy_stream):
    from strategies.ewc_controller import fisher_and_method

    from clmem.models import MLP

    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    mlp = MLP(5, 3, hidden_size=4, num_layers=1)
    names = [n for n, _ in mlp.named_parameters()]
    batch = [(torch.randn(6, 5, generator=g), torch.randint(0, 3, (6,), generator=g))]
    by_vmap, used = fisher_and_method(mlp, names, batch, torch.nn.CrossEntropyLoss(), method="vmap")
    by_loop, _ = fisher_and_method(mlp, names, batch, torch.nn.CrossEntropyLoss(), method="loop")
    assert used == "vmap"
    for n in names:
        torch.testing.assert_close(by_vmap[n], by_loop[n], rtol=1e-4, atol=1e-8)
    data = copy_stream.benchmark.train_stream[0].dataset
    x = torch.stack([data[i][0] for i in range(4)])
    y = torch.stack([data[i][1] for i in range(4)])
    dnc = _learner("dnc", copy_stream.input_shape, copy_stream.num_classes)
    names = [n for n, _ in dnc.named_parameters()]
    assert fisher_and_method(dnc, names, [(x, y)], MaskedBitLoss())[1] == "loop"
    with pytest.raises(Exception):
        fisher_and_method(dnc, names, [(x, y)], MaskedBitLoss(), method="vmap")
