"""Continual reasoning streams, registered in :data:`clmem.benchmarks.BENCHMARKS` (stream kind ``qa_sequence``):

* ``continual_knowledge`` — knowledge-graph completion (:mod:`clmem.tasks.knowledge`): with ``source:
  generated`` one experience per **disjoint relation set** (``n_experiences`` groups, each with its own base,
  inverse and composed relations over the shared entities); with ``source: networkx`` one experience per
  **graph** of ``graphs`` (each with its own relations). Score: hits@1 of the answer entity.
* ``continual_temporal`` — temporal reasoning (:mod:`clmem.tasks.temporal`), one experience per **query type**
  of ``query_kinds`` (first / before / order). Score: accuracy of the answer.
* ``continual_logic`` — Horn-logic entailment (:mod:`clmem.tasks.logic`), one experience per **disjoint atom
  set** (``n_experiences`` blocks of ``num_atoms`` atoms). Score: accuracy of the yes/no answer.

Layout (as bAbI's ``encoding: sequence``): a sample is ``(x [T, D] float, y answer id, info [2])``, the task's
own encoding **left**-padded with zero steps to the longest sequence of the stream, so the answer step is the last
step; the learner is wrapped in :class:`clmem.learners.readout.AnswerStep` (logits of the last step), trained
with :class:`AnswerCrossEntropy` and scored by Avalanche's top-1 accuracy (``metric="accuracy"``, prefix
``Top1_Acc_Exp``; for knowledge graphs this is hits@1). ``info = [task, length]``: the experience's index (for
temporal streams the query kind's index in :data:`clmem.tasks.temporal.QUERY_KINDS`) and the number of held
facts / events / clauses (the length a curriculum varies). Every sample of an experience is drawn from a seed of
``(trial seed, split, experience)``, so streams are deterministic. Task labels are all 0 (one shared head).
"""
from __future__ import annotations

from typing import Callable, List, Tuple

import numpy as np
import torch

from clmem.benchmarks import BENCHMARKS, Stream
from clmem.learners.readout import AnswerStep
from clmem.options import ConfigError, Opt

from .knowledge import NETWORKX_GRAPHS, KnowledgeConfig, KnowledgeTask, encode_problem, networkx_kg, shift_relations
from .logic import HornRule, LogicConfig, LogicProblem, LogicTask
from .stream_metrics import AnswerCrossEntropy
from .streams import SequenceDataset, _avalanche_benchmark, _ordered, _split
from .temporal import QUERY_KINDS as TEMPORAL_KINDS
from .temporal import TemporalConfig, TemporalTask

__all__ = ["answer_dataset", "reasoning_stream", "knowledge_configs", "temporal_configs", "logic_configs",
           "continual_knowledge", "continual_temporal", "continual_logic"]

#: ``(x [T_i, D], answer, task, length)`` of one sample.
Example = Tuple[np.ndarray, int, int, int]


def answer_dataset(examples: List[Example], steps: int) -> SequenceDataset:
    """Examples left-padded to ``steps``: ``x [N, steps, D]``, ``y [N]`` answer ids, ``info [N, 2]``."""
    width = examples[0][0].shape[1]
    x = torch.zeros(len(examples), steps, width)
    for i, (seq, _, _, _) in enumerate(examples):
        x[i, steps - len(seq):] = torch.from_numpy(seq)
    y = torch.tensor([e[1] for e in examples], dtype=torch.long)
    info = torch.tensor([[e[2], e[3]] for e in examples], dtype=torch.long)
    return SequenceDataset(x, y, info, y.clone())


def reasoning_stream(seed: int, n_experiences: int, examples: Callable[[int, int, int], List[Example]],
                     samples: dict, num_classes: int) -> Stream:
    """A ``qa_sequence`` stream of ``n_experiences``; ``examples(experience, count, seed)`` draws one
    experience's samples; ``samples = {"train": n, "test": m}``."""
    drawn = {split: [examples(e, count, int(np.random.SeedSequence([seed, s, e]).generate_state(1)[0]))
                     for e in range(n_experiences)]
             for s, (split, count) in enumerate(samples.items())}
    steps = max(len(x) for split in drawn.values() for exp in split for x, _, _, _ in exp)
    data = {split: [answer_dataset(exp, steps) for exp in exps] for split, exps in drawn.items()}
    width = data["train"][0].x.shape[-1]
    return Stream(_avalanche_benchmark(data["train"], data["test"]), (steps, width), num_classes,
                  metric="accuracy", higher_is_better=True, metric_prefix="Top1_Acc_Exp",
                  criterion=AnswerCrossEntropy, model_adapter=AnswerStep)


def _as_benchmark_error(err: ValueError) -> ValueError:
    """``"Owner.field: reason"`` of a task config as ``"benchmark.field: reason"``."""
    head, _, reason = str(err).partition(": ")
    return ValueError(f"benchmark.{head.rsplit('.', 1)[-1]}: {reason}" if reason else f"benchmark: {err}")


def _kinds(text: str | None, field: str) -> Tuple[str, ...] | None:
    return None if text is None else tuple(_split(text, f"benchmark.{field}"))


# ------------------------------------------------------------------------------------------ knowledge
_KG_OPTS = {
    "source": Opt(str, "generated", choices=("generated", "networkx"),
                  help="generated: fresh graphs per sequence; networkx: the graphs named in `graphs`"),
    "n_experiences": Opt(int, 3, min=1, help="generated: disjoint relation sets, one experience each"),
    "graphs": Opt(str, "florentine_families,davis_southern_women,karate_club",
                  help=f"networkx: graphs in experience order (some of: {', '.join(NETWORKX_GRAPHS)})"),
    "order": Opt(str, "given", choices=("given", "random"), help="random: permute the experiences with the trial seed"),
    "num_entities": Opt(int, None, min=2, nullable=True,
                        help="entity ids; null: 12 for generated, the largest graph's entity count for networkx"),
    "num_relations": Opt(int, 2, min=1, help="generated: base relations per experience"),
    "num_composed": Opt(int, 2, min=0, help="generated: composed relations per experience"),
    "density": Opt(float, 0.5, min=0.0, max=1.0, help="generated: fraction of entities with an edge per relation"),
    "query_kinds": Opt(str, None, nullable=True, help="comma-separated of inverse, compose (null: all the source has)"),
    "num_triples": Opt(int, 24, min=1, help="networkx: held triples per sequence"),
    "relabel": Opt(bool, True, help="networkx: fresh random entity ids per sequence"),
    "train_samples": Opt(int, 256, min=1, help="training sequences per experience"),
    "test_samples": Opt(int, 64, min=1, help="test sequences per experience"),
}


def knowledge_configs(seed: int, source: str = "generated", n_experiences: int = 3,
                      graphs: str = _KG_OPTS["graphs"].default, order: str = "given", num_entities: int | None = None,
                      num_relations: int = 2, num_composed: int = 2, density: float = 0.5,
                      query_kinds: str | None = None, num_triples: int = 24, relabel: bool = True,
                      **_samples) -> List[KnowledgeConfig]:
    """One :class:`KnowledgeConfig` per experience (in stream order); ``ValueError("benchmark.<field>: ...")``."""
    kinds = _kinds(query_kinds, "query_kinds")
    try:
        if source == "generated":
            shared = dict(num_entities=num_entities or 12, num_relations=num_relations, num_composed=num_composed,
                          density=density)
            return [KnowledgeConfig(**shared, query_kinds=kinds)] * n_experiences
        names = _ordered(_split(graphs, "benchmark.graphs"), order, seed)
        bad = [g for g in names if g not in NETWORKX_GRAPHS]
        if bad:
            raise ValueError(f"KnowledgeConfig.graphs: expected some of {NETWORKX_GRAPHS}, got {bad[0]!r}")
        sizes = [len(networkx_kg(g)[0]) for g in names]
        return [KnowledgeConfig(source=f"networkx_{g}", num_entities=num_entities or max(sizes),
                                num_triples=num_triples, relabel=relabel, query_kinds=kinds)
                for g in names]
    except ValueError as err:
        raise _as_benchmark_error(err) from None


def _check_configs(configs: Callable, section: dict) -> None:
    """Driver-side check of a resolved benchmark section: its task configs build (one line naming the field)."""
    options = {k: v for k, v in section.items() if k != "name"}
    try:
        configs(0, **options)
    except ValueError as err:
        field, _, reason = str(err).partition(": ")
        raise ConfigError(field, reason) from None


def check_knowledge(section: dict) -> None:
    _check_configs(knowledge_configs, section)


def check_temporal(section: dict) -> None:
    _check_configs(temporal_configs, section)


def check_logic(section: dict) -> None:
    _check_configs(logic_configs, section)


@BENCHMARKS.register("continual_knowledge", _KG_OPTS,
                     "knowledge-graph completion, one experience per disjoint relation set (generated) or per "
                     "networkx graph; hits@1", kind="qa_sequence", preflight=check_knowledge,
                     tiny={"n_experiences": 2, "num_entities": 4, "num_relations": 1, "num_composed": 1,
                           "train_samples": 8, "test_samples": 4})
def continual_knowledge(seed: int, train_samples: int = 256, test_samples: int = 64, **options) -> Stream:
    configs = knowledge_configs(seed, **options)
    offsets = np.cumsum([0] + [c.num_relation_ids for c in configs]).tolist()
    entities, relations = configs[0].num_entities, offsets[-1]

    def examples(e: int, count: int, draw_seed: int) -> List[Example]:
        task = KnowledgeTask(configs[e], seed=draw_seed)
        problems = [shift_relations(task.sample_problem(), offsets[e]) for _ in range(count)]
        return [(encode_problem(p, entities, relations)[0], p.answer, e, len(p.triples)) for p in problems]

    return reasoning_stream(seed, len(configs), examples, {"train": train_samples, "test": test_samples}, entities)


# ------------------------------------------------------------------------------------------- temporal
_TEMPORAL_OPTS = {
    "query_kinds": Opt(str, ",".join(TEMPORAL_KINDS), help="comma-separated query types, one experience each"),
    "order": Opt(str, "given", choices=("given", "random"), help="random: permute the experiences with the trial seed"),
    "num_event_types": Opt(int, 8, min=3, help="event vocabulary (events of a sequence are distinct)"),
    "min_events": Opt(int, 4, min=3, help="fewest events per sequence"),
    "max_events": Opt(int, 6, min=3, help="most events per sequence"),
    "max_time": Opt(int, 16, min=3, help="timestamps 0..max_time-1 (distinct per sequence)"),
    "max_k": Opt(int, 2, min=1, help="before queries: k in 1..max_k events back"),
    "shuffle": Opt(bool, True, help="present the events in a random order (else in time order)"),
    "train_samples": Opt(int, 256, min=1, help="training sequences per experience"),
    "test_samples": Opt(int, 64, min=1, help="test sequences per experience"),
}


def temporal_configs(seed: int, query_kinds: str = _TEMPORAL_OPTS["query_kinds"].default, order: str = "given",
                     num_event_types: int = 8, min_events: int = 4, max_events: int = 6, max_time: int = 16,
                     max_k: int = 2, shuffle: bool = True, **_samples) -> List[TemporalConfig]:
    """One :class:`TemporalConfig` per experience, each asking one query kind."""
    shared = dict(num_event_types=num_event_types, min_events=min_events, max_events=max_events, max_time=max_time,
                  max_k=max_k, shuffle=shuffle)
    try:
        return [TemporalConfig(**shared, query_kinds=(kind,))
                for kind in _ordered(list(_kinds(query_kinds, "query_kinds")), order, seed)]
    except ValueError as err:
        raise _as_benchmark_error(err) from None


@BENCHMARKS.register("continual_temporal", _TEMPORAL_OPTS,
                     "temporal reasoning over timestamped events, one experience per query type (first, before, "
                     "order); accuracy", kind="qa_sequence", preflight=check_temporal,
                     tiny={"query_kinds": "first,order", "num_event_types": 4, "min_events": 3, "max_events": 3,
                           "max_time": 4, "max_k": 1, "train_samples": 8, "test_samples": 4})
def continual_temporal(seed: int, train_samples: int = 256, test_samples: int = 64, **options) -> Stream:
    configs = temporal_configs(seed, **options)

    def examples(e: int, count: int, draw_seed: int) -> List[Example]:
        task = TemporalTask(configs[e], seed=draw_seed)
        problems = [task.sample_problem() for _ in range(count)]
        return [(task.encode(p)[0], p.answer, TEMPORAL_KINDS.index(p.kind), len(p.events)) for p in problems]

    return reasoning_stream(seed, len(configs), examples, {"train": train_samples, "test": test_samples},
                            configs[0].num_classes)


# ---------------------------------------------------------------------------------------------- logic
_LOGIC_OPTS = {
    "n_experiences": Opt(int, 3, min=1, help="disjoint atom sets, one experience each"),
    "num_atoms": Opt(int, 6, min=2, help="atoms per experience"),
    "num_facts": Opt(int, 2, min=1, help="facts per problem"),
    "num_rules": Opt(int, 5, min=0, help="rules per problem"),
    "max_body": Opt(int, 2, min=1, help="most body atoms of a rule"),
    "derived_only": Opt(bool, True, help="entailed queries are never facts"),
    "train_samples": Opt(int, 256, min=1, help="training sequences per experience"),
    "test_samples": Opt(int, 64, min=1, help="test sequences per experience"),
}


def logic_configs(seed: int, n_experiences: int = 3, num_atoms: int = 6, num_facts: int = 2, num_rules: int = 5,
                  max_body: int = 2, derived_only: bool = True, **_samples) -> List[LogicConfig]:
    """One :class:`LogicConfig` per experience (balanced labels; ``seed`` unused: the experiences differ only
    by their atoms)."""
    try:
        return [LogicConfig(num_atoms=num_atoms, num_facts=num_facts, num_rules=num_rules, max_body=max_body,
                            balanced=True, derived_only=derived_only)] * n_experiences
    except ValueError as err:
        raise _as_benchmark_error(err) from None


def _shift_atoms(problem: LogicProblem, offset: int) -> LogicProblem:
    rules = tuple(HornRule(tuple(a + offset for a in r.body), r.head + offset) for r in problem.rules)
    return LogicProblem(tuple(a + offset for a in problem.facts), rules, problem.query + offset, problem.label)


@BENCHMARKS.register("continual_logic", _LOGIC_OPTS,
                     "Horn-logic entailment, one experience per disjoint set of atoms; accuracy",
                     kind="qa_sequence", preflight=check_logic,
                     tiny={"n_experiences": 2, "num_atoms": 4, "num_facts": 1, "num_rules": 2, "train_samples": 8,
                           "test_samples": 4})
def continual_logic(seed: int, train_samples: int = 256, test_samples: int = 64, **options) -> Stream:
    configs = logic_configs(seed, **options)
    atoms = configs[0].num_atoms
    width = LogicConfig(num_atoms=atoms * len(configs), num_facts=1, num_rules=0, max_body=1)

    def examples(e: int, count: int, draw_seed: int) -> List[Example]:
        task, encoder = LogicTask(configs[e], seed=draw_seed), LogicTask(width, seed=draw_seed + 1)
        problems = [_shift_atoms(task.sample_problem(), e * atoms) for _ in range(count)]
        return [(encoder.encode(p)[0], int(p.label), e, len(p.facts) + len(p.rules)) for p in problems]

    return reasoning_stream(seed, len(configs), examples, {"train": train_samples, "test": test_samples}, 2)
