"""Helpers to split a flat interface vector ``[B, interface_size]`` into named, shaped pieces."""

from __future__ import annotations

import math
from typing import Dict, Sequence, Tuple

from torch import Tensor

Layout = Sequence[Tuple[str, Tuple[int, ...]]]


def layout_size(layout: Layout) -> int:
    """Total number of scalars in a layout of ``(name, per-example shape)`` pairs."""
    return sum(math.prod(shape) for _, shape in layout)


def split_interface(owner: str, vector: Tensor, layout: Layout) -> Dict[str, Tensor]:
    """Split ``vector [B, layout_size]`` into ``{name: [B, *shape]}`` views (raw, no nonlinearity)."""
    expected = layout_size(layout)
    if vector.dim() != 2 or vector.shape[-1] != expected:
        raise ValueError(f"{owner}.parse_interface: expected a [B, {expected}] tensor, got {tuple(vector.shape)}")
    sizes = [math.prod(shape) for _, shape in layout]
    pieces = vector.split(sizes, dim=-1)
    return {name: piece.reshape(vector.shape[0], *shape) for (name, shape), piece in zip(layout, pieces)}
