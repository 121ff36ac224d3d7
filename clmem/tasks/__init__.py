"""Tasks for memory-augmented learners: NTM algorithmic tasks, bAbI QA, graph reasoning and propositional logic.

Package code depends only on torch, numpy, networkx and the standard library.
"""
from ._common import SequenceBatch, exact_match_accuracy
from .algorithmic import (
    TASKS,
    AlgorithmicTask,
    AssociativeRecallConfig,
    AssociativeRecallTask,
    CopyConfig,
    CopyTask,
    Curriculum,
    CurriculumConfig,
    PrioritySortConfig,
    PrioritySortTask,
    RepeatCopyConfig,
    RepeatCopyTask,
    bits_per_sequence,
    evaluate_generalisation,
    make_task,
    masked_bce_loss,
)
from .babi import (
    BabiQuestion,
    BabiStory,
    MemNetData,
    SequenceData,
    Vocabulary,
    babi_file,
    babi_root,
    encode_memnet,
    encode_sequence,
    load_babi,
    load_babi_task,
    parse_babi,
    questions_of,
    read_babi_file,
)
from .babi_gen import GENERATED_TASKS, BabiGenConfig, generate_babi_lines, write_babi
from .graph import (
    QUERY_KINDS,
    GraphBatch,
    GraphConfig,
    GraphTask,
    graph_triples,
    is_shortest_path,
    random_labelled_graph,
    sample_shortest_path,
    sample_traversal,
    traverse,
)
from .logic import HornRule, LogicConfig, LogicProblem, LogicTask, entails, forward_chain

__all__ = [
    "SequenceBatch", "exact_match_accuracy",
    "TASKS", "AlgorithmicTask", "AssociativeRecallConfig", "AssociativeRecallTask", "CopyConfig", "CopyTask",
    "Curriculum", "CurriculumConfig", "PrioritySortConfig", "PrioritySortTask", "RepeatCopyConfig",
    "RepeatCopyTask", "bits_per_sequence", "evaluate_generalisation", "make_task", "masked_bce_loss",
    "BabiQuestion", "BabiStory", "MemNetData", "SequenceData", "Vocabulary", "babi_file", "babi_root",
    "encode_memnet", "encode_sequence", "load_babi", "load_babi_task", "parse_babi", "questions_of",
    "read_babi_file", "GENERATED_TASKS", "BabiGenConfig", "generate_babi_lines", "write_babi",
    "QUERY_KINDS", "GraphBatch", "GraphConfig", "GraphTask", "graph_triples", "is_shortest_path",
    "random_labelled_graph", "sample_shortest_path", "sample_traversal", "traverse",
    "HornRule", "LogicConfig", "LogicProblem", "LogicTask", "entails", "forward_chain",
]
