"""Algorithmic tasks of the Neural Turing Machine paper (Graves et al. 2014), as seeded batch generators.

Every task returns :class:`SequenceBatch` ``(inputs [B, T, D], targets [B, T, O], mask [B, T])``, zero-padded to
the batch's longest sequence; ``mask`` marks the output phase (the only steps that are scored). Channels:

* **copy** — ``D = bits + 1``: the sequence, then one delimiter step (channel ``bits``); the target reproduces
  the sequence in the ``L`` steps after the delimiter (``O = bits``).
* **repeat copy** — ``D = bits + 2``: the sequence, then one delimiter step (channel ``bits``) that also carries
  the normalised repeat count on channel ``bits + 1``; the target is the sequence ``n`` times, then an end marker
  on output channel ``bits`` (``O = bits + 1``).
* **associative recall** — ``D = bits + 2``: each item (``item_length`` vectors) is preceded by an item delimiter
  (channel ``bits``); then a query delimiter (channel ``bits + 1``), the query item and a second query delimiter;
  the target is the item that followed the queried one (``O = bits``). "Length" is the number of items.
* **priority sort** — ``D = bits + 2``: ``L`` vectors each with a scalar priority in ``[-1, 1]`` on channel
  ``bits``, then a delimiter (channel ``bits + 1``); the target is the ``num_outputs`` highest-priority vectors,
  sorted by priority, descending (``O = bits``).

``Curriculum`` grows the maximum length when the recent error is low; :func:`evaluate_generalisation` scores a
model on lengths longer than trained.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import SequenceBatch, check_float, check_int, check_range, pad_batch

__all__ = [
    "CopyConfig", "RepeatCopyConfig", "AssociativeRecallConfig", "PrioritySortConfig",
    "AlgorithmicTask", "CopyTask", "RepeatCopyTask", "AssociativeRecallTask", "PrioritySortTask",
    "make_task", "TASKS", "Curriculum", "CurriculumConfig", "masked_bce_loss", "bits_per_sequence", "evaluate_generalisation",
]


@dataclass(frozen=True)
class CopyConfig:
    """Copy: random binary vectors of ``num_bits`` bits, sequence length in ``[min_length, max_length]``."""

    num_bits: int = 8
    min_length: int = 1
    max_length: int = 20

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_int(owner, "num_bits", self.num_bits, 1)
        check_int(owner, "min_length", self.min_length, 1)
        check_int(owner, "max_length", self.max_length, 1)
        check_range(owner, "min_length", "max_length", self.min_length, self.max_length)


@dataclass(frozen=True)
class RepeatCopyConfig(CopyConfig):
    """Repeat copy: as copy, plus a repeat count in ``[min_repeats, max_repeats]`` (paper: 1–10)."""

    max_length: int = 10
    min_repeats: int = 1
    max_repeats: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        check_int(owner, "min_repeats", self.min_repeats, 1)
        check_int(owner, "max_repeats", self.max_repeats, 1)
        check_range(owner, "min_repeats", "max_repeats", self.min_repeats, self.max_repeats)

    def normalise_repeats(self, repeats: int) -> float:
        """Repeat count scaled to mean 0, variance 1 under the uniform training distribution."""
        count = self.max_repeats - self.min_repeats + 1
        mean = (self.min_repeats + self.max_repeats) / 2.0
        std = np.sqrt((count ** 2 - 1) / 12.0) or 1.0
        return float((repeats - mean) / std)


@dataclass(frozen=True)
class AssociativeRecallConfig:
    """Associative recall: ``min_items``–``max_items`` items of ``item_length`` vectors (paper: 2–6, 3, 6 bits)."""

    num_bits: int = 6
    item_length: int = 3
    min_items: int = 2
    max_items: int = 6

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_int(owner, "num_bits", self.num_bits, 1)
        check_int(owner, "item_length", self.item_length, 1)
        check_int(owner, "min_items", self.min_items, 2)
        check_int(owner, "max_items", self.max_items, 2)
        check_range(owner, "min_items", "max_items", self.min_items, self.max_items)


@dataclass(frozen=True)
class PrioritySortConfig:
    """Priority sort: ``min_length``–``max_length`` inputs, the top ``num_outputs`` returned (paper: 20, 16)."""

    num_bits: int = 8
    min_length: int = 20
    max_length: int = 20
    num_outputs: int = 16

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_int(owner, "num_bits", self.num_bits, 1)
        check_int(owner, "num_outputs", self.num_outputs, 1)
        check_int(owner, "min_length", self.min_length, self.num_outputs)
        check_int(owner, "max_length", self.max_length, 1)
        check_range(owner, "min_length", "max_length", self.min_length, self.max_length)


class AlgorithmicTask:
    """Base class: a seeded generator; subclasses define ``input_size``, ``output_size`` and ``_example``."""

    config_class: type = CopyConfig
    #: channels beyond ``num_bits`` in (input, target)
    extra_channels: tuple[int, int] = (1, 0)

    def __init__(self, config: Optional[object] = None, seed: int = 0, **kwargs) -> None:
        if config is None:
            config = self.config_class(**kwargs)
        elif kwargs or not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__}: pass either a {self.config_class.__name__} or keyword "
                            f"arguments, not both")
        self.config = config
        self.rng = np.random.default_rng(seed)

    @property
    def length_range(self) -> tuple[int, int]:
        """The configured ``(min, max)`` of the length the curriculum and ``sample`` vary."""
        return self.config.min_length, self.config.max_length

    @property
    def input_size(self) -> int:
        return self.config.num_bits + self.extra_channels[0]

    @property
    def output_size(self) -> int:
        return self.config.num_bits + self.extra_channels[1]

    def _frame(self, total: int, answer_start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Zero input ``[total, input_size]``, zero target ``[total, output_size]``, and the loss mask
        ``[total]``, true from ``answer_start`` on."""
        x = np.zeros((total, self.input_size), np.float32)
        y = np.zeros((total, self.output_size), np.float32)
        mask = np.zeros(total, bool)
        mask[answer_start:] = True
        return x, y, mask

    def _bits(self, length: int) -> np.ndarray:
        return self.rng.integers(0, 2, size=(length, self.config.num_bits)).astype(np.float32)

    def sample(self, batch_size: int, length: Optional[int] = None,
               max_length: Optional[int] = None) -> SequenceBatch:
        """A batch; every sequence has ``length`` when given (may exceed the configured maximum, for testing
        generalisation), else a length drawn uniformly in ``[min, min(max, max_length)]``."""
        check_int(type(self).__name__, "batch_size", batch_size, 1)
        low, high = self.length_range
        if length is not None:
            check_int(type(self).__name__, "length", length, low)
        elif max_length is not None:
            high = max(low, min(high, max_length))
        lengths = [length] * batch_size if length is not None else self.rng.integers(low, high + 1, batch_size)
        return pad_batch([self._example(int(n)) for n in lengths])

    def _example(self, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError


class CopyTask(AlgorithmicTask):
    config_class = CopyConfig
    extra_channels = (1, 0)  # input: end-of-sequence flag

    def _example(self, length: int):
        bits = self.config.num_bits
        seq = self._bits(length)
        x, y, mask = self._frame(2 * length + 1, length + 1)
        x[:length, :bits] = seq
        x[length, bits] = 1.0
        y[length + 1:] = seq
        return x, y, mask


class RepeatCopyTask(AlgorithmicTask):
    config_class = RepeatCopyConfig
    extra_channels = (2, 1)  # input: end flag, normalised repeats; output: end-of-output flag

    def _example(self, length: int, repeats: Optional[int] = None):
        c = self.config
        if repeats is None:
            repeats = int(self.rng.integers(c.min_repeats, c.max_repeats + 1))
        seq = self._bits(length)
        start = length + 1
        total = start + length * repeats + 1
        x, y, mask = self._frame(total, start)
        x[:length, :c.num_bits] = seq
        x[length, c.num_bits] = 1.0
        x[length, c.num_bits + 1] = c.normalise_repeats(repeats)
        y[start:total - 1, :c.num_bits] = np.tile(seq, (repeats, 1))
        y[total - 1, c.num_bits] = 1.0
        return x, y, mask

    def sample_repeats(self, batch_size: int, length: int, repeats: int) -> SequenceBatch:
        """A batch with a fixed ``length`` and a fixed ``repeats`` (which may exceed ``max_repeats``)."""
        check_int(type(self).__name__, "repeats", repeats, 1)
        check_int(type(self).__name__, "length", length, 1)
        return pad_batch([self._example(length, repeats) for _ in range(batch_size)])


class AssociativeRecallTask(AlgorithmicTask):
    config_class = AssociativeRecallConfig
    extra_channels = (2, 0)  # input: item delimiter, query delimiter

    @property
    def length_range(self) -> tuple[int, int]:
        return self.config.min_items, self.config.max_items

    def _example(self, num_items: int):
        c = self.config
        items = [self._bits(c.item_length) for _ in range(num_items)]
        query = int(self.rng.integers(0, num_items - 1))
        rows = []
        for item in items:
            rows.append(self._marker(c.num_bits))
            rows.extend(np.pad(item, ((0, 0), (0, 2))))
        rows.append(self._marker(c.num_bits + 1))
        rows.extend(np.pad(items[query], ((0, 0), (0, 2))))
        rows.append(self._marker(c.num_bits + 1))
        start = len(rows)
        x, y, mask = self._frame(start + c.item_length, start)
        x[:start] = np.stack(rows)
        y[start:] = items[query + 1]
        return x, y, mask

    def _marker(self, channel: int) -> np.ndarray:
        row = np.zeros(self.config.num_bits + 2, np.float32)
        row[channel] = 1.0
        return row


class PrioritySortTask(AlgorithmicTask):
    config_class = PrioritySortConfig
    extra_channels = (2, 0)  # input: priority, end flag

    def _example(self, length: int):
        c = self.config
        seq = self._bits(length)
        priority = self.rng.uniform(-1.0, 1.0, size=length).astype(np.float32)
        order = np.argsort(-priority, kind="stable")[:c.num_outputs]
        x, y, mask = self._frame(length + 1 + c.num_outputs, length + 1)
        x[:length, :c.num_bits] = seq
        x[:length, c.num_bits] = priority
        x[length, c.num_bits + 1] = 1.0
        y[length + 1:] = seq[order]
        return x, y, mask


TASKS: Dict[str, type] = {
    "copy": CopyTask,
    "repeat_copy": RepeatCopyTask,
    "associative_recall": AssociativeRecallTask,
    "priority_sort": PrioritySortTask,
}


def make_task(name: str, seed: int = 0, **options) -> AlgorithmicTask:
    """The task called ``name`` (one of :data:`TASKS`) built from keyword options."""
    if name not in TASKS:
        raise ValueError(f"algorithmic task: expected one of {tuple(TASKS)}, got {name!r}")
    return TASKS[name](seed=seed, **options)


@dataclass(frozen=True)
class CurriculumConfig:
    """Start at ``start`` max length; grow by ``step`` up to ``maximum`` when the mean error over the last
    ``window`` updates is below ``threshold``."""

    start: int = 2
    maximum: int = 20
    step: int = 1
    threshold: float = 0.1
    window: int = 10

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_int(owner, "start", self.start, 1)
        check_int(owner, "maximum", self.maximum, 1)
        check_range(owner, "start", "maximum", self.start, self.maximum)
        check_int(owner, "step", self.step, 1)
        check_float(owner, "threshold", self.threshold, 0.0, float("inf"))
        check_int(owner, "window", self.window, 1)


class Curriculum:
    """Length curriculum: ``current`` is the max length to train on; call ``update(error)`` after each batch."""

    def __init__(self, config: Optional[CurriculumConfig] = None, **kwargs) -> None:
        self.config = config if config is not None else CurriculumConfig(**kwargs)
        self.current = self.config.start
        self._errors: deque = deque(maxlen=self.config.window)

    def update(self, error: float) -> bool:
        """Record ``error``; return True when the length grew (the error history restarts then)."""
        self._errors.append(float(error))
        c = self.config
        full = len(self._errors) == c.window
        if not full or self.current >= c.maximum or np.mean(self._errors) >= c.threshold:
            return False
        self.current = min(c.maximum, self.current + c.step)
        self._errors.clear()
        return True


def masked_bce_loss(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Sigmoid cross-entropy averaged over the masked outputs (every channel of every masked step)."""
    mask = mask.to(logits.dtype).unsqueeze(-1)
    loss = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")
    count = mask.sum() * logits.shape[-1]
    return (loss * mask).sum() / count.clamp_min(1.0)


def bits_per_sequence(logits: Tensor, targets: Tensor, mask: Tensor) -> float:
    """Wrong bits after thresholding ``sigmoid(logits)`` at 0.5, summed over a sequence's masked outputs,
    averaged over the batch."""
    wrong = ((logits > 0).to(targets.dtype) != targets).to(torch.float32)
    wrong = wrong * mask.to(torch.float32).unsqueeze(-1)
    return float(wrong.sum(dim=(1, 2)).mean())


def _as_logits(output) -> Tensor:
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def evaluate_generalisation(model: Callable[[Tensor], object], task: AlgorithmicTask,
                            lengths: Iterable[int] = (40, 80, 120), batch_size: int = 16,
                            num_batches: int = 1) -> Dict[int, float]:
    """Bits per sequence of ``model`` (``x -> logits`` or ``x -> (logits, state)``) on sequences of each of
    ``lengths`` (typically longer than trained), ``{length: mean bits per sequence}``."""
    results = {}
    for length in lengths:
        errors = []
        for _ in range(num_batches):
            batch = task.sample(batch_size, length=length)
            errors.append(bits_per_sequence(_as_logits(model(batch.inputs)), batch.targets, batch.mask))
        results[int(length)] = float(np.mean(errors))
    return results
