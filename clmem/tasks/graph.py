"""Graph reasoning in the style of the DNC paper (Graves et al. 2016): random labelled graphs (networkx, seeded)
given as a sequence of (source, edge label, destination) triples, then a query.

* **traversal** — a start node and a sequence of edge labels; the answer is the node reached by following them.
  Every node has at most one outgoing edge per label, so a traversal is deterministic.
* **shortest path** — a (from, to) pair; the answer is the nodes of a shortest path, from and to included.

Graphs contain a random Hamiltonian cycle, so they are strongly connected and every query has an answer.

Encoding (``D = 2 * num_nodes + num_labels + 3``): a source-node block, a label block, a destination-node block,
then phase flags (graph, query, answer). A triple is one step (source, label, destination, graph flag); a
traversal query is a start step (source block) then one step per label; a shortest-path query is one step
(source and destination blocks); then one answer step per answer node. ``targets [B, T]`` are node ids, scored
where ``mask`` is True; :func:`exact_match_accuracy` counts a sequence right only if every answer node is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, NamedTuple, Optional, Sequence, Tuple

import networkx as nx
import numpy as np
from torch import Tensor

from ._common import SequenceBatch, check_choice, check_float, check_int, check_range, exact_match_accuracy, pad_batch

__all__ = [
    "GraphConfig", "GraphTask", "GraphBatch", "QUERY_KINDS", "random_labelled_graph", "graph_triples", "traverse",
    "sample_traversal", "sample_shortest_path", "is_shortest_path", "exact_match_accuracy",
]

QUERY_KINDS = ("traversal", "shortest_path")
Triple = Tuple[int, int, int]


@dataclass(frozen=True)
class GraphConfig:
    """Graphs of ``num_nodes`` nodes; each node gets an edge for each of ``num_labels`` labels with probability
    ``edge_prob`` (plus one on the Hamiltonian cycle); traversals follow ``min_hops``–``max_hops`` labels."""

    num_nodes: int = 10
    num_labels: int = 4
    edge_prob: float = 0.3
    min_hops: int = 1
    max_hops: int = 4

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_int(owner, "num_nodes", self.num_nodes, 2)
        check_int(owner, "num_labels", self.num_labels, 1)
        check_float(owner, "edge_prob", self.edge_prob, 0.0, 1.0)
        check_int(owner, "min_hops", self.min_hops, 1)
        check_int(owner, "max_hops", self.max_hops, 1)
        check_range(owner, "min_hops", "max_hops", self.min_hops, self.max_hops)

    @property
    def input_size(self) -> int:
        return 2 * self.num_nodes + self.num_labels + 3


def random_labelled_graph(num_nodes: int, num_labels: int, edge_prob: float,
                          rng: np.random.Generator) -> nx.MultiDiGraph:
    """A strongly connected multigraph; edges carry ``label``; at most one edge per (node, label)."""
    graph = nx.MultiDiGraph()
    graph.add_nodes_from(range(num_nodes))
    order = rng.permutation(num_nodes)
    for i, u in enumerate(order):
        v = order[(i + 1) % num_nodes]
        graph.add_edge(int(u), int(v), label=int(rng.integers(num_labels)))
    for u in range(num_nodes):
        used = {d["label"] for _, _, d in graph.out_edges(u, data=True)}
        for label in range(num_labels):
            if label not in used and rng.random() < edge_prob:
                v = int(rng.choice([n for n in range(num_nodes) if n != u]))
                graph.add_edge(u, v, label=label)
    return graph


def graph_triples(graph: nx.MultiDiGraph) -> List[Triple]:
    """The edges as sorted ``(source, label, destination)`` triples."""
    return sorted((int(u), int(d["label"]), int(v)) for u, v, d in graph.edges(data=True))


def traverse(graph: nx.MultiDiGraph, start: int, labels: Sequence[int]) -> Optional[int]:
    """The node reached from ``start`` following ``labels``, or None when an edge is missing."""
    node = start
    for label in labels:
        nxt = [v for _, v, d in graph.out_edges(node, data=True) if d["label"] == label]
        if not nxt:
            return None
        node = nxt[0]
    return node


def sample_traversal(graph: nx.MultiDiGraph, rng: np.random.Generator, hops: int) -> Tuple[int, List[int], int]:
    """A random walk of ``hops`` edges: ``(start, labels, end)``."""
    start = int(rng.integers(graph.number_of_nodes()))
    node, labels = start, []
    for _ in range(hops):
        edges = sorted((d["label"], v) for _, v, d in graph.out_edges(node, data=True))
        label, node = edges[int(rng.integers(len(edges)))]
        labels.append(int(label))
    return start, labels, int(node)


def sample_shortest_path(graph: nx.MultiDiGraph, rng: np.random.Generator) -> Tuple[int, int, List[int]]:
    """A random pair of distinct nodes and a shortest path between them: ``(source, target, path)``."""
    source, target = (int(n) for n in rng.choice(graph.number_of_nodes(), size=2, replace=False))
    return source, target, [int(n) for n in nx.shortest_path(graph, source, target)]


def is_shortest_path(graph: nx.MultiDiGraph, path: Sequence[int], source: int, target: int) -> bool:
    """Whether ``path`` is a shortest path from ``source`` to ``target`` (any of them, ties allowed)."""
    if not path or path[0] != source or path[-1] != target:
        return False
    if any(not graph.has_edge(u, v) for u, v in zip(path, path[1:])):
        return False
    return len(path) - 1 == nx.shortest_path_length(graph, source, target)


class GraphBatch(NamedTuple):
    """A padded batch plus, per sequence, its graph, query and answer (node ids)."""

    inputs: Tensor
    targets: Tensor
    mask: Tensor
    graphs: List[nx.MultiDiGraph]
    queries: List[tuple]
    answers: List[List[int]]

    @property
    def sequence(self) -> SequenceBatch:
        return SequenceBatch(self.inputs, self.targets, self.mask)


class GraphTask:
    """Seeded generator of graph-reasoning batches."""

    def __init__(self, config: Optional[GraphConfig] = None, seed: int = 0, **kwargs) -> None:
        if config is None:
            config = GraphConfig(**kwargs)
        elif kwargs:
            raise TypeError("GraphTask: pass either a GraphConfig or keyword arguments, not both")
        self.config = config
        self.rng = np.random.default_rng(seed)

    @property
    def input_size(self) -> int:
        return self.config.input_size

    @property
    def num_classes(self) -> int:
        return self.config.num_nodes

    def _step(self, source=None, label=None, dest=None, phase: int = 0) -> np.ndarray:
        n, k = self.config.num_nodes, self.config.num_labels
        row = np.zeros(self.input_size, np.float32)
        for offset, value in ((0, source), (n, label), (n + k, dest)):
            if value is not None:
                row[offset + value] = 1.0
        row[2 * n + k + phase] = 1.0
        return row

    def _query(self, graph, kind: str) -> Tuple[tuple, List[int], List[np.ndarray]]:
        c = self.config
        if kind == "traversal":
            start, labels, end = sample_traversal(graph, self.rng, int(self.rng.integers(c.min_hops, c.max_hops + 1)))
            steps = [self._step(source=start, phase=1)] + [self._step(label=l, phase=1) for l in labels]
            return (start, tuple(labels)), [end], steps
        source, target, path = sample_shortest_path(graph, self.rng)
        return (source, target), path, [self._step(source=source, dest=target, phase=1)]

    def example(self, kind: str = "traversal"):
        """One ``(x, y, mask, graph, query, answer)``."""
        check_choice("GraphTask", "kind", kind, QUERY_KINDS)
        c = self.config
        graph = random_labelled_graph(c.num_nodes, c.num_labels, c.edge_prob, self.rng)
        triples = graph_triples(graph)
        rows = [self._step(*triples[i]) for i in self.rng.permutation(len(triples))]
        query, answer, steps = self._query(graph, kind)
        rows += steps
        start = len(rows)
        rows += [self._step(phase=2) for _ in answer]
        y = np.zeros(len(rows), np.int64)
        y[start:] = answer
        mask = np.zeros(len(rows), bool)
        mask[start:] = True
        return np.stack(rows), y, mask, graph, query, answer

    def sample(self, batch_size: int, kind: str = "traversal") -> GraphBatch:
        """A batch of ``batch_size`` fresh graphs, each with one ``kind`` query."""
        check_int("GraphTask", "batch_size", batch_size, 1)
        examples = [self.example(kind) for _ in range(batch_size)]
        padded = pad_batch([e[:3] for e in examples])
        return GraphBatch(*padded, [e[3] for e in examples], [e[4] for e in examples], [e[5] for e in examples])
