import networkx as nx
import numpy as np
import pytest
import torch

from clmem.tasks.knowledge import (
    KGProblem,
    KnowledgeConfig,
    KnowledgeTask,
    Rule,
    completions,
    derive,
    encode_problem,
    generated_rules,
    hits_at_1,
    networkx_kg,
    shift_relations,
)

# relations: 0, 1 base; 2 = inverse(0), 3 = inverse(1); 4 = 0 then 1; 5 = 1 then 0
HELD = [(0, 0, 1), (1, 1, 2), (2, 0, 3)]


def _brute_force(triples, rules, head, relation, num_entities):
    """Every tail the rule defining ``relation`` gives for ``head``, by enumerating entities (no index)."""
    held = set(triples)
    (rule,) = [r for r in rules if r.relation == relation]
    found = set()
    for t in range(num_entities):
        if rule.kind == "inverse":
            ok = (t, rule.body[0], head) in held
        else:
            ok = any((head, rule.body[0], m) in held and (m, rule.body[1], t) in held for m in range(num_entities))
        if ok and (head, relation, t) not in held:
            found.add(t)
    return found


def test_generated_rules_by_hand():
    assert generated_rules(2, 2) == (Rule(2, "inverse", (0,)), Rule(3, "inverse", (1,)),
                                     Rule(4, "compose", (0, 1)), Rule(5, "compose", (1, 0)))
    assert generated_rules(1, 1) == (Rule(1, "inverse", (0,)), Rule(2, "compose", (0, 0)))


def test_derive_and_completions_on_a_hand_graph():
    rules = generated_rules(2, 2)
    assert derive(HELD, rules) == {(1, 2, 0), (3, 2, 2), (2, 3, 1), (0, 4, 2), (1, 5, 3)}
    assert completions(HELD, rules, 0, 4) == {2}
    assert completions(HELD, rules, 3, 2) == {2}
    assert completions(HELD, rules, 0, 5) == frozenset()
    # a rule that gives a held triple back does not complete it
    assert completions([(0, 0, 1), (1, 0, 0)], [Rule(0, "inverse", (0,))], 0, 0) == frozenset()


@pytest.mark.parametrize("kind", ["inverse", "compose"])
def test_generated_answers_are_the_unique_brute_force_completion(kind):
    config = KnowledgeConfig(num_entities=7, num_relations=2, num_composed=2, density=0.6)
    task = KnowledgeTask(config, seed=3)
    for _ in range(30):
        problem = task.sample_problem(kind)
        head, relation = problem.query
        assert problem.kind == kind and relation >= config.num_relations  # a derived relation, never held
        assert _brute_force(problem.triples, config.rules, head, relation, 7) == {problem.answer}
        assert all(r < config.num_relations for _, r, _ in problem.triples)
        assert len(problem.triples) == 2 * round(0.6 * 7)


def test_networkx_graph_triples_match_networkx():
    entities, relations, triples, rules = networkx_kg("florentine_families")
    graph = nx.florentine_families_graph()
    assert len(entities) == 15 and relations == ("marriage",) and len(triples) == 2 * graph.number_of_edges()
    medici = entities.index("Medici")
    assert {entities[t] for h, _, t in triples if h == medici} == set(graph["Medici"])
    assert rules == (Rule(0, "inverse", (0,)),)
    entities, relations, triples, _ = networkx_kg("karate_club")
    assert len(entities) == 36 and relations == ("friend", "member_of", "has_member")
    hi = entities.index("club:Mr. Hi")
    members = {int(entities[t]) for h, r, t in triples if h == hi and r == 2}
    assert members == {n for n, d in nx.karate_club_graph().nodes(data=True) if d["club"] == "Mr. Hi"}


@pytest.mark.parametrize("name", ["florentine_families", "davis_southern_women", "karate_club"])
def test_networkx_queries_withhold_one_true_triple_with_a_unique_filtered_answer(name):
    entities, _, graph_triples, rules = networkx_kg(name)
    config = KnowledgeConfig(source=f"networkx_{name}", num_entities=len(entities), num_triples=16, relabel=False)
    assert config.query_kinds == ("inverse",)
    task = KnowledgeTask(config, seed=1)
    for _ in range(20):
        problem = task.sample_problem()
        head, relation = problem.query
        assert len(problem.triples) == 16 and set(problem.triples) <= set(graph_triples)
        assert (head, relation, problem.answer) in graph_triples
        assert (head, relation, problem.answer) not in problem.triples
        assert _brute_force(problem.triples, rules, head, relation, len(entities)) == {problem.answer}


def test_relabelled_networkx_problems_are_the_graph_under_an_injection():
    config = KnowledgeConfig(source="networkx_florentine_families", num_entities=20, num_triples=40)
    problem = KnowledgeTask(config, seed=2).sample_problem()
    used = {h for h, _, _ in problem.triples} | {t for _, _, t in problem.triples}
    assert len(used) == 15 and max(used) < 20 and len(problem.triples) == 39  # every triple but the query's
    assert _brute_force(problem.triples, config.rules, *problem.query, 20) == {problem.answer}


def test_encoding_by_hand():
    problem = KGProblem(((0, 1, 2),), (2, 0), 1, "inverse")
    x, y, mask = encode_problem(problem, num_entities=3, num_relation_ids=2)
    assert x.shape == (3, 2 * 3 + 2 + 3)
    assert np.flatnonzero(x[0]).tolist() == [0, 3 + 1, 5 + 2, 8 + 0]  # head 0, relation 1, tail 2, fact
    assert np.flatnonzero(x[1]).tolist() == [2, 3 + 0, 8 + 1]  # query head 2, relation 0, query flag
    assert np.flatnonzero(x[2]).tolist() == [8 + 2]  # answer flag
    assert y.tolist() == [0, 0, 1] and mask.tolist() == [False, False, True]
    shifted = shift_relations(problem, 4)
    assert shifted.triples == ((0, 5, 2),) and shifted.query == (2, 4) and shifted.answer == 1


def test_batches_and_hits_at_1():
    task = KnowledgeTask(num_entities=5, num_relations=1, num_composed=1, seed=0)
    batch, problems = task.sample(4)
    assert batch.inputs.shape[-1] == task.input_size == 2 * 5 + 3 + 3 and task.num_classes == 5
    logits = torch.nn.functional.one_hot(batch.targets, 5).float()
    assert hits_at_1(logits, batch.targets, batch.mask) == 1.0
    last = batch.mask[1].nonzero()[0, 0]
    logits[1, last] = logits[1, last].roll(1)
    assert hits_at_1(logits, batch.targets, batch.mask) == 0.75
    with pytest.raises(ValueError, match=r"^hits_at_1\.mask: expected exactly one answer step"):
        hits_at_1(logits, batch.targets, torch.zeros_like(batch.mask))


def test_seeded_determinism():
    a = [KnowledgeTask(seed=5).sample_problem() for _ in range(1)] + KnowledgeTask(seed=5).sample(3)[1]
    b = [KnowledgeTask(seed=5).sample_problem() for _ in range(1)] + KnowledgeTask(seed=5).sample(3)[1]
    assert a == b
    assert KnowledgeTask(seed=6).sample(3)[1] != b[1:]
    nx_config = KnowledgeConfig(source="networkx_karate_club", num_entities=40)
    assert KnowledgeTask(nx_config, seed=1).sample(2)[1] == KnowledgeTask(nx_config, seed=1).sample(2)[1]


@pytest.mark.parametrize("field, value", [
    ("source", "wordnet"), ("num_entities", 1), ("num_relations", 0), ("num_composed", -1), ("density", 0.0),
    ("density", float("nan")), ("query_kinds", ("lookup",)), ("query_kinds", ()), ("num_triples", 0),
    ("relabel", "yes"),
])
def test_bad_config_values_name_the_field_in_one_line(field, value):
    with pytest.raises(ValueError, match=rf"^KnowledgeConfig\.{field}: expected [^\n]*$"):
        KnowledgeConfig(**{field: value})


def test_bad_config_combinations_name_the_field():
    with pytest.raises(ValueError, match=r"^KnowledgeConfig\.num_composed: expected an int >= 1 for compose"):
        KnowledgeConfig(num_composed=0)
    with pytest.raises(ValueError, match=r"^KnowledgeConfig\.query_kinds: expected a non-empty tuple of "
                                         r"\('inverse',\) for source 'networkx_karate_club'"):
        KnowledgeConfig(source="networkx_karate_club", num_entities=36, query_kinds=("compose",))
    with pytest.raises(ValueError, match=r"^KnowledgeConfig\.num_entities: expected an int >= 36 \(the entities "
                                         r"of networkx_karate_club\), got 12$"):
        KnowledgeConfig(source="networkx_karate_club")
    with pytest.raises(ValueError, match=r"^KnowledgeTask\.kind: expected one of \('inverse',\), got 'compose'$"):
        KnowledgeTask(num_composed=0, query_kinds=("inverse",)).sample_problem("compose")
