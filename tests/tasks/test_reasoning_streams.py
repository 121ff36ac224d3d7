import pytest
import torch

from clmem.benchmarks import BENCHMARKS, build_stream, preflight
from clmem.compat import stream_kind
from clmem.options import ConfigError
from clmem.tasks.knowledge import KnowledgeConfig, completions
from clmem.tasks.reasoning_streams import knowledge_configs
from clmem.tasks.temporal import QUERY_KINDS, TemporalTask

NAMES = ("continual_knowledge", "continual_temporal", "continual_logic")


def _samples(stream, split="train"):
    """Per experience of ``split``: its Avalanche dataset."""
    return [getattr(stream.benchmark, f"{split}_stream")[e].dataset for e in range(len(stream.benchmark.train_stream))]


def _tensors(dataset):
    """``(x [N, T, D], y [N], info [N, 2])`` of an experience's samples."""
    items = [dataset[i] for i in range(len(dataset))]
    return tuple(torch.stack([item[k] for item in items]) for k in range(3))


@pytest.mark.parametrize("name", NAMES)
def test_tiny_streams_are_left_padded_answer_sequences_and_seeded(name):
    tiny = BENCHMARKS.get(name).meta["tiny"]
    stream = build_stream(name, 0, **tiny)
    assert stream_kind({"name": name, **tiny}) == "qa_sequence"
    assert stream.metric == "accuracy" and stream.higher_is_better and len(stream.benchmark.train_stream) == 2
    steps, width = stream.input_shape
    for e, dataset in enumerate(_samples(stream)):
        assert len(dataset) == tiny["train_samples"]
        for i in range(len(dataset)):
            x, y, info, task_label = dataset[i]
            assert x.shape == (steps, width) and y.dim() == 0 and 0 <= int(y) < stream.num_classes
            assert task_label == 0 and x[-1].sum() == 1 and x[-1, -1] == 1  # the answer step is last
            assert x[:steps - int(info[1]) - 2].abs().sum() == 0  # zero steps in front only
    again = build_stream(name, 0, **tiny)
    assert torch.equal(_tensors(_samples(again)[1])[0], _tensors(_samples(stream)[1])[0])
    assert not torch.equal(_tensors(_samples(build_stream(name, 1, **tiny))[0])[0], _tensors(_samples(stream)[0])[0])


def test_knowledge_experiences_use_disjoint_relations_and_their_answers_complete_the_graph():
    stream = build_stream("continual_knowledge", 0, n_experiences=2, num_entities=5, num_relations=1,
                          num_composed=1, train_samples=12, test_samples=4)
    E, R = 5, 2 * (2 * 1 + 1)
    seen = []
    for dataset in _samples(stream):
        x, y, info = _tensors(dataset)
        relations = x[..., E:E + R].sum(dim=(0, 1)).nonzero().flatten().tolist()
        seen.append(set(relations))
        for seq, answer, (_, length) in zip(x, y, info):  # decode and complete by the rules
            rows = seq[-length - 2:-2]
            triples = [(int(r[:E].argmax()), int(r[E:E + R].argmax()), int(r[E + R:2 * E + R].argmax())) for r in rows]
            head, relation = int(seq[-2, :E].argmax()), int(seq[-2, E:E + R].argmax())
            group = relation // 3
            local = [(h, r - 3 * group, t) for h, r, t in triples]
            rules = KnowledgeConfig(num_entities=E, num_relations=1, num_composed=1).rules
            assert completions(local, rules, head, relation - 3 * group) == {int(answer)}
    assert seen[0] <= {0, 1, 2} and seen[1] <= {3, 4, 5} and seen[0] and seen[1]


def test_networkx_knowledge_stream_one_experience_per_graph():
    configs = knowledge_configs(0, source="networkx", graphs="florentine_families,karate_club", num_triples=10)
    assert [c.source for c in configs] == ["networkx_florentine_families", "networkx_karate_club"]
    assert {c.num_entities for c in configs} == {36}
    stream = build_stream("continual_knowledge", 0, source="networkx", graphs="florentine_families,karate_club",
                          num_triples=10, train_samples=4, test_samples=2)
    assert stream.input_shape == (12, 2 * 36 + (1 + 3) + 3) and stream.num_classes == 36


def test_temporal_experiences_are_query_kinds_in_order():
    stream = build_stream("continual_temporal", 0, query_kinds="order,first", train_samples=6, test_samples=2)
    kinds = [set(_tensors(d)[2][:, 0].tolist()) for d in _samples(stream)]
    assert kinds == [{QUERY_KINDS.index("order")}, {QUERY_KINDS.index("first")}]
    assert stream.num_classes == TemporalTask().num_classes == 8


def test_logic_experiences_use_disjoint_atoms():
    stream = build_stream("continual_logic", 0, n_experiences=2, num_atoms=4, train_samples=10, test_samples=2)
    atoms = 8
    used = [set((_tensors(d)[0][..., :2 * atoms].sum(dim=(0, 1)).nonzero().flatten() % atoms).tolist())
            for d in _samples(stream)]
    assert used[0] <= {0, 1, 2, 3} and used[1] <= {4, 5, 6, 7}
    labels = torch.cat([_tensors(d)[1] for d in _samples(stream)])
    assert set(labels.tolist()) <= {0, 1}


@pytest.mark.parametrize("name, options, message", [
    ("continual_knowledge", {"density": 0.0}, r"^benchmark\.density: expected a number in \(0\.0, 1\.0\]"),
    ("continual_knowledge", {"source": "networkx", "graphs": "wordnet"}, r"^benchmark\.graphs: expected some of"),
    ("continual_knowledge", {"source": "networkx", "query_kinds": "compose"}, r"^benchmark\.query_kinds: expected"),
    ("continual_knowledge", {"num_composed": 0, "query_kinds": "compose"}, r"^benchmark\.num_composed: expected"),
    ("continual_temporal", {"query_kinds": "first,after"}, r"^benchmark\.query_kinds: expected a non-empty tuple"),
    ("continual_temporal", {"max_k": 5}, r"^benchmark\.max_k: expected an int < min_events \(4\), got 5$"),
    ("continual_logic", {"num_facts": 6}, r"^benchmark\.num_facts: expected an int < num_atoms \(6\), got 6$"),
])
def test_bad_options_name_the_field_before_and_when_building(name, options, message):
    with pytest.raises(ValueError, match=message):
        build_stream(name, 0, **options)
    with pytest.raises(ConfigError, match=message):
        preflight({"name": name, **options})


@pytest.mark.parametrize("name", NAMES)
def test_a_sequence_learner_trains_on_each_stream_through_avalanche(name):
    from clmem.config import Experiment
    from clmem.matrix import train_cell

    tiny = BENCHMARKS.get(name).meta["tiny"]
    raw = {"name": "t", "benchmark": {"name": name, **tiny}, "model": {"name": "lstm", "hidden_size": 8},
           "strategy": {"name": "sequence", "train_mb_size": 4, "lr": 0.05}}
    trial = Experiment.from_dict(raw).trials[0]
    assert train_cell(trial, build_stream(name, 0, **tiny)).startswith("accuracy ")

