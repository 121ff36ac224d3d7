"""Sequence and question-answering learners: LSTM baseline, MemN2N, and memory cores as sequence learners."""
from .lstm import LSTMLearner, LSTMLearnerConfig

__all__ = ["LSTMLearner", "LSTMLearnerConfig"]
