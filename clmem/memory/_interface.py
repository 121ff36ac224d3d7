"""Helpers to split a flat interface vector ``[B, interface_size]`` into named, shaped pieces."""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Sequence, Tuple

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


Groups = Sequence[Tuple[Optional[Callable[[Tensor], Tensor]], Layout]]


def groups_size(groups: Groups) -> int:
    """Total number of scalars in grouped layouts."""
    return sum(layout_size(layout) for _, layout in groups)


def split_grouped_interface(owner: str, vector: Tensor, groups: Groups) -> Dict[str, Tensor]:
    """Split ``vector [B, groups_size]`` into ``{name: [B, *shape]}``, applying each group's elementwise
    activation once to its contiguous slice (``None``: raw). Fewer ops than one activation per field."""
    expected = groups_size(groups)
    if vector.dim() != 2 or vector.shape[-1] != expected:
        raise ValueError(f"{owner}.parse_interface: expected a [B, {expected}] tensor, got {tuple(vector.shape)}")
    parts = vector.split([layout_size(layout) for _, layout in groups], dim=-1)
    fields: Dict[str, Tensor] = {}
    for (activation, layout), part in zip(groups, parts):
        fields.update(split_interface(owner, part if activation is None else activation(part), layout))
    return fields
