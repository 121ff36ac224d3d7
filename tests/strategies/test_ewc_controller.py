"""EWCController: the penalty by value, the parameter restriction, the empirical Fisher, online mode, state."""
import pytest
import torch
from torch import nn

from clmem.models import MLP
from strategies.ewc_controller import EWCController, empirical_fisher, ewc_penalty, select_parameters


class TwoParam(nn.Module):
    """y = c * h * x with one controller weight c... and one head weight h."""

    def __init__(self, c=1.5, h=-0.5):
        super().__init__()
        self.controller = nn.Linear(1, 1, bias=False)
        self.classifier = nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            self.controller.weight.fill_(c)
            self.classifier.weight.fill_(h)

    def forward(self, x):
        return self.classifier(self.controller(x))


def test_penalty_equals_hand_computed_value():
    params = {"a": torch.tensor([1.0]), "b": torch.tensor([-1.0])}
    anchors = {"a": torch.tensor([0.0]), "b": torch.tensor([1.0])}
    fishers = {"a": torch.tensor([0.5]), "b": torch.tensor([2.0])}
    # (4/2) * (0.5 * 1^2 + 2 * (-2)^2) = 2 * 8.5
    assert ewc_penalty(params, anchors, fishers, 4.0).item() == pytest.approx(17.0)
    # names without a Fisher are not penalised
    assert ewc_penalty(params, anchors, {"a": fishers["a"]}, 4.0).item() == pytest.approx(1.0)
    assert ewc_penalty(params, anchors, {}, 4.0).item() == 0.0


def test_penalty_on_two_parameter_model_leaves_head_unpenalised():
    model = TwoParam()
    assert select_parameters(model, "controller") == ["controller.weight"]
    assert select_parameters(model, "all") == ["controller.weight", "classifier.weight"]
    plugin = EWCController(ewc_lambda=3.0, mode="separate", params="controller")
    plugin.consolidate(model, {"controller.weight": torch.tensor([[2.0]])})
    with torch.no_grad():
        model.controller.weight.add_(0.5)
        model.classifier.weight.add_(10.0)
    penalty = plugin.penalty(model)
    assert penalty.item() == pytest.approx(0.5 * 3.0 * 2.0 * 0.25)  # (λ/2) F Δ²
    penalty.backward()
    assert model.controller.weight.grad.item() == pytest.approx(3.0 * 2.0 * 0.5)  # λ F Δ
    assert model.classifier.weight.grad is None


def test_controller_rule_without_controller_excludes_classifier_head():
    model = MLP(4, 3, hidden_size=5, num_layers=1)
    names = select_parameters(model, "controller")
    assert names == ["body.1.weight", "body.1.bias"]
    assert select_parameters(model, "classifier.") == ["classifier.weight", "classifier.bias"]
    assert select_parameters(model, ["body.1.w", "classifier.b"]) == ["body.1.weight", "classifier.bias"]
    with pytest.raises(ValueError, match="selects no parameter"):
        select_parameters(model, "nothing.")


def test_empirical_fisher_is_mean_squared_per_sample_gradient():
    model = TwoParam(c=1.5, h=-0.5)
    x = torch.tensor([[1.0], [2.0], [-1.0]])
    y = torch.tensor([[0.0], [1.0], [2.0]])
    fisher = empirical_fisher(model, ["controller.weight"], [(x, y)], nn.MSELoss())
    c, h = 1.5, -0.5
    grads = [2 * (c * h * xi - yi) * h * xi for xi, yi in zip([1.0, 2.0, -1.0], [0.0, 1.0, 2.0])]
    expected = sum(g * g for g in grads) / 3
    assert list(fisher) == ["controller.weight"]
    assert fisher["controller.weight"].item() == pytest.approx(expected, rel=1e-5)


def test_online_mode_keeps_one_decayed_running_fisher_and_state_round_trips():
    model = TwoParam()
    plugin = EWCController(ewc_lambda=1.0, mode="online", decay_factor=0.5, params="all")
    plugin.consolidate(model, {"controller.weight": torch.tensor([[4.0]]), "classifier.weight": torch.tensor([[1.0]])})
    with torch.no_grad():
        model.controller.weight.fill_(0.0)
    plugin.consolidate(model, {"controller.weight": torch.tensor([[1.0]]), "classifier.weight": torch.tensor([[1.0]])})
    assert len(plugin.fishers) == 1
    assert plugin.fishers[0]["controller.weight"].item() == pytest.approx(0.5 * 4.0 + 1.0)
    assert plugin.anchors[0]["controller.weight"].item() == 0.0
    clone = EWCController(ewc_lambda=1.0, mode="online", decay_factor=0.5, params="all")
    clone.load_state_dict(plugin.state_dict())
    with torch.no_grad():
        model.controller.weight.fill_(1.0)
    assert clone.penalty(model).item() == pytest.approx(plugin.penalty(model).item()) == pytest.approx(1.5)
    assert clone.experiences_seen == 2


def test_params_all_covers_what_avalanche_ewc_covers_on_the_benchmark_mlp():
    """permuted_mnist_ewc's `params: all` row regularises exactly Avalanche EWC's parameters; the
    default `controller` row leaves the classifier head out."""
    from avalanche.training.utils import zerolike_params_dict

    model = MLP(784, 10, hidden_size=256, num_layers=2)
    avalanche = list(zerolike_params_dict(model))
    assert select_parameters(model, "all") == avalanche
    assert select_parameters(model, "controller") == [n for n in avalanche if not n.startswith("classifier.")]


def test_fisher_samples_are_drawn_across_a_class_sorted_experience():
    """Avalanche's PermutedMNIST experiences are sorted by class: the first 1000 items are all digit 0.
    The Fisher subset must come from the whole experience (seeded, so the same subset each call)."""
    from strategies.ewc_controller import _xy_batches

    y = torch.arange(10).repeat_interleave(50)  # 500 items, class-sorted
    dataset = torch.utils.data.TensorDataset(torch.randn(500, 3), y)
    labels = torch.cat([b[1] for b in _xy_batches(dataset, batch_size=16, limit=100, seed=3)])
    assert len(labels) == 100 and len(labels.unique()) == 10
    again = torch.cat([b[1] for b in _xy_batches(dataset, batch_size=16, limit=100, seed=3)])
    assert torch.equal(labels, again)
    assert len(torch.cat([b[1] for b in _xy_batches(dataset, batch_size=64, limit=500)])) == 500
