"""Losses and Avalanche metrics of clmem's sequence streams (see :mod:`clmem.tasks.streams`).

Targets pack the mask: ``0``/``1`` where an output bit is scored, :data:`IGNORE` (−1) elsewhere;
bAbI targets are answer ids scored at the last step.
"""
from __future__ import annotations

import re

import numpy as np

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE = -1.0
FAIL_THRESHOLD = 0.05


# ------------------------------------------------------------------------------------------ losses
def _logits(output) -> Tensor:
    return output[0] if isinstance(output, tuple) else output


def masked_bit_loss(output, y: Tensor) -> Tensor:
    """Sigmoid cross-entropy averaged over the scored outputs (``y != IGNORE``) of ``y [B, T, O]``."""
    logits = _logits(output)
    scored = (y >= 0).to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, y.clamp_min(0).to(logits.dtype), reduction="none")
    return (loss * scored).sum() / scored.sum().clamp_min(1.0)


def answer_cross_entropy(output, y: Tensor) -> Tensor:
    """Cross-entropy of the answer: ``logits [B, V]``, or ``[B, T, V]`` scored at the last (answer) step."""
    logits = _logits(output)
    if logits.dim() == 3:
        logits = logits[:, -1]
    return F.cross_entropy(logits, y.long())


class MaskedBitLoss(torch.nn.Module):
    """:func:`masked_bit_loss` as a module (the algorithmic streams' criterion)."""

    def forward(self, output, y):
        return masked_bit_loss(output, y)


class AnswerCrossEntropy(torch.nn.Module):
    """:func:`answer_cross_entropy` as a module (the bAbI streams' criterion)."""

    def forward(self, output, y):
        return answer_cross_entropy(output, y)


def wrong_bits(output, y: Tensor) -> Tensor:
    """Per sequence, the number of scored outputs wrong after thresholding ``sigmoid`` at 0.5: ``[B]``."""
    logits = _logits(output)
    wrong = ((logits > 0) != (y > 0.5)) & (y >= 0)
    return wrong.flatten(1).sum(dim=1).to(torch.float32)


def _answer_wrong(output, y: Tensor) -> Tensor:
    logits = _logits(output)
    if logits.dim() == 3:
        logits = logits[:, -1]
    return (logits.argmax(dim=-1) != y.long()).to(torch.float32)


# ----------------------------------------------------------------------------------------- metrics
def _plugin_metrics():
    from avalanche.evaluation import GenericPluginMetric, PluginMetric
    from avalanche.evaluation.metric_results import MetricValue
    from avalanche.evaluation.metrics import Mean

    return GenericPluginMetric, PluginMetric, MetricValue, Mean


_Generic, _Plugin, _MetricValue, _Mean = _plugin_metrics()


class _PerExperienceMean(_Generic):
    """Mean of a per-sequence score over one evaluation experience (reset and emitted per experience)."""

    name = ""

    def __init__(self):
        super().__init__(_Mean(), reset_at="experience", emit_at="experience", mode="eval")

    def per_sequence(self, output, y) -> Tensor:
        raise NotImplementedError

    def update(self, strategy) -> None:
        values = self.per_sequence(strategy.mb_output.detach(), strategy.mb_y)
        if len(values):
            self._metric.update(float(values.mean()), len(values))

    def __str__(self) -> str:
        return self.name


class BitsPerSequence(_PerExperienceMean):
    """Mean wrong bits per sequence (scored outputs only) over an evaluation experience: ``BitsPerSeq_Exp``."""

    name = "BitsPerSeq_Exp"

    def per_sequence(self, output, y):
        return wrong_bits(output, y)


class SequenceError(_PerExperienceMean):
    """Fraction of sequences with at least one wrong scored bit: ``SeqError_Exp``."""

    name = "SeqError_Exp"

    def per_sequence(self, output, y):
        return (wrong_bits(output, y) > 0).to(torch.float32)


class AnswerError(_PerExperienceMean):
    """Fraction of wrongly answered questions (1 − accuracy) over an evaluation experience: ``Error_Exp``."""

    name = "Error_Exp"

    def per_sequence(self, output, y):
        return _answer_wrong(output, y)


class BabiTaskErrors(_Plugin):
    """Per bAbI task (from the samples' ``info[:, 0]``) error over one evaluation of a stream; emits
    ``BabiError_qa<N>/eval_phase/<stream>``, ``BabiMeanError/eval_phase/<stream>`` and
    ``BabiFailedTasks/eval_phase/<stream>`` (tasks with error > ``threshold``)."""

    def __init__(self, threshold: float = FAIL_THRESHOLD):
        super().__init__()
        self.threshold = threshold
        self._wrong: dict[int, float] = {}
        self._count: dict[int, int] = {}

    def reset(self) -> None:
        self._wrong, self._count = {}, {}

    def result(self) -> dict[int, float]:
        return {t: self._wrong[t] / self._count[t] for t in sorted(self._count)}

    def failed(self) -> int:
        return sum(e > self.threshold for e in self.result().values())

    def update(self, output, y: Tensor, tasks: Tensor) -> None:
        wrong = _answer_wrong(output, y).cpu()
        for task in torch.unique(tasks.cpu()).tolist():
            pick = tasks.cpu() == task
            self._wrong[task] = self._wrong.get(task, 0.0) + float(wrong[pick].sum())
            self._count[task] = self._count.get(task, 0) + int(pick.sum())

    def before_eval(self, strategy):
        self.reset()

    def after_eval_iteration(self, strategy):
        if len(strategy.mbatch) >= 4:
            self.update(strategy.mb_output.detach(), strategy.mb_y, strategy.mbatch[2][:, 0])

    def after_eval(self, strategy):
        errors = self.result()
        if not errors:
            return None
        stream = f"{strategy.experience.origin_stream.name}_stream"  # as Avalanche names it: test_stream
        x = strategy.clock.train_iterations
        out = [_MetricValue(self, f"BabiError_qa{t}/eval_phase/{stream}", e, x) for t, e in errors.items()]
        out.append(_MetricValue(self, f"BabiMeanError/eval_phase/{stream}", float(np.mean(list(errors.values()))), x))
        out.append(_MetricValue(self, f"BabiFailedTasks/eval_phase/{stream}", float(self.failed()), x))
        return out

    def __str__(self) -> str:
        return "BabiTaskErrors"


_REPORT_KEYS = {"BitsPerSeq_Exp": "bits_per_seq_exp_{}", "SeqError_Exp": "seq_error_exp_{}", "Error_Exp": "error_exp_{}"}
_EXP_NAME = re.compile(r"^(BitsPerSeq_Exp|SeqError_Exp|Error_Exp)/eval_phase/test_stream/(?:Task\d+/)?Exp(\d+)$")
_BABI_NAME = re.compile(r"^Babi(Error_qa\d+|MeanError|FailedTasks)/eval_phase/(test|valid)_stream$")
_BABI_KEYS = {"MeanError": "babi_mean_error", "FailedTasks": "babi_failed_tasks"}


def report_metrics(results: dict) -> dict[str, float]:
    """The streams' metrics in Avalanche eval ``results`` as flat MLflow-safe keys: ``bits_per_seq_exp_<j>``,
    ``seq_error_exp_<j>``, ``error_exp_<j>`` (test experience ``j``), ``babi_error_qa<N>``, ``babi_mean_error``
    and ``babi_failed_tasks`` (tasks above 5% error); the validation stream's as ``babi_valid_...``."""
    out: dict[str, float] = {}
    for key, value in results.items():
        if (m := _EXP_NAME.match(key)):
            out[_REPORT_KEYS[m.group(1)].format(int(m.group(2)))] = float(value)
        elif (m := _BABI_NAME.match(key)):
            name = _BABI_KEYS.get(m.group(1), "babi_" + m.group(1).lower())
            out[name if m.group(2) == "test" else name.replace("babi_", "babi_valid_", 1)] = float(value)
    return out
