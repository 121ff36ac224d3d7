"""Helpers shared by the task generators: one-line config validation and batch padding."""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor


class SequenceBatch(NamedTuple):
    """A padded batch: ``inputs [B, T, D]``, ``targets [B, T, O]`` (or ``[B, T]`` class ids), ``mask [B, T]`` bool
    marking the steps whose output is scored."""

    inputs: Tensor
    targets: Tensor
    mask: Tensor


def check_int(owner: str, field: str, value: Any, minimum: int) -> None:
    """Raise a one-line ``ValueError`` unless ``value`` is an ``int`` (not ``bool``) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}.{field}: expected an int >= {minimum}, got {value!r}")


def check_range(owner: str, low_field: str, high_field: str, low: int, high: int) -> None:
    """Raise unless ``low <= high``."""
    if low > high:
        raise ValueError(f"{owner}.{high_field}: expected >= {low_field} ({low}), got {high!r}")


def check_float(owner: str, field: str, value: Any, low: float, high: float, open_low: bool = False) -> None:
    """Raise unless ``value`` is a finite real in ``[low, high]`` (``(low, high]`` with ``open_low``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value > high or value < low or (open_low and value == low):
        bracket = "(" if open_low else "["
        raise ValueError(f"{owner}.{field}: expected a number in {bracket}{low}, {high}], got {value!r}")


def check_choice(owner: str, field: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in tuple(choices):
        raise ValueError(f"{owner}.{field}: expected one of {tuple(choices)}, got {value!r}")


def pad_batch(examples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> SequenceBatch:
    """Stack ``(x [T, D], y [T, O] or [T], m [T])`` examples, zero-padding to the longest ``T``."""
    length = max(x.shape[0] for x, _, _ in examples)
    xs, ys, ms = [], [], []
    for x, y, m in examples:
        pad = length - x.shape[0]
        xs.append(np.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)))
        ys.append(np.pad(y, [(0, pad)] + [(0, 0)] * (y.ndim - 1)))
        ms.append(np.pad(m, (0, pad)))
    inputs = torch.from_numpy(np.stack(xs).astype(np.float32))
    targets = np.stack(ys)
    targets = torch.from_numpy(targets.astype(np.int64 if targets.dtype.kind in "iu" else np.float32))
    return SequenceBatch(inputs, targets, torch.from_numpy(np.stack(ms).astype(bool)))


def exact_match_accuracy(logits: Tensor, targets: Tensor, mask: Tensor) -> float:
    """Fraction of sequences whose every masked step is right: ``logits [B, T, C]`` vs class ids
    ``targets [B, T]`` (argmax), or vs binary ``targets [B, T, C]`` (threshold 0.5 on the sigmoid)."""
    mask = mask.bool()
    if targets.dim() == logits.dim():
        step_ok = ((logits > 0).float() == targets).all(dim=-1)
    else:
        step_ok = logits.argmax(dim=-1) == targets
    seq_ok = (step_ok | ~mask).all(dim=1)
    return float(seq_ok.float().mean())
