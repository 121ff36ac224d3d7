"""Every registered model treats bad batches alike: non-finite ``x`` and ``B = 0`` are refused in one line
before anything changes, float64 input to a float32 model is refused in one line, a float64 model runs.

The models are enumerated from :data:`clmem.models.MODELS`, so a new model joins these tests automatically; its
input shape follows its ``accepts`` stream kinds (image ``(1, 8, 8)``, memnet word ids ``(M + 1, S) = (3, 4)``,
sequences ``(T, D) = (3, 4)``).
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from clmem.memory._validation import check_batch_input
from clmem.models import MODELS, build_model

NUM_CLASSES = 5
#: tiny values for whichever of these options a model declares
TINY = {"hidden_size": 8, "memory_size": 8, "word_size": 4, "feature_size": 4, "k": 2, "embedding_dim": 4,
        "channels": 2, "num_chunks": 2, "k_neighbours": 2, "hops": 1}
NAMES = MODELS.names()


def _takes_ids(name: str) -> bool:
    return "qa_memnet" in MODELS.get(name).meta.get("accepts", ())


def _shape(name: str) -> tuple[int, ...]:
    accepts = MODELS.get(name).meta.get("accepts", ())
    if tuple(accepts) == ("episodes",):  # few-shot learners: 2x2 pixels + one-hot previous label per step
        return (3, 4 + NUM_CLASSES)
    return (1, 8, 8) if "image" in accepts else (3, 4)


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    entry = MODELS.get(name)
    options = {key: value for key, value in TINY.items() if key in entry.options}
    return build_model(name, _shape(name), NUM_CLASSES, **options)


def _input(name: str, batch: int = 2, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(batch, *_shape(name), generator=generator, dtype=torch.float64)
    if _takes_ids(name):  # word ids 0..NUM_CLASSES-1 (0 = padding), carried in a float tensor
        x = (x * NUM_CLASSES).floor()
    return x.to(dtype)


def _same(a, b) -> bool:
    """Deep equality of two state-dict values (tensors, arrays, and dicts / sequences of them)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(u, v) for u, v in zip(a, b))
    return a == b


def test_registry_has_every_learner():
    assert {"lstm", "ntm", "dnc", "mann", "associative", "hierarchical", "gated", "memn2n", "mlp",
            "cnn", "igor"} <= set(NAMES)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "+inf", "-inf"])
@pytest.mark.parametrize("name", NAMES)
def test_non_finite_input_is_refused_before_anything_changes(name, bad):
    model = _model(name).train()
    before = copy.deepcopy(model.state_dict())
    x = _input(name, batch=3)
    x[1].view(-1)[-1] = bad
    with pytest.raises(ValueError, match=r"\.x: expected finite values, got nan/inf at batch row 1$"):
        model(x)
    assert _same(before, model.state_dict()), "a refused batch changed the model"
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_empty_batch_is_refused(name):
    model = _model(name)
    with pytest.raises(ValueError, match=r"\.x: expected a batch of B >= 1 rows, got shape \(0, "):
        model(_input(name, batch=0))


@pytest.mark.parametrize("name", NAMES)
def test_float64_input_to_float32_model(name):
    model = _model(name).eval()
    x64 = _input(name, dtype=torch.float64)
    if _takes_ids(name):  # word ids: the dtype carrying them does not matter
        torch.testing.assert_close(model(x64), model(x64.long()))
        return
    with pytest.raises(ValueError, match=r"\.x: expected float32 input for a float32 model, got float64; "
                                         r"call model\.double\(\) for float64$"):
        model(x64)


@pytest.mark.parametrize("name", NAMES)
def test_float64_model_runs_and_backpropagates(name):
    model = _model(name).double().train()
    y = model(_input(name, dtype=torch.float64))
    assert y.dtype == torch.float64 and y.shape[0] == 2 and bool(torch.isfinite(y).all())
    y.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float64 and bool(torch.isfinite(g).all()) for g in grads)


def test_check_names_the_first_bad_row():
    x = torch.zeros(4, 2, 3)
    x[2, 1, 0] = float("nan")
    x[3, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"^M\.forward\.x: expected finite values, got nan/inf at batch row 2$"):
        check_batch_input("M.forward", x)


def test_check_accepts_good_batches_and_integer_ids():
    check_batch_input("M.forward", torch.ones(1, 3), torch.float32)
    check_batch_input("M.forward", torch.tensor([[0, 3, -1]]))  # integers are never non-finite
    with pytest.raises(ValueError, match=r"^M\.forward\.x: expected float32 input for a float32 model, got "
                                         r"int64; cast x to float32$"):
        check_batch_input("M.forward", torch.tensor([[0, 3]]), torch.float32)
    with pytest.raises(ValueError, match=r"^M\.forward\.x: expected a tensor \[B, \.\.\.\] with B >= 1, got list$"):
        check_batch_input("M.forward", [[1.0]])
