import networkx as nx
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clmem.tasks.graph import (
    GraphConfig,
    GraphTask,
    exact_match_accuracy,
    graph_triples,
    is_shortest_path,
    random_labelled_graph,
    traverse,
)


def _follow_with_networkx(graph, start, labels):
    node = start
    for label in labels:
        (node,) = [v for _, v, key, d in graph.edges(node, keys=True, data=True) if d["label"] == label]
    return node


def test_graphs_are_seeded_deterministic_and_strongly_connected():
    a = random_labelled_graph(8, 3, 0.4, np.random.default_rng(0))
    b = random_labelled_graph(8, 3, 0.4, np.random.default_rng(0))
    assert graph_triples(a) == graph_triples(b)
    assert nx.is_strongly_connected(a)
    for node in a.nodes:
        labels = [d["label"] for _, _, d in a.out_edges(node, data=True)]
        assert len(labels) == len(set(labels)) >= 1  # at most one edge per (node, label)


def test_traversal_answers_match_networkx():
    task = GraphTask(num_nodes=7, num_labels=3, edge_prob=0.5, min_hops=1, max_hops=5, seed=1)
    batch = task.sample(12, "traversal")
    for graph, (start, labels), answer in zip(batch.graphs, batch.queries, batch.answers):
        assert answer == [_follow_with_networkx(graph, start, labels)]
        assert traverse(graph, start, labels) == answer[0]
    assert traverse(nx.MultiDiGraph([(0, 1, {"label": 0})]), 0, [1]) is None


def test_shortest_path_length_equals_networkx():
    task = GraphTask(num_nodes=9, num_labels=2, edge_prob=0.2, seed=2)
    batch = task.sample(12, "shortest_path")
    for graph, (source, target), path in zip(batch.graphs, batch.queries, batch.answers):
        assert len(path) - 1 == nx.shortest_path_length(graph, source, target)
        assert is_shortest_path(graph, path, source, target)
    graph = batch.graphs[0]
    source, target = batch.queries[0]
    assert not is_shortest_path(graph, [source, source, target], source, target)


def test_encoding_triples_query_and_answer_steps():
    cfg = GraphConfig(num_nodes=5, num_labels=2, edge_prob=0.5)
    task = GraphTask(cfg, seed=3)
    x, y, mask, graph, (start, labels), answer = task.example("traversal")
    n, k = 5, 2
    triples = graph_triples(graph)
    phase = x[:, 2 * n + k:]
    assert phase[:, 0].sum() == len(triples) and phase[:, 1].sum() == 1 + len(labels) and phase[:, 2].sum() == 1
    decoded = sorted((int(r[:n].argmax()), int(r[n:n + k].argmax()), int(r[n + k:2 * n + k].argmax()))
                     for r in x[: len(triples)])
    assert decoded == triples
    assert int(x[len(triples), :n].argmax()) == start
    assert mask.tolist() == [False] * (len(x) - 1) + [True] and y[-1] == answer[0]


def test_exact_match_accuracy():
    task = GraphTask(num_nodes=6, seed=4)
    batch = task.sample(4, "shortest_path")
    perfect = F.one_hot(batch.targets, 6).float()
    assert exact_match_accuracy(perfect, batch.targets, batch.mask) == 1.0
    wrong = perfect.clone()
    last = int(batch.mask[0].nonzero()[-1])
    wrong[0, last] = torch.roll(wrong[0, last], 1)
    assert exact_match_accuracy(wrong, batch.targets, batch.mask) == 0.75
    assert batch.inputs.shape[-1] == task.input_size and batch.sequence.mask.dtype == torch.bool


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="GraphConfig.max_hops"):
        GraphConfig(min_hops=3, max_hops=2)
    with pytest.raises(ValueError, match="GraphConfig.edge_prob"):
        GraphConfig(edge_prob=1.5)
    with pytest.raises(ValueError, match="GraphTask.kind"):
        GraphTask().sample(1, "bfs")
