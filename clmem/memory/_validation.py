"""Small validators shared by the memory config dataclasses (one-line ``ValueError`` naming the field)."""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional

import torch


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


def check_bool(owner: str, field: str, value: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is a ``bool``."""
    if not isinstance(value, bool):
        raise ValueError(f"{owner}.{field}: expected true or false, got {value!r}")


def check_fraction(owner: str, field: str, value: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is a real number (not ``bool``) in ``[0, 1)`` (NaN refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{owner}.{field}: expected a float in [0, 1), got {value!r}")


def check_choice(owner: str, field: str, value: Any, choices: Iterable[str]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{owner}.{field}: expected one of {choices}, got {value!r}")


def check_batch_input(owner: str, x: Any, dtype: Optional[torch.dtype] = None) -> None:
    """Refuse a bad model input ``x [B, ...]`` with one ``ValueError`` line naming ``{owner}.x``.

    Checks, in order: ``x`` is a tensor with ``B >= 1`` rows; when ``dtype`` (the model's parameter dtype) is
    given, ``x`` has exactly that dtype; a floating ``x`` is finite (one ``isfinite().all()`` reduction, the
    first bad batch row is searched only on failure). Integer ``x`` (word ids) skips the finite check, and so
    does an ``x`` inside a ``torch.func`` transform (``vmap`` cannot branch on data; per-sample Fisher).
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{owner}.x: expected a tensor [B, ...] with B >= 1, got {got}")
    if x.shape[0] < 1:
        raise ValueError(f"{owner}.x: expected a batch of B >= 1 rows, got shape {tuple(x.shape)}")
    if dtype is not None and x.dtype != dtype:
        want, got = str(dtype).replace("torch.", ""), str(x.dtype).replace("torch.", "")
        hint = "call model.double() for float64" if x.dtype == torch.float64 else f"cast x to {want}"
        raise ValueError(f"{owner}.x: expected {want} input for a {want} model, got {got}; {hint}")
    if (x.is_floating_point() or x.is_complex()) and not _in_functorch_transform(x):
        if not bool(torch.isfinite(x).all()):
            row = int((~torch.isfinite(x)).reshape(x.shape[0], -1).any(dim=1).nonzero()[0, 0])
            raise ValueError(f"{owner}.x: expected finite values, got nan/inf at batch row {row}")


def _in_functorch_transform(x: torch.Tensor) -> bool:
    """Whether ``x`` is wrapped by a ``torch.func`` transform (``vmap``, ``grad``)."""
    functorch = getattr(torch._C, "_functorch", None)
    wrapped = getattr(functorch, "is_functorch_wrapped_tensor", None)
    return bool(wrapped is not None and wrapped(x))
