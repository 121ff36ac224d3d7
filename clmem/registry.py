"""A name → (builder, declared options) registry, one per kind (benchmark, model, strategy)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from clmem.options import ConfigError, Opt


@dataclass(frozen=True)
class Entry:
    name: str
    builder: Callable[..., Any]
    options: dict[str, Opt] = field(default_factory=dict)
    description: str = ""


class Registry:
    """Named builders with their options; later packages join by calling :meth:`register`."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, options: dict[str, Opt] | None = None, description: str = ""):
        """Decorator registering ``builder`` under ``name`` with its declared ``options``."""

        def decorate(builder: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = Entry(name, builder, dict(options or {}), description)
            return builder

        return decorate

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str, path: str | None = None) -> Entry:
        """The entry called ``name``; an unknown name raises a :class:`ConfigError` listing all."""
        if name not in self._entries:
            raise ConfigError(
                path or f"{self.kind}.name",
                f"unknown {self.kind} {name!r} (expected one of: {', '.join(self.names())})",
            )
        return self._entries[name]
