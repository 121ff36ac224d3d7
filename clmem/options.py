"""Typed option declarations shared by the benchmark, model and strategy registries.

Every registry entry declares its options as ``{name: Opt(...)}``; experiment files are checked
against these declarations before anything runs (see :mod:`clmem.config`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
        return text + (" or null" if self.nullable else "")

    def check(self, path: str, value: Any) -> Any:
        """Return ``value`` converted to this option's type, or raise :class:`ConfigError`."""
        if value is None and self.nullable:
            return None
        if not self._type_ok(value):
            raise ConfigError(path, f"expected {self.expected()}, got {value!r}")
        if self.type is float:
            value = float(value)
        if self.choices and value not in self.choices:
            raise ConfigError(path, f"expected {self.expected()}, got {value!r}")
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            raise ConfigError(path, f"expected {self.expected()}, got {value!r}")
        return value

    def _type_ok(self, value: Any) -> bool:
        if self.type is bool:
            return isinstance(value, bool)
        if isinstance(value, bool):
            return False
        if self.type is float:
            return isinstance(value, (int, float))
        return isinstance(value, self.type)


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
