"""Hopfield key-value classifier and nearest-class-mean baseline."""
import math
import warnings

import pytest
import torch
from torch import nn

from clmem.benchmarks import build_stream
from clmem.models import build_model
from strategies import create_strategy
from strategies.kv_memory import KVMemoryClassifier, NCMClassifier


class Identity(nn.Module):
    def get_features(self, x):
        return x

    def forward(self, x):
        return x


def test_ncm_hand_checked_on_a_tiny_case():
    ncm = NCMClassifier(Identity(), num_classes=3, feature_size=2, normalize=False).eval()
    ncm.write(torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]]), torch.tensor([0, 0, 2]))
    assert ncm.classes == [0, 2]
    assert torch.equal(ncm.means, torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 4.0]]))
    scores = ncm(torch.tensor([[1.0, 1.0]]))
    # class 0: -((1-1)^2 + (1-0)^2) = -1 ; class 2: -((1-0)^2 + (1-4)^2) = -10 ; class 1 unseen
    assert scores[0, 0].item() == pytest.approx(-1.0) and scores[0, 2].item() == pytest.approx(-10.0)
    assert scores[0, 1].item() == -1e9
    assert ncm(torch.tensor([[0.0, 3.0]])).argmax(1).item() == 2


def test_kv_retrieval_hand_checked_and_grows_with_new_classes():
    kv = KVMemoryClassifier(Identity(), num_classes=3, key_size=2, keys_per_class=2, beta=2.0,
                            normalize=False).eval()
    kv.write(torch.tensor([[1.0, 0.0], [0.9, 0.0], [0.8, 0.0]]), torch.tensor([0, 0, 0]))
    assert kv.classes == [0] and int(kv.memory.filled) == 2  # at most keys_per_class per class
    kv.write(torch.tensor([[0.0, 1.0]]), torch.tensor([2]))
    assert kv.classes == [0, 2] and int(kv.memory.filled) == 3
    q = torch.tensor([[1.0, 1.0]])
    e = [math.exp(2.0 * 1.0), math.exp(2.0 * 0.9), math.exp(2.0 * 1.0)]  # softmax(β K q)
    p0, p2 = (e[0] + e[1]) / sum(e), e[2] / sum(e)
    probs = kv(q).exp()[0]
    assert probs[0].item() == pytest.approx(p0, rel=1e-5) and probs[2].item() == pytest.approx(p2, rel=1e-5)
    assert probs[1].item() == pytest.approx(1e-8)  # no key of class 1: the clamp floor


@pytest.mark.parametrize("name", ["hopfield_kv", "ncm"])
def test_memory_classifiers_grow_per_experience_and_beat_chance_on_split_digits(name):
    torch.manual_seed(0)
    stream = build_stream("split_digits", seed=0)
    model = build_model("mlp", stream.input_shape, stream.num_classes, hidden_size=64)
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training.plugins import EvaluationPlugin

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evaluator = EvaluationPlugin(accuracy_metrics(stream=True), loggers=[])
    strategy = create_strategy(name, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                               criterion=nn.CrossEntropyLoss(), evaluator=evaluator, train_epochs=1)
    assert strategy.clmem_resumable
    seen = set()
    for exp in stream.benchmark.train_stream:
        strategy.train(exp)
        seen |= set(exp.classes_in_this_experience)
        assert strategy.model.classes == sorted(seen)
    acc = strategy.eval(stream.benchmark.test_stream)["Top1_Acc_Stream/eval_phase/test_stream/Task000"]
    assert acc > 0.5  # chance is 0.1 over 10 classes
