"""Continual-learning metrics computed from the accuracy matrix R.

Notation (0-indexed, T experiences):

* ``R[i][j]`` — score on test experience ``j`` after training on experiences ``0..i``
  (``R`` has shape ``[T, T]``);
* ``b[j]`` — score on test experience ``j`` of the model at initialisation, before any training
  (needed for FWT only).

The score is an accuracy (higher is better) by default. For error-type scores (lower is better,
e.g. bits per sequence) pass ``higher_is_better=False``: only *forgetting* changes (it is measured
as the rise of the error above its best earlier value), so that positive forgetting always means
"got worse". ACC, BWT and FWT are plain averages of the score and keep their sign conventions.

Definitions differ across libraries; Avalanche 0.6, for instance, defines forgetting as
first-vs-last (``R[j][j] − R[T-1][j]``) and its stream accuracy is pooled over test *samples*
rather than averaged over experiences. clmem reports the definitions below and logs Avalanche's
values alongside under ``avl_*`` names.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np


class Summary(NamedTuple):
    acc: float
    bwt: float
    fwt: float
    forgetting: float
    avg_incremental_acc: float


def _as_matrix(R: Sequence[Sequence[float]]) -> np.ndarray:
    m = np.asarray(R, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise ValueError(f"R: expected a non-empty square matrix [T, T], got shape {m.shape}")
    return m


def average_accuracy(R) -> float:
    """ACC (Lopez-Paz & Ranzato 2017): ``ACC = 1/T · Σ_j R[T-1][j]``."""
    m = _as_matrix(R)
    return float(m[-1].mean())


def backward_transfer(R) -> float:
    """BWT (Lopez-Paz & Ranzato 2017): ``BWT = 1/(T-1) · Σ_{j<T-1} (R[T-1][j] − R[j][j])``.

    Negative values mean forgetting. Defined as 0.0 for T = 1.
    """
    m = _as_matrix(R)
    T = m.shape[0]
    if T == 1:
        return 0.0
    return float(np.mean([m[-1, j] - m[j, j] for j in range(T - 1)]))


def forward_transfer(R, b: Sequence[float]) -> float:
    """FWT (Lopez-Paz & Ranzato 2017): ``FWT = 1/(T-1) · Σ_{j≥1} (R[j-1][j] − b[j])``.

    ``b[j]`` is the score on experience ``j`` at initialisation. Defined as 0.0 for T = 1.
    """
    m = _as_matrix(R)
    T = m.shape[0]
    b = np.asarray(b, dtype=np.float64)
    if b.shape != (T,):
        raise ValueError(f"b: expected {T} initial scores, got shape {b.shape}")
    if T == 1:
        return 0.0
    return float(np.mean([m[j - 1, j] - b[j] for j in range(1, T)]))


def forgetting_per_experience(R, step: int | None = None, higher_is_better: bool = True) -> np.ndarray:
    """Forgetting of each earlier experience after training step ``k`` (Chaudhry et al. 2018).

    ``f_j^k = max_{l ∈ {0..k-1}} R[l][j] − R[k][j]`` for ``j < k`` (the maximum runs over all
    earlier rows, as in the paper). For error scores: ``f_j^k = R[k][j] − min_{l<k} R[l][j]``.
    Returns an array of length ``k`` (empty for ``k = 0``); ``k`` defaults to ``T-1``.
    """
    m = _as_matrix(R)
    k = m.shape[0] - 1 if step is None else step
    if not 0 <= k < m.shape[0]:
        raise ValueError(f"step: expected 0 <= step < {m.shape[0]}, got {k}")
    if k == 0:
        return np.zeros(0)
    earlier = m[:k, :k]
    if higher_is_better:
        return earlier.max(axis=0) - m[k, :k]
    return m[k, :k] - earlier.min(axis=0)


def average_forgetting(R, step: int | None = None, higher_is_better: bool = True) -> float:
    """Average forgetting ``F_k = 1/k · Σ_{j<k} f_j^k`` (Chaudhry et al. 2018); 0.0 for k = 0."""
    f = forgetting_per_experience(R, step, higher_is_better)
    return float(f.mean()) if f.size else 0.0


def average_incremental_accuracy(R) -> float:
    """Average incremental accuracy (Rebuffi et al. 2017, iCaRL).

    ``A = 1/T · Σ_i A_i`` with ``A_i = 1/(i+1) · Σ_{j≤i} R[i][j]``: the mean over training steps
    of the accuracy on the experiences seen so far.
    """
    m = _as_matrix(R)
    return float(np.mean([m[i, : i + 1].mean() for i in range(m.shape[0])]))


def summarize(R, b: Sequence[float], higher_is_better: bool = True) -> Summary:
    """All summary metrics of a finished run from its ``R`` matrix and initial scores ``b``."""
    return Summary(
        acc=average_accuracy(R),
        bwt=backward_transfer(R),
        fwt=forward_transfer(R, b),
        forgetting=average_forgetting(R, higher_is_better=higher_is_better),
        avg_incremental_acc=average_incremental_accuracy(R),
    )


def step_metrics(R_rows: Sequence[Sequence[float]], higher_is_better: bool = True) -> dict:
    """Metrics available after training step ``i`` given rows ``0..i`` of R (each of length T).

    Returns ``seen_acc`` (mean over experiences ``0..i``), ``stream_acc`` (mean over all T test
    experiences) and ``forgetting`` (average forgetting ``F_i`` over experiences ``< i``).
    """
    rows = np.asarray(R_rows, dtype=np.float64)
    i = rows.shape[0] - 1
    square = rows[:, : i + 1]
    return {
        "seen_acc": float(rows[i, : i + 1].mean()),
        "stream_acc": float(rows[i].mean()),
        "forgetting": average_forgetting(square, i, higher_is_better),
    }
