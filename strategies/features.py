"""Feature vectors of any classifier, following Avalanche's model conventions.

Strategies that need a sample's feature vector (``hopfield_kv``, ``ncm``, nearest retrieval of
``episodic_replay``) take it from:

1. ``model.get_features(x)`` when the model has that method (Avalanche's ``SimpleMLP``, clmem's
   ``mlp`` and ``cnn``);
2. otherwise the input of the model's **last** ``nn.Linear`` (in module order) during a normal
   forward pass, captured by a forward pre-hook (Avalanche's ``SimpleCNN``: the input of
   ``classifier[0]``).

A model with neither (no ``get_features`` and no ``nn.Linear``) is refused with one line.
:func:`head_shape` gives (feature size, number of classes) from the same last ``nn.Linear``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["last_linear", "head_shape", "extract_features", "FeatureCapture"]


def last_linear(model: nn.Module) -> nn.Linear | None:
    """The last ``nn.Linear`` of ``model`` in module order (its read-out head), or ``None``."""
    found = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            found = module
    return found


def head_shape(model: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of the model's head: the feature size and the number of classes."""
    head = last_linear(model)
    if head is None:
        raise ValueError(f"{type(model).__name__}: expected a classifier ending in an nn.Linear head "
                         "(its in/out features give the feature size and the number of classes)")
    return head.in_features, head.out_features


class FeatureCapture:
    """Forward pre-hook on the last ``nn.Linear``: remembers its input ``[B, F]`` of the latest forward."""

    def __init__(self, model: nn.Module):
        head = last_linear(model)
        if head is None:
            raise ValueError(f"{type(model).__name__}: no get_features(x) and no nn.Linear head to take "
                             "features from")
        self.value: Tensor | None = None
        self._handle = head.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple) -> None:
        self.value = args[0]

    def remove(self) -> None:
        self._handle.remove()


def extract_features(model: nn.Module, x: Tensor) -> Tensor:
    """Feature vectors ``[B, F]`` of inputs ``x [B, ...]`` (see the module docstring), flattened per sample."""
    get = getattr(model, "get_features", None)
    if callable(get):
        feats = get(x)
    else:
        capture = FeatureCapture(model)
        try:
            model(x)
        finally:
            capture.remove()
        feats = capture.value
    return feats.reshape(feats.shape[0], -1)


def embed(model: nn.Module, x: Tensor) -> Tensor:
    """:func:`extract_features` without gradient, in float32."""
    with torch.no_grad():
        return extract_features(model, x).float()
