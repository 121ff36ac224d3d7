"""Propositional Horn-logic inference: facts and rules ``a ∧ b → c`` over atoms ``0..num_atoms-1``; the question
is whether a query atom is entailed. Labels come from forward chaining (sound and complete for Horn clauses).

Encoding (``D = 2 * num_atoms + 4``): a body block (multi-hot), a head block (one-hot), then flags (fact, rule,
query, answer). A fact is its atom in the head block; a rule its body and head; the query its atom; then one
answer step whose target ``[1]`` is 1 when the query is entailed (score with ``masked_bce_loss``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import FrozenSet, Iterable, List, NamedTuple, Optional, Tuple

import numpy as np

from ._common import SequenceBatch, check_int, pad_batch

__all__ = ["HornRule", "LogicProblem", "LogicConfig", "LogicTask", "forward_chain", "entails"]


class HornRule(NamedTuple):
    """``body[0] ∧ body[1] ∧ ... → head``."""

    body: Tuple[int, ...]
    head: int


class LogicProblem(NamedTuple):
    facts: Tuple[int, ...]
    rules: Tuple[HornRule, ...]
    query: int
    label: bool


def forward_chain(facts: Iterable[int], rules: Iterable[HornRule]) -> FrozenSet[int]:
    """Every atom entailed by ``facts`` and ``rules``: fire rules whose body holds until nothing changes."""
    known = set(facts)
    rules = list(rules)
    changed = True
    while changed:
        changed = False
        for rule in rules:
            if rule.head not in known and all(atom in known for atom in rule.body):
                known.add(rule.head)
                changed = True
    return frozenset(known)


def entails(facts: Iterable[int], rules: Iterable[HornRule], query: int) -> bool:
    return query in forward_chain(facts, rules)


@dataclass(frozen=True)
class LogicConfig:
    """``num_facts`` facts and ``num_rules`` rules of 1–``max_body`` body atoms over ``num_atoms`` atoms; with
    ``balanced`` half of the queries are entailed; ``derived_only`` makes entailed queries non-facts."""

    num_atoms: int = 8
    num_facts: int = 2
    num_rules: int = 6
    max_body: int = 2
    balanced: bool = True
    derived_only: bool = True

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_int(owner, "num_atoms", self.num_atoms, 2)
        check_int(owner, "num_facts", self.num_facts, 1)
        check_int(owner, "num_rules", self.num_rules, 0)
        check_int(owner, "max_body", self.max_body, 1)
        if self.num_facts >= self.num_atoms:
            raise ValueError(f"{owner}.num_facts: expected an int < num_atoms ({self.num_atoms}), "
                             f"got {self.num_facts}")
        if self.max_body >= self.num_atoms:
            raise ValueError(f"{owner}.max_body: expected an int < num_atoms ({self.num_atoms}), got {self.max_body}")
        for field in ("balanced", "derived_only"):
            if not isinstance(getattr(self, field), bool):
                raise ValueError(f"{owner}.{field}: expected true or false, got {getattr(self, field)!r}")

    @property
    def input_size(self) -> int:
        return 2 * self.num_atoms + 4


class LogicTask:
    """Seeded generator of Horn-logic entailment problems and their sequence encoding."""

    def __init__(self, config: Optional[LogicConfig] = None, seed: int = 0, **kwargs) -> None:
        if config is None:
            config = LogicConfig(**kwargs)
        elif kwargs:
            raise TypeError("LogicTask: pass either a LogicConfig or keyword arguments, not both")
        self.config = config
        self.rng = np.random.default_rng(seed)

    input_size = property(lambda self: self.config.input_size)
    output_size = 1

    def _theory(self) -> Tuple[Tuple[int, ...], Tuple[HornRule, ...]]:
        c = self.config
        facts = tuple(sorted(int(a) for a in self.rng.choice(c.num_atoms, c.num_facts, replace=False)))
        rules = []
        for _ in range(c.num_rules):
            size = int(self.rng.integers(1, c.max_body + 1))
            atoms = self.rng.choice(c.num_atoms, size + 1, replace=False)
            rules.append(HornRule(tuple(sorted(int(a) for a in atoms[:-1])), int(atoms[-1])))
        return facts, tuple(rules)

    def sample_problem(self, label: Optional[bool] = None) -> LogicProblem:
        """A problem; with ``label`` given (or ``balanced``: a coin flip) its query has that label."""
        c = self.config
        if label is None and c.balanced:
            label = bool(self.rng.random() < 0.5)
        for _ in range(1000):
            facts, rules = self._theory()
            entailed = forward_chain(facts, rules)
            positives = sorted(entailed - set(facts) if c.derived_only else entailed)
            negatives = sorted(set(range(c.num_atoms)) - entailed)
            want = label if label is not None else bool(self.rng.random() < 0.5)
            pool = positives if want else negatives
            if pool:
                query = int(pool[int(self.rng.integers(len(pool)))])
                return LogicProblem(facts, rules, query, query in entailed)
        raise RuntimeError(f"LogicTask: no problem with label {label} found in 1000 draws; change LogicConfig")

    def encode(self, problem: LogicProblem) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(x [T, D], y [T, 1], mask [T])`` of one problem; facts and rules in a random order."""
        rows = []
        for fact in problem.facts:
            rows.append(self._row((), fact, 0))
        for rule in problem.rules:
            rows.append(self._row(rule.body, rule.head, 1))
        rows = [rows[i] for i in self.rng.permutation(len(rows))]
        rows += [self._row((), problem.query, 2), self._row((), None, 3)]
        y = np.zeros((len(rows), 1), np.float32)
        y[-1, 0] = float(problem.label)
        mask = np.zeros(len(rows), bool)
        mask[-1] = True
        return np.stack(rows), y, mask

    def _row(self, body: Tuple[int, ...], head: Optional[int], flag: int) -> np.ndarray:
        n = self.config.num_atoms
        row = np.zeros(2 * n + 4, np.float32)
        row[list(body)] = 1.0
        if head is not None:
            row[n + head] = 1.0
        row[2 * n + flag] = 1.0
        return row

    def sample(self, batch_size: int) -> Tuple[SequenceBatch, List[LogicProblem]]:
        """A padded batch and its problems."""
        check_int("LogicTask", "batch_size", batch_size, 1)
        problems = [self.sample_problem() for _ in range(batch_size)]
        return pad_batch([self.encode(p) for p in problems]), problems
