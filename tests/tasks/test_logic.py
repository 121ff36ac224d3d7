import pytest
import torch

from clmem.tasks import masked_bce_loss
from clmem.tasks.logic import HornRule, LogicConfig, LogicProblem, LogicTask, entails, forward_chain


def test_forward_chaining_hand_checked():
    # facts: 0, 1; rules: 0 & 1 -> 2, 2 -> 3, 3 & 4 -> 5, 5 -> 0
    rules = (HornRule((0, 1), 2), HornRule((2,), 3), HornRule((3, 4), 5), HornRule((5,), 0))
    assert forward_chain((0, 1), rules) == {0, 1, 2, 3}
    assert entails((0, 1), rules, 3) and not entails((0, 1), rules, 5) and not entails((0, 1), rules, 4)
    assert forward_chain((0, 1, 4), rules) == {0, 1, 2, 3, 4, 5}
    # order of rules does not matter (chains needing several passes)
    assert forward_chain((0, 1), tuple(reversed(rules))) == {0, 1, 2, 3}


def test_generated_labels_agree_with_forward_chaining_and_are_balanced():
    task = LogicTask(num_atoms=6, num_facts=2, num_rules=5, max_body=2, seed=0)
    problems = [task.sample_problem() for _ in range(200)]
    for p in problems:
        assert p.label == (p.query in forward_chain(p.facts, p.rules))
        if p.label:
            assert p.query not in p.facts  # derived_only: a rule had to fire
    positives = sum(p.label for p in problems)
    assert 70 < positives < 130
    again = LogicTask(num_atoms=6, num_facts=2, num_rules=5, max_body=2, seed=0)
    assert [again.sample_problem() for _ in range(5)] == problems[:5]


def test_encoding_hand_checked():
    task = LogicTask(num_atoms=3, num_facts=1, num_rules=1, max_body=1, seed=0)
    problem = LogicProblem(facts=(0,), rules=(HornRule((0,), 2),), query=2, label=True)
    x, y, mask = task.encode(problem)
    assert x.shape == (4, 10) and mask.tolist() == [False, False, False, True] and y[-1, 0] == 1.0
    rows = {tuple(r) for r in x[:2].tolist()}
    assert (0, 0, 0, 1, 0, 0, 1, 0, 0, 0) in rows  # fact 0: head block, fact flag
    assert (1, 0, 0, 0, 0, 1, 0, 1, 0, 0) in rows  # rule 0 -> 2: body block, head block, rule flag
    assert x[2].tolist() == [0, 0, 0, 0, 0, 1, 0, 0, 1, 0] and x[3].tolist() == [0] * 9 + [1]


def test_batch_scores_only_the_answer_step():
    task = LogicTask(seed=1)
    batch, problems = task.sample(6)
    assert batch.inputs.shape[-1] == task.input_size and batch.mask.sum() == 6
    labels = torch.tensor([float(p.label) for p in problems])
    assert torch.equal(batch.targets[batch.mask][:, 0], labels)
    perfect = (batch.targets * 2 - 1) * 20
    assert float(masked_bce_loss(perfect, batch.targets, batch.mask)) < 1e-6


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="LogicConfig.num_facts"):
        LogicConfig(num_atoms=3, num_facts=3)
    with pytest.raises(ValueError, match="LogicConfig.max_body"):
        LogicConfig(num_atoms=3, max_body=3)


def _entailed_by_truth_tables(facts, rules, query, num_atoms):
    """Semantic entailment: the query holds in every model (assignment) satisfying the facts and rules."""
    for bits in range(2 ** num_atoms):
        true = {a for a in range(num_atoms) if bits >> a & 1}
        if all(f in true for f in facts) and all(r.head in true or not set(r.body) <= true for r in rules):
            if query not in true:
                return False
    return True


def test_forward_chaining_agrees_with_truth_tables():
    task = LogicTask(num_atoms=5, num_facts=1, num_rules=4, max_body=2, balanced=False, seed=7)
    for _ in range(40):
        p = task.sample_problem()
        for atom in range(5):
            assert entails(p.facts, p.rules, atom) == _entailed_by_truth_tables(p.facts, p.rules, atom, 5)
