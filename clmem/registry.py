"""A name → (builder, declared options) registry, one per kind (benchmark, model, strategy).

A registry lists the modules that register into it (``extensions``) and imports them the first time
it is looked up (``get``, ``names``, ``in``), so every benchmark, model and strategy clmem ships is
known whichever module a user imported first, with no import cycle between the defining modules.
Entries may carry metadata (``meta``): a benchmark's stream ``kind``, the stream kinds a model
``accepts``, a strategy's ``template`` class and ``refuses`` rule (see :mod:`clmem.compat`).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from clmem.options import ConfigError, Opt


@dataclass(frozen=True)
class Entry:
    name: str
    builder: Callable[..., Any]
    options: dict[str, Opt] = field(default_factory=dict)
    description: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


class Registry:
    """Named builders with their options; later packages join by calling :meth:`register`."""

    def __init__(self, kind: str, extensions: tuple[str, ...] = ()):
        self.kind = kind
        self.extensions = tuple(extensions)
        self._entries: dict[str, Entry] = {}
        self._loaded = False

    def load(self) -> "Registry":
        """Import every extension module once (they register their entries when imported)."""
        if not self._loaded:
            self._loaded = True
            for module in self.extensions:
                importlib.import_module(module)
        return self

    def register(self, name: str, options: dict[str, Opt] | None = None, description: str = "", **meta):
        """Decorator registering ``builder`` under ``name`` with its declared ``options`` and ``meta``."""

        def decorate(builder: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = Entry(name, builder, dict(options or {}), description, dict(meta))
            return builder

        return decorate

    def names(self) -> list[str]:
        self.load()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self.load()
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter([self._entries[n] for n in self.names()])

    def get(self, name: str, path: str | None = None) -> Entry:
        """The entry called ``name``; an unknown name raises a :class:`ConfigError` listing all."""
        self.load()
        if name not in self._entries:
            raise ConfigError(
                path or f"{self.kind}.name",
                f"unknown {self.kind} {name!r} (expected one of: {', '.join(self.names())})",
            )
        return self._entries[name]
