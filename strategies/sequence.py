"""An Avalanche strategy for sequence learners (NTM, DNC, MANN, LSTM, MemN2N) on the streams of
:mod:`clmem.tasks.streams`, registered as ``sequence``,
``sequence_ewc`` and ``sequence_replay``.

:class:`SequenceStrategy` is a plain ``SupervisedTemplate`` subclass, so Avalanche's own plugins (EWC, replay,
SI, LwF, ...) attach unchanged; in experiment files pick
``sequence``, ``sequence_ewc`` or ``sequence_replay`` (Avalanche's ``EWCPlugin`` / ``ReplayPlugin`` attached).
What it adds:

* **per-batch state**: every forward starts the learner from its initial (zero) recurrent state; no state
  crosses batches (the learners of :mod:`clmem.learners` are stateless across calls).
* **answer-step read-out**: when targets are class ids ``[B]`` and the learner returns ``[B, T, V]``, the
  output is the last step (the bAbI sequence layout puts the answer there), so Avalanche's accuracy and the
  streams' metrics see ``[B, V]``.
* **masked losses** come from the stream (``Stream.criterion``): sigmoid BCE over the scored bits for
  algorithmic tasks, cross-entropy of the answer for bAbI.
* **gradient clipping** by global norm (``clip_grad_norm``, null disables), and optionally a **gradient-spike
  guard** (``spike_factor`` k, ``spike_decay`` d; :class:`GradSpikeGuard`): a gradient whose global norm exceeds k
  times a running average of the (guarded) norms is scaled down to that bound before the fixed clip. With Adam a
  single spike otherwise moves every parameter by several learning rates at once (the update is normalised per
  coordinate, so a fixed clip does not bound it); this is how a converged NTM on copy fell back to chance (see
  ``benchmarks/results/copy_stability.md``).
* **memory growth** between experiences (``grow_memory: n``): a growing memory (``gated`` with
  ``max_memory_size > memory_size``) starts each new experience with ``n`` more slots
  (:class:`strategies.memory_growth.MemoryGrowthPlugin`).
* **length curriculum** for algorithmic streams (``curriculum: true``): each experience starts training on
  sequences of length <= ``curriculum_start`` (lengths from the samples' ``info[:, 1]``) and grows the limit by
  ``curriculum_step`` when the fraction of wrong scored bits over the last ``curriculum_window`` updates is
  below ``curriculum_threshold`` (:class:`clmem.tasks.Curriculum`).
"""
from __future__ import annotations

import torch
from avalanche.core import SupervisedPlugin

from clmem.options import Opt
from clmem.tasks.algorithmic import Curriculum, CurriculumConfig
from strategies.registry import STRATEGIES

__all__ = ["GradSpikeGuard", "SequenceStrategy", "SEQUENCE_OPTIONS", "SpikeGuardPlugin"]


class GradSpikeGuard:
    """Scale a gradient down to ``factor`` times the running average of the global gradient norm.

    For each update with global norm ``n`` (over all ``.grad``): the first sets ``a = n`` and passes; later ones
    pass when ``n <= factor * a``, else every gradient is multiplied by ``factor * a / n``. Then
    ``a <- decay * a + (1 - decay) * min(n, factor * a)`` (the bound, not the spike, enters the average). A
    non-finite ``n`` leaves the gradients and ``a`` alone (the strategy's finite guard reports it).
    """

    def __init__(self, factor: float, decay: float = 0.99) -> None:
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor >= 1.0 \
                or factor == float("inf"):
            raise ValueError(f"GradSpikeGuard.factor: expected a finite number >= 1, got {factor!r}")
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
            raise ValueError(f"GradSpikeGuard.decay: expected a number in [0, 1), got {decay!r}")
        self.factor, self.decay = float(factor), float(decay)
        self.average: float | None = None
        self.scaled = 0  # updates scaled down so far

    def __call__(self, parameters) -> tuple[float, float]:
        """Apply to the gradients of ``parameters`` in place; returns ``(norm before, scale applied)``."""
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return 0.0, 1.0
        norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
        if not torch.isfinite(torch.tensor(norm)):
            return norm, 1.0
        if self.average is None:
            self.average = norm
            return norm, 1.0
        bound, scale = self.factor * self.average, 1.0
        if norm > bound:
            scale = bound / norm
            for g in grads:
                g.mul_(scale)
            self.scaled += 1
        self.average = self.decay * self.average + (1.0 - self.decay) * min(norm, bound)
        return norm, scale

    def state_dict(self) -> dict:
        """The running average and the count of scaled updates (a resumed trial continues with them)."""
        return {"factor": self.factor, "decay": self.decay, "average": self.average, "scaled": self.scaled}

    def load_state_dict(self, state: dict) -> None:
        if (state.get("factor"), state.get("decay")) != (self.factor, self.decay):
            raise ValueError(f"GradSpikeGuard: the checkpoint's guard has factor {state.get('factor')!r} and decay "
                             f"{state.get('decay')!r}, this one {self.factor} and {self.decay}")
        self.average, self.scaled = state["average"], int(state["scaled"])


class SpikeGuardPlugin(SupervisedPlugin):
    """A :class:`GradSpikeGuard` as an Avalanche plugin: applied in ``before_update`` (after the backward pass and
    the finite check, before the strategy's fixed clip in ``optimizer_step``); its state is checkpointed with the
    plugins'."""

    def __init__(self, guard: GradSpikeGuard):
        super().__init__()
        self.guard = guard

    def before_update(self, strategy, **kwargs):
        self.guard(strategy.model.parameters())

    def state_dict(self) -> dict:
        return self.guard.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.guard.load_state_dict(state)


def _base():
    from avalanche.training.templates import SupervisedTemplate

    return SupervisedTemplate


class SequenceStrategy(_base()):
    """``SupervisedTemplate`` for sequence learners; see the module docstring."""

    def __init__(self, *, model, optimizer, criterion, clip_grad_norm: float | None = 10.0,
                 curriculum: bool = False, curriculum_start: int = 2, curriculum_step: int = 1,
                 curriculum_threshold: float = 0.1, curriculum_window: int = 10,
                 spike_factor: float | None = None, spike_decay: float = 0.99, grow_memory: int = 0, **kwargs):
        self.spike_guard = None if spike_factor is None else GradSpikeGuard(spike_factor, spike_decay)
        own = [] if self.spike_guard is None else [SpikeGuardPlugin(self.spike_guard)]
        if grow_memory:
            from strategies.memory_growth import MemoryGrowthPlugin

            own.append(MemoryGrowthPlugin(grow_memory))
        kwargs["plugins"] = [*(kwargs.get("plugins") or []), *own]
        super().__init__(model=model, optimizer=optimizer, criterion=criterion, **kwargs)
        self.clip_grad_norm = clip_grad_norm
        self.curriculum_config = (CurriculumConfig(start=curriculum_start, maximum=10 ** 6, step=curriculum_step,
                                                   threshold=curriculum_threshold, window=curriculum_window)
                                  if curriculum else None)
        self.curriculum: Curriculum | None = None

    # -- state and read-out
    def forward(self):
        from avalanche.models.utils import avalanche_forward

        reset = getattr(self.model, "reset_state", None)
        if callable(reset):  # learners that keep a state between calls start afresh per batch
            reset()
        out = avalanche_forward(self.model, self.mb_x, self.mb_task_id)
        if isinstance(out, tuple):  # (logits, state)
            out = out[0]
        if out.dim() == 3 and self.mb_y.dim() == 1:
            out = out[:, -1]  # class-id targets: score the answer (last) step
        return out

    # -- clipping (the gradient-spike guard, a plugin, has run in before_update)
    def optimizer_step(self):
        if self.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
        super().optimizer_step()

    # -- curriculum
    def _before_training_exp(self, **kwargs):
        if self.curriculum_config is not None:
            self.curriculum = Curriculum(self.curriculum_config)
        super()._before_training_exp(**kwargs)

    def _unpack_minibatch(self):
        super()._unpack_minibatch()
        if self.curriculum is None or not self.is_training or len(self.mbatch) < 4:
            return
        lengths = self.mbatch[2][:, 1]
        keep = lengths <= self.curriculum.current
        if not bool(keep.any()):
            keep = lengths == lengths.min()
        if not bool(keep.all()):
            self.mbatch = [t[keep] for t in self.mbatch]

    def _after_training_iteration(self, **kwargs):
        if self.curriculum is not None and self.mb_y.is_floating_point():
            with torch.no_grad():
                scored = self.mb_y >= 0
                wrong = ((self.mb_output > 0) != (self.mb_y > 0.5)) & scored
                rate = float(wrong.sum()) / max(1, int(scored.sum()))
            self.curriculum.update(rate)
        super()._after_training_iteration(**kwargs)


_BASE_OPTIONS = {
    "clip_grad_norm": Opt(float, 10.0, min=1e-9, nullable=True, help="max global gradient norm (null: no clipping)"),
    "curriculum": Opt(bool, False, help="length curriculum on algorithmic streams"),
    "curriculum_start": Opt(int, 2, min=1, help="first maximum length of each experience"),
    "curriculum_step": Opt(int, 1, min=1, help="length added when the curriculum grows"),
    "curriculum_threshold": Opt(float, 0.1, min=0.0, help="grow when the recent bit error rate is below this"),
    "curriculum_window": Opt(int, 10, min=1, help="updates averaged before growing"),
    "spike_factor": Opt(float, None, min=1.0, max=1e6, nullable=True,
                        help="gradient-spike guard: scale a gradient whose norm exceeds this times the running "
                             "average norm down to that bound (null: off)"),
    "spike_decay": Opt(float, 0.99, min=0.0, max=0.999999,
                       help="decay of the spike guard's running average of gradient norms, in [0, 1)"),
    "grow_memory": Opt(int, 0, min=0, max=10 ** 6,
                       help="slots a growing memory (gated, max_memory_size > memory_size) gains after each "
                            "training experience (0: off; strategies.memory_growth.MemoryGrowthPlugin)"),
}
#: Options of each registered name: ``sequence`` (no extra plugin), ``sequence_ewc`` (+ Avalanche's
#: ``EWCPlugin``), ``sequence_replay`` (+ Avalanche's ``ReplayPlugin``).
SEQUENCE_OPTIONS: dict[str, dict[str, Opt]] = {
    "sequence": dict(_BASE_OPTIONS),
    "sequence_ewc": {**_BASE_OPTIONS, "ewc_lambda": Opt(float, 10.0, min=0.0, help="EWC penalty weight"),
                     "mode": Opt(str, "separate", choices=("separate", "online")),
                     "decay_factor": Opt(float, None, min=0.0, max=1.0, nullable=True, help="online EWC decay")},
    "sequence_replay": {**_BASE_OPTIONS, "mem_size": Opt(int, 200, min=1, help="replay buffer size (samples)")},
}


def _builder(name: str):
    def build(*, plugins=None, ewc_lambda: float = 10.0, mode: str = "separate", decay_factor=None,
              mem_size: int = 200, **kwargs):
        from avalanche.training.plugins import EWCPlugin, ReplayPlugin

        plugins = list(plugins or [])
        if name == "sequence_ewc":
            plugins.append(EWCPlugin(ewc_lambda=ewc_lambda, mode=mode, decay_factor=decay_factor))
        elif name == "sequence_replay":
            plugins.append(ReplayPlugin(mem_size=mem_size))
        return SequenceStrategy(plugins=plugins, **kwargs)

    build.__name__ = f"build_{name}"
    return build


_DESCRIPTIONS = {
    "sequence": "sequence learners: per-batch state, masked loss, gradient clipping, length curriculum",
    "sequence_ewc": "the sequence strategy with Avalanche's EWCPlugin",
    "sequence_replay": "the sequence strategy with Avalanche's ReplayPlugin",
}


def template() -> type:
    """The Avalanche class behind the sequence strategies (its keyword arguments pass through)."""
    return SequenceStrategy


for _name, _options in SEQUENCE_OPTIONS.items():
    STRATEGIES.register(_name, _options, _DESCRIPTIONS[_name], template=template)(_builder(_name))
