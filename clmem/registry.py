"""A name → (builder, declared options) registry, one per kind (benchmark, model, strategy).

A registry lists the modules that register into it (``extensions``) and imports them the first time
it is looked up (``get``, ``names``, ``in``), so every benchmark, model and strategy clmem ships is
known whichever module a user imported first, with no import cycle between the defining modules.
Entries may carry metadata (``meta``): a benchmark's stream ``kind``, the stream kinds a model
``accepts``, a strategy's ``template`` class and ``refuses`` rule (see :mod:`clmem.compat`).

A registry can also be filled from a *manifest* (:mod:`clmem.manifest`): a snapshot of its declarations
(names, options, serialisable meta) that lets ``clmem validate`` / ``clmem list`` answer without
importing torch or Avalanche. Such entries are *deferred*: calling one's builder, looking up an entry whose
meta could not be snapshotted, or importing any registering module replaces them with the real ones.
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
    #: True for a manifest entry whose meta holds something the snapshot could not keep
    opaque: bool = False


class Registry:
    """Named builders with their options; later packages join by calling :meth:`register`."""

    def __init__(self, kind: str, extensions: tuple[str, ...] = (), shared: dict[str, Opt] | None = None):
        self.kind = kind
        self.extensions = tuple(extensions)
        #: options every entry of this registry takes besides its own (strategies: the training loop's)
        self.shared: dict[str, Opt] = dict(shared or {})
        self._entries: dict[str, Entry] = {}
        self._imported = 0          # extensions[:_imported] have been imported
        self._loading = False
        self._deferred = False      # entries come from a manifest

    def extend(self, extensions: tuple[str, ...]) -> "Registry":
        """Add modules that register into this registry (imported on first lookup); returns ``self``."""
        self.extensions += tuple(m for m in extensions if m not in self.extensions)
        return self

    def load(self) -> "Registry":
        """Import every extension module once (they register their entries when imported)."""
        if self._deferred or self._loading:
            return self
        self._loading = True
        try:
            while self._imported < len(self.extensions):
                module = self.extensions[self._imported]
                self._imported += 1
                importlib.import_module(module)
        finally:
            self._loading = False
        return self

    def load_real(self) -> "Registry":
        """Replace manifest entries by the real ones (imports every extension module)."""
        if self._deferred:
            self._entries.clear()
            self._deferred = False
        return self.load()

    def populate(self, entries: list[Entry]) -> bool:
        """Fill this registry from manifest entries; only while nothing is registered or imported."""
        if self._entries or self._imported or self._loading:
            return False
        self._entries = {e.name: e for e in entries}
        self._deferred = True
        return True

    def register(self, name: str, options: dict[str, Opt] | None = None, description: str = "", **meta):
        """Decorator registering ``builder`` under ``name`` with its declared ``options`` and ``meta``."""

        def decorate(builder: Callable[..., Any]) -> Callable[..., Any]:
            if self._deferred:  # a registering module was imported: the real entries take over
                self._entries.clear()
                self._deferred = False
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
        return iter([self.get(n) for n in self.names()])

    def get(self, name: str, path: str | None = None) -> Entry:
        """The entry called ``name``; an unknown name raises a :class:`ConfigError` listing all."""
        self.load()
        if self._deferred and getattr(self._entries.get(name), "opaque", False):
            self.load_real()
        if name not in self._entries:
            raise ConfigError(
                path or f"{self.kind}.name",
                f"unknown {self.kind} {name!r} (expected one of: {', '.join(self.names())})",
            )
        return self._entries[name]
