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

__all__ = [
    "SequenceBatch", "exact_match_accuracy",
    "TASKS", "AlgorithmicTask", "AssociativeRecallConfig", "AssociativeRecallTask", "CopyConfig", "CopyTask",
    "Curriculum", "CurriculumConfig", "PrioritySortConfig", "PrioritySortTask", "RepeatCopyConfig",
    "RepeatCopyTask", "bits_per_sequence", "evaluate_generalisation", "make_task", "masked_bce_loss",
]
