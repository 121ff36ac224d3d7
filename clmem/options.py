"""Typed option declarations shared by the benchmark, model and strategy registries.

Every registry entry declares its options as ``{name: Opt(...)}``; experiment files are checked
against these declarations before anything runs (see :mod:`clmem.config`).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

#: Names that reach file paths, Ray trial directories and MLflow (experiment names): letters,
#: digits, ``.``, ``_`` and ``-``, at most 100 characters, not starting with a dot.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")
NAME_EXPECTED = "a non-empty string of at most 100 of A-Z a-z 0-9 . _ -, not starting with '.'"


class ConfigError(ValueError):
    """A one-line configuration error naming the file, the key path and what was expected."""

    def __init__(self, path: str, message: str, file: str | None = None):
        self.path, self.message, self.file = path, message, file
        super().__init__(str(self))

    def __str__(self) -> str:
        prefix = f"{self.file}: " if self.file else ""
        where = f"{self.path}: " if self.path else ""
        return f"{prefix}{where}{self.message}"

    def in_file(self, file: str) -> "ConfigError":
        return ConfigError(self.path, self.message, file)


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


@dataclass(frozen=True)
class Opt:
    """One option: its type, default, and optional bounds or choices."""

    type: type
    default: Any = None
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    help: str = ""
    nullable: bool = False
    #: also accept a non-empty list of values of ``type`` (in Python calls; in experiment files a list
    #: is a grid axis, so a list value there is written as a list of lists)
    allow_list: bool = False

    def expected(self) -> str:
        if self.choices:
            return "one of: " + ", ".join(repr(c) for c in self.choices)
        text = _TYPE_NAMES.get(self.type, self.type.__name__)
        if self.min is not None and self.max is not None:
            text += f" in [{self.min}, {self.max}]"
        elif self.min is not None:
            text += f" >= {self.min}"
        elif self.max is not None:
            text += f" <= {self.max}"
        text += " (or a list of them)" if self.allow_list else ""
        return text + (" or null" if self.nullable else "")

    def check(self, path: str, value: Any) -> Any:
        """Return ``value`` converted to this option's type, or raise :class:`ConfigError`."""
        if value is None and self.nullable:
            return None
        if self.allow_list and isinstance(value, (list, tuple)):
            if not value:
                raise ConfigError(path, f"expected {self.expected()}, got an empty list")
            return [Opt(self.type, choices=self.choices, min=self.min, max=self.max).check(path, v) for v in value]
        if not self._type_ok(value):
            raise ConfigError(path, f"expected {self.expected()}, got {shown(value)}")
        if self.type is float:
            value = _to_float(path, value, self)
        elif self.type is int and isinstance(value, float):
            value = int(value)  # an integral float such as 1e3 (YAML 1.2 exponent notation)
        if self.choices and value not in self.choices:
            raise ConfigError(path, f"expected {self.expected()}, got {shown(value)}")
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            raise ConfigError(path, f"expected {self.expected()}, got {shown(value)}")
        return value

    def _type_ok(self, value: Any) -> bool:
        if self.type is bool:
            return isinstance(value, bool)
        if isinstance(value, bool):
            return False
        if self.type is float:
            return isinstance(value, (int, float))
        if self.type is int and isinstance(value, float):
            return math.isfinite(value) and value.is_integer()
        return isinstance(value, self.type)


def _to_float(path: str, value: Any, opt: Opt) -> float:
    try:
        out = float(value)
    except OverflowError:  # an integer beyond float range
        out = math.inf
    if not math.isfinite(out):
        raise ConfigError(path, f"expected a finite number ({opt.expected()}), got {shown(value)}")
    return out


def check_name(path: str, value: Any) -> str:
    """``value`` when it is a safe name (see :data:`NAME_PATTERN`), else a :class:`ConfigError`."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise ConfigError(path, f"expected {NAME_EXPECTED}, got {shown(value)}")
    return value


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to about ``limit`` characters (error messages stay one short line)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10 ** limit:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def defaults(options: dict[str, Opt]) -> dict[str, Any]:
    """The default value of each option."""
    return {name: opt.default for name, opt in options.items()}


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dict → flat dict with dotted keys (MLflow params)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(flatten(value, dotted))
        else:
            flat[dotted] = value
    return flat
