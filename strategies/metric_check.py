"""A warning, once, when Avalanche's accuracy metrics cannot score the stream being trained on.

Avalanche's ``Accuracy`` (behind ``accuracy_metrics``, and behind ``forgetting_metrics`` and
``bwt_metrics``, which measure the change of accuracy) takes the argmax over dim 1 of outputs
``[B, C]`` and compares it with class ids ``[B]`` (or one-hot targets ``[B, C]``). On clmem's sequence
streams it returns numbers that mean nothing, without an error: bit targets ``[B, T, bits+1]`` are
float (with −1 where unscored), and QA learners that read out every step return ``[B, T, V]``.
:class:`ScoreabilityCheck` looks at the first minibatch (training or evaluation) and warns once, naming
the stream's own metrics.
"""
from __future__ import annotations

import warnings

import torch
from avalanche.core import SupervisedPlugin

_BITS = ("bits per sequence and sequence error (clmem.tasks.stream_metrics.BitsPerSequence, SequenceError)")
_QA = ("answer error and per-task error (clmem.tasks.stream_metrics.AnswerError, BabiTaskErrors)")
_EPISODES = ("per-step and per-instance episode accuracy (clmem.tasks.omniglot.EpisodeAccuracy, InstanceAccuracy)")


def accuracy_plugin_metrics(evaluator) -> list:
    """The plugin metrics of ``evaluator`` (an ``EvaluationPlugin`` or None) computed from Avalanche's
    ``Accuracy``: accuracy and top-k accuracy metrics, and forgetting/BWT metrics of accuracy."""
    from avalanche.evaluation.metrics.accuracy import (Accuracy, AccuracyPerTaskPluginMetric,
                                                       AccuracyPluginMetric, TaskAwareAccuracy)
    from avalanche.evaluation.metrics.forgetting_bwt import GenericExperienceForgetting
    from avalanche.evaluation.metrics.topk_acc import TopkAccuracyPluginMetric

    direct = (AccuracyPluginMetric, AccuracyPerTaskPluginMetric, TopkAccuracyPluginMetric)
    found = []
    for metric in getattr(evaluator, "metrics", None) or []:
        inner = getattr(metric, "_current_metric", None)
        if isinstance(metric, direct) or (isinstance(metric, GenericExperienceForgetting)
                                          and isinstance(inner, (Accuracy, TaskAwareAccuracy))):
            found.append(metric)
    return found


def _is_one_hot(targets: torch.Tensor, output: torch.Tensor) -> bool:
    if targets.shape != output.shape:
        return False
    values = targets.detach()
    return bool(((values == 0) | (values == 1)).all() and (values.sum(dim=1) == 1).all())


def accuracy_unscoreable(output, targets: torch.Tensor) -> str:
    """Why Avalanche's ``Accuracy`` cannot score ``output`` against ``targets`` ("" when it can).

    Scoreable: outputs ``[B]`` or ``[B, C]`` against integer class ids ``[B]``, or one-hot targets
    of the outputs' shape ``[B, C]``. ``output`` may be a tuple whose first item is the logits.
    """
    logits = output[0] if isinstance(output, (tuple, list)) else output
    shape = lambda t: "[" + ", ".join(str(s) for s in t.shape) + "]"
    if logits.dim() > 2:
        return (f"the model's outputs are {shape(logits)} (accuracy takes the argmax over dim 1 of "
                f"[B, C] outputs) against targets {str(targets.dtype).replace('torch.', '')} {shape(targets)}")
    if targets.dim() == 1 and not targets.is_floating_point():
        return ""
    if targets.dim() == 2 and _is_one_hot(targets, logits):
        return ""
    return (f"the targets are {str(targets.dtype).replace('torch.', '')} {shape(targets)} "
            f"(accuracy expects integer class ids [B] or one-hot [B, C] targets)")


def own_metrics_hint(targets: torch.Tensor) -> str:
    """The stream's own metrics for targets like ``targets``: float bit targets → bits per sequence,
    class ids per step ``[B, T]`` (few-shot episodes) → episode accuracy, answer ids ``[B]`` (QA) →
    answer / per-task error."""
    if targets.is_floating_point():
        return _BITS
    return _EPISODES if targets.dim() == 2 else _QA


class ScoreabilityCheck(SupervisedPlugin):
    """Warns once (``UserWarning``, one line) when accuracy-based Avalanche metrics are attached to the
    strategy's evaluator while the training or evaluation targets cannot be scored by them.

    The check runs on the first minibatch forward (``after_forward`` or ``after_eval_forward``),
    then never again; ``checked``/``warned`` are its whole state (:meth:`state_dict`).
    """

    def __init__(self):
        super().__init__()
        self.checked = False
        self.warned = False

    def after_forward(self, strategy, *args, **kwargs):
        self._check(strategy)

    def after_eval_forward(self, strategy, *args, **kwargs):
        self._check(strategy)

    def _check(self, strategy) -> None:
        if self.checked:
            return
        self.checked = True
        metrics = accuracy_plugin_metrics(getattr(strategy, "evaluator", None))
        if not metrics:
            return
        why = accuracy_unscoreable(strategy.mb_output, strategy.mb_y)
        if why:
            self.warned = True
            names = ", ".join(sorted({str(m) for m in metrics}))
            warnings.warn(f"Avalanche's accuracy metrics ({names}) cannot score this stream and report "
                          f"meaningless values: {why}; use the stream's own metrics: "
                          f"{own_metrics_hint(strategy.mb_y)}, i.e. Stream.eval_metrics()", stacklevel=2)

    def state_dict(self) -> dict:
        return {"checked": self.checked, "warned": self.warned}

    def load_state_dict(self, state: dict) -> None:
        for key in ("checked", "warned"):
            if not isinstance(state.get(key), bool):
                raise ValueError(f"ScoreabilityCheck state: {key!r} expected a bool, got {state.get(key)!r}")
        self.checked, self.warned = state["checked"], state["warned"]
