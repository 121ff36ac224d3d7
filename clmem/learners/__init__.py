"""Sequence and question-answering learners: LSTM baseline, MemN2N, and memory cores as sequence learners."""
from .lstm import LSTMLearner, LSTMLearnerConfig
from .memn2n import MemN2N, MemN2NConfig, position_encoding
from .sequence import CORES, CoreSequenceLearner, make_sequence_learner

__all__ = [
    "LSTMLearner", "LSTMLearnerConfig", "MemN2N", "MemN2NConfig", "position_encoding",
    "CORES", "CoreSequenceLearner", "make_sequence_learner",
]
