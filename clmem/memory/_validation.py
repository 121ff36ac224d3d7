"""Small validators shared by the memory config dataclasses (one-line ``ValueError`` naming the field)."""

from __future__ import annotations

import math
from typing import Any, Iterable


def check_int(owner: str, field: str, value: Any, minimum: int) -> None:
    """Raise ``ValueError`` unless ``value`` is an ``int`` (not ``bool``) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}.{field}: expected an int >= {minimum}, got {value!r}")


def check_positive_float(owner: str, field: str, value: Any, allow_none: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite real number ``> 0`` (or ``None`` when allowed)."""
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        suffix = " or None" if allow_none else ""
        raise ValueError(f"{owner}.{field}: expected a finite number > 0{suffix}, got {value!r}")


def check_choice(owner: str, field: str, value: Any, choices: Iterable[str]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{owner}.{field}: expected one of {choices}, got {value!r}")
