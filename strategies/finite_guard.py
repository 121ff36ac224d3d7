"""No silent NaN: stop training at the first non-finite loss, gradient or parameter.

:class:`FiniteGuard` is an Avalanche ``SupervisedPlugin`` that :func:`strategies.registry.create_strategy`
attaches to every strategy it builds. It checks, once per training iteration each:

* ``before_backward``: the loss of the forward pass (as the plugins before it left it);
* ``after_backward``: the loss again (plugins after the guard, e.g. a penalty, may have added to it) and the
  gradients of every parameter, with one fused reduction (the sum of the gradients' norms);
* ``after_update``: the parameters, the same way.

The first failure raises :class:`NonFiniteError` with one line naming the strategy, the experience (its index
in the stream, ``experience.current_experience``) and the iteration (0-based, within the experience), e.g.
``non-finite loss in strategy 'ewc_controller' at experience 2, iteration 14 (loss=nan)``; for gradients and
parameters it names the first offending parameter. The fused check costs one reduction and one device sync
per hook; only when it fails are the tensors looked at one by one (a sum of norms that overflows while every
tensor is finite is not an error).
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from avalanche.core import SupervisedPlugin
from torch import Tensor

__all__ = ["NonFiniteError", "FiniteGuard", "first_non_finite"]


class NonFiniteError(RuntimeError):
    """A non-finite loss, gradient or parameter (the message is one line)."""


def _fused_norm(tensors: list[Tensor]) -> Tensor:
    """Sum of the 2-norms of ``tensors`` (any shapes, devices and float dtypes) as one float32 scalar on the
    first tensor's device; non-finite iff some tensor is non-finite, or the sum overflows."""
    device = tensors[0].device
    groups: dict[tuple, list[Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t.coalesce().values() if t.is_sparse else t)
    total = torch.zeros((), device=device, dtype=torch.float32)
    for group in groups.values():
        norms = torch._foreach_norm(group)
        total = total + torch.stack(norms).to(device=device, dtype=torch.float32).sum()
    return total


def first_non_finite(named: Iterable[tuple[str, Tensor | None]]) -> str | None:
    """Name of the first tensor of ``named`` (``(name, tensor or None)`` pairs) holding a NaN or an infinity;
    None when all are finite. Tensors that are None or not floating point are skipped. One reduction and one
    sync for the whole list when all are finite."""
    items = [(n, t.detach()) for n, t in named if t is not None and (t.is_floating_point() or t.is_complex())]
    if not items or bool(torch.isfinite(_fused_norm([t for _, t in items]))):
        return None
    for name, tensor in items:
        values = tensor.coalesce().values() if tensor.is_sparse else tensor
        if not bool(torch.isfinite(values).all()):
            return name
    return None


class FiniteGuard(SupervisedPlugin):
    """Raise :class:`NonFiniteError` at the first non-finite loss, gradient or parameter (see the module docstring).

    Args:
        strategy_name: the registered name of the strategy, used in the message.
    """

    def __init__(self, strategy_name: str):
        super().__init__()
        if not isinstance(strategy_name, str) or not strategy_name:
            raise ValueError(f"FiniteGuard.strategy_name: expected a non-empty string, got {strategy_name!r}")
        self.strategy_name = strategy_name

    def _where(self, strategy) -> str:
        experience = getattr(getattr(strategy, "experience", None), "current_experience", None)
        if experience is None:
            experience = strategy.clock.train_exp_counter
        return (f"in strategy {self.strategy_name!r} at experience {experience}, "
                f"iteration {strategy.clock.train_exp_iterations}")

    def _check_loss(self, strategy) -> None:
        loss = strategy.loss
        if isinstance(loss, Tensor) and not bool(torch.isfinite(loss.detach()).all()):
            value = loss.detach().flatten()[0].item() if loss.numel() else float("nan")
            raise NonFiniteError(f"non-finite loss {self._where(strategy)} (loss={value})")

    def before_backward(self, strategy, **kwargs):
        self._check_loss(strategy)

    def after_backward(self, strategy, **kwargs):
        self._check_loss(strategy)
        name = first_non_finite((n, p.grad) for n, p in strategy.model.named_parameters())
        if name is not None:
            raise NonFiniteError(f"non-finite gradient {self._where(strategy)} (parameter {name!r})")

    def after_update(self, strategy, **kwargs):
        name = first_non_finite(strategy.model.named_parameters())
        if name is not None:
            raise NonFiniteError(f"non-finite parameter {self._where(strategy)} after the update (parameter {name!r})")

    # -- state: none (the guard is stateless) -----------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"FiniteGuard.load_state_dict: expected an empty state, got keys {sorted(state)}")
