"""Knowledge-graph completion: a graph of ``(head, relation, tail)`` triples is held in memory (one triple per
step), then a query ``(head, relation, ?)`` asks for the tail of a triple that is **not** held but follows from
the held ones by a rule; the score is hits@1 of the answer entity.

Rules (:class:`Rule`) derive a relation from held triples in one step:

* **inverse** — ``rel(a, b) <= body[0](b, a)``;
* **compose** — ``rel(a, c) <= body[0](a, b) and body[1](b, c)``.

Sources (``KnowledgeConfig.source``):

* ``generated`` — a fresh seeded graph per sequence over ``num_entities`` entities. Relations ``0..R-1``
  (``R = num_relations``) are **base** relations, each a random partial injection (``round(density · E)``
  entities have one out-edge, every tail distinct), so every derived relation is a partial function too and a
  query has exactly one answer. Relation ``R + r`` is the inverse of ``r``; relation ``2R + k``
  (``k < num_composed``) is ``r_{k mod R} ∘ r_{(k+1) mod R}`` (:func:`generated_rules`). Every base triple is
  held; queries use a derived relation (query kinds ``inverse``, ``compose``).
* ``networkx_<name>`` — a small public graph shipped with networkx (:data:`NETWORKX_GRAPHS`):
  ``florentine_families`` (marriage ties, symmetric), ``karate_club`` (friendship, symmetric, plus
  ``member_of`` / ``has_member`` between members and the two clubs), ``davis_southern_women`` (``attended`` /
  ``attended_by`` between women and events), ``les_miserables`` (co-occurrence, symmetric). Every relation has
  an inverse rule (a symmetric relation is its own inverse). A query ``(h, r, ?)`` withholds one triple
  ``(h, r, t)``; every other ``(h, r, x)`` and every ``(x, r⁻¹, h)`` is held, so ``t`` is the one entity that
  the inverse rule gives and that is not held yet (the filtered answer is unique); other triples of the graph
  fill the sequence up to ``num_triples`` as distractors. With ``relabel`` the entities get fresh random ids
  in ``0..num_entities-1`` per sequence, so the answer can only come from the held triples.

Encoding (``D = 2 * num_entities + num_relation_ids + 3``): a head block (one-hot), a relation block, a tail
block, then phase flags (fact, query, answer). A held triple is one step (head, relation, tail, fact flag), the
query one step (head, relation, query flag), then one answer step; ``targets [T]`` hold the answer entity at
the answer step, where ``mask`` is True (:func:`hits_at_1`).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, FrozenSet, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from torch import Tensor

from ._common import SequenceBatch, check_choice, check_float, check_int, pad_batch

__all__ = [
    "Rule", "KGProblem", "KnowledgeConfig", "KnowledgeTask", "QUERY_KINDS", "NETWORKX_GRAPHS", "SOURCES",
    "generated_rules", "derive", "completions", "networkx_kg", "encode_problem", "shift_relations", "hits_at_1",
]

Triple = Tuple[int, int, int]
QUERY_KINDS = ("inverse", "compose")
NETWORKX_GRAPHS = ("florentine_families", "karate_club", "davis_southern_women", "les_miserables")
SOURCES = ("generated",) + tuple(f"networkx_{name}" for name in NETWORKX_GRAPHS)


class Rule(NamedTuple):
    """``relation`` derived by ``kind`` (``"inverse"``: from ``body[0]`` reversed; ``"compose"``: from
    ``body[0]`` then ``body[1]``)."""

    relation: int
    kind: str
    body: Tuple[int, ...]


class KGProblem(NamedTuple):
    """Held ``triples`` (in presentation order), the query ``(head, relation)``, its answer and query kind."""

    triples: Tuple[Triple, ...]
    query: Tuple[int, int]
    answer: int
    kind: str


def generated_rules(num_relations: int, num_composed: int) -> Tuple[Rule, ...]:
    """The rules of the generated source: ``R + r = inverse(r)``; ``2R + k = r_{k mod R} ∘ r_{(k+1) mod R}``."""
    R = num_relations
    inverse = [Rule(R + r, "inverse", (r,)) for r in range(R)]
    compose = [Rule(2 * R + k, "compose", (k % R, (k + 1) % R)) for k in range(num_composed)]
    return tuple(inverse + compose)


def derive(triples: Sequence[Triple], rules: Sequence[Rule]) -> FrozenSet[Triple]:
    """Every triple one application of a rule gives from the held ``triples`` (held ones not included unless
    a rule gives them again)."""
    by_relation: Dict[int, List[Tuple[int, int]]] = {}
    for h, r, t in triples:
        by_relation.setdefault(r, []).append((h, t))
    out = set()
    for rule in rules:
        if rule.kind == "inverse":
            out.update((t, rule.relation, h) for h, t in by_relation.get(rule.body[0], []))
        else:
            second: Dict[int, List[int]] = {}
            for m, c in by_relation.get(rule.body[1], []):
                second.setdefault(m, []).append(c)
            out.update((a, rule.relation, c) for a, m in by_relation.get(rule.body[0], []) for c in second.get(m, []))
    return frozenset(out)


def completions(triples: Sequence[Triple], rules: Sequence[Rule], head: int, relation: int) -> FrozenSet[int]:
    """Tails ``t`` with ``(head, relation, t)`` derived by a rule and not held: the filtered answers."""
    held = set(triples)
    return frozenset(t for h, r, t in derive(triples, rules) if h == head and r == relation
                     and (h, r, t) not in held)


@lru_cache(maxsize=None)
def networkx_kg(name: str) -> Tuple[Tuple[str, ...], Tuple[str, ...], Tuple[Triple, ...], Tuple[Rule, ...]]:
    """``(entity names, relation names, triples, rules)`` of a networkx graph in :data:`NETWORKX_GRAPHS`; ids are
    positions in the sorted names. Both directions of every relation are in ``triples``."""
    import networkx as nx

    check_choice("networkx_kg", "name", name, NETWORKX_GRAPHS)
    graph = getattr(nx, f"{name}_graph")()
    if name == "davis_southern_women":
        pairs = [(u, v) if graph.nodes[u]["bipartite"] == 0 else (v, u) for u, v in graph.edges]
        named = [(w, "attended", e) for w, e in pairs] + [(e, "attended_by", w) for w, e in pairs]
        relations, rules = ("attended", "attended_by"), ((0, 1), (1, 0))
    else:
        label = {"florentine_families": "marriage", "karate_club": "friend", "les_miserables": "co_occurs"}[name]
        named = [(u, label, v) for u, v in graph.edges] + [(v, label, u) for u, v in graph.edges]
        relations, rules = (label,), ((0, 0),)
        if name == "karate_club":
            clubs = [(str(n), "club:" + graph.nodes[n]["club"]) for n in graph.nodes]
            named += [(p, "member_of", c) for p, c in clubs] + [(c, "has_member", p) for p, c in clubs]
            relations, rules = (label, "member_of", "has_member"), ((0, 0), (1, 2), (2, 1))
    named = [(str(h), r, str(t)) for h, r, t in named]
    entities = tuple(sorted({h for h, _, _ in named} | {t for _, _, t in named}))
    ids = {e: i for i, e in enumerate(entities)}
    triples = tuple(sorted({(ids[h], relations.index(r), ids[t]) for h, r, t in named}))
    return entities, relations, triples, tuple(Rule(rel, "inverse", (of,)) for rel, of in rules)


@dataclass(frozen=True)
class KnowledgeConfig:
    """Knowledge-graph completion (see the module docstring). ``num_relations``, ``num_composed`` and
    ``density`` shape the generated source; ``num_triples`` (held triples) and ``relabel`` the networkx ones;
    ``query_kinds`` None: every kind the source has (networkx: ``inverse`` only)."""

    source: str = "generated"
    num_entities: int = 12
    num_relations: int = 3
    num_composed: int = 2
    density: float = 0.5
    query_kinds: Optional[Tuple[str, ...]] = None
    num_triples: int = 32
    relabel: bool = True

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_choice(owner, "source", self.source, SOURCES)
        check_int(owner, "num_entities", self.num_entities, 2)
        check_int(owner, "num_relations", self.num_relations, 1)
        check_int(owner, "num_composed", self.num_composed, 0)
        check_float(owner, "density", self.density, 0.0, 1.0, open_low=True)
        check_int(owner, "num_triples", self.num_triples, 1)
        if not isinstance(self.relabel, bool):
            raise ValueError(f"{owner}.relabel: expected true or false, got {self.relabel!r}")
        kinds = ("inverse",) if self.source != "generated" else QUERY_KINDS
        if self.query_kinds is None:  # every kind the source has
            object.__setattr__(self, "query_kinds", kinds)
        if (not isinstance(self.query_kinds, tuple) or not self.query_kinds
                or any(k not in kinds for k in self.query_kinds)):
            raise ValueError(f"{owner}.query_kinds: expected a non-empty tuple of {kinds} for source "
                             f"{self.source!r}, got {self.query_kinds!r}")
        if "compose" in self.query_kinds and self.num_composed < 1:
            raise ValueError(f"{owner}.num_composed: expected an int >= 1 for compose queries, got {self.num_composed}")
        if self.source != "generated" and self.num_entities < len(self.graph[0]):
            raise ValueError(f"{owner}.num_entities: expected an int >= {len(self.graph[0])} (the entities of "
                             f"{self.source}), got {self.num_entities}")

    @property
    def graph(self):
        """:func:`networkx_kg` of a networkx source."""
        return networkx_kg(self.source[len("networkx_"):])

    @property
    def rules(self) -> Tuple[Rule, ...]:
        return generated_rules(self.num_relations, self.num_composed) if self.source == "generated" else self.graph[3]

    @property
    def num_relation_ids(self) -> int:
        if self.source == "generated":
            return 2 * self.num_relations + self.num_composed
        return len(self.graph[1])

    @property
    def input_size(self) -> int:
        return 2 * self.num_entities + self.num_relation_ids + 3


def encode_problem(problem: KGProblem, num_entities: int, num_relation_ids: int) -> Tuple[np.ndarray, ...]:
    """``(x [T, D], y [T] int64, mask [T])`` of one problem, ``T = len(triples) + 2``,
    ``D = 2 * num_entities + num_relation_ids + 3``; the answer is the target of the last step."""
    E, R = num_entities, num_relation_ids
    steps = [(h, r, t, 0) for h, r, t in problem.triples] + [(*problem.query, None, 1), (None, None, None, 2)]
    x = np.zeros((len(steps), 2 * E + R + 3), np.float32)
    for i, (h, r, t, flag) in enumerate(steps):
        for offset, value in ((0, h), (E, r), (E + R, t)):
            if value is not None:
                x[i, offset + value] = 1.0
        x[i, 2 * E + R + flag] = 1.0
    y = np.zeros(len(steps), np.int64)
    y[-1] = problem.answer
    mask = np.zeros(len(steps), bool)
    mask[-1] = True
    return x, y, mask


def shift_relations(problem: KGProblem, offset: int) -> KGProblem:
    """The same problem with every relation id moved by ``offset`` (disjoint relation sets of a stream)."""
    triples = tuple((h, r + offset, t) for h, r, t in problem.triples)
    return problem._replace(triples=triples, query=(problem.query[0], problem.query[1] + offset))


def hits_at_1(logits: Tensor, targets: Tensor, mask: Tensor) -> float:
    """Fraction of sequences whose top-scored entity at the answer step (``mask`` True, one step per sequence)
    is the answer: ``logits [B, T, E]``, ``targets [B, T]`` entity ids, ``mask [B, T]``."""
    mask = mask.bool()
    if (mask.sum(dim=1) != 1).any():
        raise ValueError("hits_at_1.mask: expected exactly one answer step per sequence")
    return float((logits.argmax(dim=-1)[mask] == targets[mask]).float().mean())


class KnowledgeTask:
    """Seeded generator of knowledge-graph completion problems and their sequence encoding."""

    def __init__(self, config: Optional[KnowledgeConfig] = None, seed: int = 0, **kwargs) -> None:
        if config is None:
            config = KnowledgeConfig(**kwargs)
        elif kwargs:
            raise TypeError("KnowledgeTask: pass either a KnowledgeConfig or keyword arguments, not both")
        self.config = config
        self.rng = np.random.default_rng(seed)
        self._graph = config.graph if config.source != "generated" else None

    input_size = property(lambda self: self.config.input_size)
    num_classes = property(lambda self: self.config.num_entities)

    def _base_facts(self) -> List[Triple]:
        c = self.config
        count = max(1, int(round(c.density * c.num_entities)))
        facts = []
        for r in range(c.num_relations):
            heads = self.rng.choice(c.num_entities, count, replace=False)
            tails = self.rng.choice(c.num_entities, count, replace=False)
            facts += [(int(h), r, int(t)) for h, t in zip(heads, tails)]
        return facts

    def _generated(self, kind: str) -> KGProblem:
        rules = [rule for rule in self.config.rules if rule.kind == kind]
        for _ in range(1000):
            facts = self._base_facts()
            rule = rules[int(self.rng.integers(len(rules)))]
            derived = sorted(t for t in derive(facts, [rule]))
            if derived:
                h, r, t = derived[int(self.rng.integers(len(derived)))]
                order = self.rng.permutation(len(facts))
                return KGProblem(tuple(facts[i] for i in order), (h, r), t, kind)
        raise RuntimeError("KnowledgeTask: no compose path in 1000 graphs; raise density or num_entities")

    def _networkx(self) -> KGProblem:
        c, (entities, _, triples, rules) = self.config, self._graph
        inverse = {rule.relation: rule.body[0] for rule in rules}
        tails: Dict[Tuple[int, int], List[int]] = {}
        for h, r, t in triples:
            tails.setdefault((h, r), []).append(t)
        fits = sorted(k for k, v in tails.items() if 2 * len(v) - 1 <= c.num_triples)
        if not fits:
            raise ValueError(f"KnowledgeConfig.num_triples: expected room for a query's neighbourhood, "
                             f"got {c.num_triples}")
        h, r = fits[int(self.rng.integers(len(fits)))]
        t = tails[(h, r)][int(self.rng.integers(len(tails[(h, r)])))]
        needed = {(h, r, x) for x in tails[(h, r)] if x != t} | {(x, inverse[r], h) for x in tails[(h, r)]}
        others = [tr for tr in triples if tr not in needed and tr[:2] != (h, r) and tr[1:] != (inverse[r], h)]
        extra = self.rng.permutation(len(others))[:max(0, c.num_triples - len(needed))]
        held = sorted(needed) + [others[i] for i in sorted(extra)]
        ids = (self.rng.choice(c.num_entities, len(entities), replace=False) if c.relabel
               else np.arange(len(entities)))
        held = [(int(ids[a]), rel, int(ids[b])) for a, rel, b in held]
        order = self.rng.permutation(len(held))
        return KGProblem(tuple(held[i] for i in order), (int(ids[h]), r), int(ids[t]), "inverse")

    def sample_problem(self, kind: Optional[str] = None) -> KGProblem:
        """A problem whose query is of ``kind`` (default: drawn uniformly from ``config.query_kinds``)."""
        kinds = self.config.query_kinds
        if kind is None:
            kind = kinds[int(self.rng.integers(len(kinds)))]
        check_choice("KnowledgeTask", "kind", kind, kinds)
        return self._generated(kind) if self._graph is None else self._networkx()

    def encode(self, problem: KGProblem) -> Tuple[np.ndarray, ...]:
        """:func:`encode_problem` at this task's sizes."""
        return encode_problem(problem, self.config.num_entities, self.config.num_relation_ids)

    def sample(self, batch_size: int, kind: Optional[str] = None) -> Tuple[SequenceBatch, List[KGProblem]]:
        """A batch padded at the end (answer steps marked by ``mask``) and its problems."""
        check_int("KnowledgeTask", "batch_size", batch_size, 1)
        problems = [self.sample_problem(kind) for _ in range(batch_size)]
        return pad_batch([self.encode(p) for p in problems]), problems
