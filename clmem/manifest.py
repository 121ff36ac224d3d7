"""A cached snapshot of the registries' declarations, so ``clmem validate`` and ``clmem list`` need neither
torch nor Avalanche.

:func:`snapshot` records every entry's name, description, options and meta. Meta values that are plain data
are kept as they are; classes and module-level functions are kept as :class:`Ref` (imported only when called:
a model's ``config`` class is imported to check cross-option constraints, which costs torch but not
Avalanche); an entry holding anything else (a lambda, an instance) is marked opaque, and looking it up loads
the real registries. The snapshot is cached under ``$CLMEM_CACHE_DIR`` (default ``~/.cache/clmem``) in a file
keyed by a hash of every source file of ``clmem`` and ``strategies`` and the Python version, so a changed
source can never be answered from a stale snapshot. ``CLMEM_NO_MANIFEST=1`` turns the cache off.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from clmem.options import Opt
from clmem.registries import ALL
from clmem.registry import Entry, Registry

__all__ = ["Ref", "cache_file", "snapshot", "source_key", "use"]

FORMAT = 1
_PACKAGES = ("clmem", "strategies")
_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


class Ref:
    """A class or function named ``module:qualname``, imported when first called or resolved."""

    def __init__(self, path: str):
        self.path = path

    def resolve(self) -> Any:
        module, _, qualname = self.path.partition(":")
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        return obj

    def __call__(self, *args, **kwargs):
        return self.resolve()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Ref({self.path!r})"


class _Built:
    """``factory(*args)`` of a :class:`Ref` factory, built when first called (then called with the call's args)."""

    def __init__(self, factory: str, args: tuple):
        self.factory, self.args = factory, tuple(args)

    def __call__(self, *args, **kwargs):
        return Ref(self.factory).resolve()(*self.args)(*args, **kwargs)


class _Opaque(Exception):
    pass


def source_key(root: Path | None = None) -> str:
    """sha256 over the Python version and every ``.py`` file (path and bytes) of clmem and strategies under
    ``root`` (default: where this package lives)."""
    digest = hashlib.sha256(f"{FORMAT}|{sys.version}".encode())
    root = Path(root) if root is not None else Path(__file__).resolve().parent.parent
    for package in _PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def cache_file(key: str) -> Path:
    base = os.environ.get("CLMEM_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "clmem"
    return Path(base) / f"manifest-{key[:24]}.json"


# ----------------------------------------------------------------------------------------- encoding
def _ref_path(value: Any) -> str:
    module, qualname = getattr(value, "__module__", None), getattr(value, "__qualname__", "")
    if not module or not qualname or "<" in qualname or module == "__main__":
        raise _Opaque
    if Ref(f"{module}:{qualname}").resolve() is not value:
        raise _Opaque
    return f"{module}:{qualname}"


def _encode(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return {"tuple" if isinstance(value, tuple) else "list": [_encode(v) for v in value]}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"dict": {k: _encode(v) for k, v in value.items()}}
    if hasattr(value, "manifest_spec"):  # an instance that says how to rebuild it: (factory, args)
        factory, args = value.manifest_spec()
        return {"call": {"ref": factory, "args": _encode(tuple(args))}}
    if isinstance(value, type) or callable(value):
        return {"ref": _ref_path(value)}
    raise _Opaque


def _decode(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    (tag, body), = value.items()
    if tag == "ref":
        return Ref(body)
    if tag == "call":
        return _Built(body["ref"], _decode(body["args"]))
    if tag == "dict":
        return {k: _decode(v) for k, v in body.items()}
    items = [_decode(v) for v in body]
    return tuple(items) if tag == "tuple" else items


def _encode_opt(opt: Opt) -> dict:
    if opt.type not in _TYPES.values():
        raise _Opaque
    return {"type": opt.type.__name__, "default": _encode(opt.default), "choices": _encode(opt.choices),
            "min": opt.min, "max": opt.max, "help": opt.help, "nullable": opt.nullable, "allow_list": opt.allow_list}


def _decode_opt(data: dict) -> Opt:
    return Opt(_TYPES[data["type"]], _decode(data["default"]), _decode(data["choices"]), data["min"], data["max"],
               data["help"], data["nullable"], data["allow_list"])


def _encode_entry(entry: Entry, legacy: frozenset = frozenset()) -> dict:
    out = {"name": entry.name, "description": entry.description,
           "options": {k: _encode_opt(o) for k, o in entry.options.items()}}
    meta = dict(entry.meta)
    if isinstance(meta.get("config"), type):  # compat builds a config class with unit sizes
        meta.setdefault("config_sizes", {"input_size": 1, "output_size": 1})
    try:
        out["meta"] = {k: _encode(v) for k, v in meta.items()}
    except _Opaque:
        out["meta"], out["opaque"] = {}, True
    if entry.name in legacy:  # a check registered outside the entry's meta: only the real entry knows it
        out["opaque"] = True
    return out


def _decode_entry(registry: Registry, data: dict) -> Entry:
    name = data["name"]

    def build(*args, **kwargs):
        return registry.load_real().get(name).builder(*args, **kwargs)

    build.__name__ = f"deferred_{name}"
    return Entry(name, build, {k: _decode_opt(o) for k, o in data["options"].items()}, data["description"],
                 {k: _decode(v) for k, v in data["meta"].items()}, bool(data.get("opaque", False)))


# ----------------------------------------------------------------------------------------- cache
def snapshot() -> dict:
    """The real registries' declarations (imports every registering module)."""
    out: dict[str, Any] = {"format": FORMAT, "registries": {}}
    for registry in ALL:
        registry.load_real()
    from clmem.datafiles import PREFLIGHT  # benchmarks whose data check is not in their meta

    for registry in ALL:
        legacy = frozenset(PREFLIGHT) if registry.kind == "benchmark" else frozenset()
        out["registries"][registry.kind] = {
            "shared": {k: _encode_opt(o) for k, o in registry.shared.items()},
            "entries": [_encode_entry(registry.get(n), legacy) for n in registry.names()],
        }
    return out


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(data, dict) and data.get("format") == FORMAT and set(data.get("registries", {})) == {
        r.kind for r in ALL}
    return data if ok else None


def _write(path: Path, data: dict) -> None:
    """Atomic write; a cache that cannot be written only costs speed next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".manifest-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
        os.replace(tmp, path)
        for old in path.parent.glob("manifest-*.json"):
            if old != path:
                old.unlink(missing_ok=True)
    except OSError:
        pass


def use() -> bool:
    """Fill the registries from the cached snapshot (True), or load them for real and cache one (False)."""
    if os.environ.get("CLMEM_NO_MANIFEST") == "1":
        return False
    path = cache_file(source_key())
    data = _read(path)
    if data is None:
        _write(path, snapshot())
        return False
    try:
        decoded = {r.kind: [_decode_entry(r, e) for e in data["registries"][r.kind]["entries"]] for r in ALL}
        shared = {r.kind: {k: _decode_opt(o) for k, o in data["registries"][r.kind]["shared"].items()} for r in ALL}
    except (KeyError, TypeError, ValueError):
        _write(path, snapshot())
        return False
    for registry in ALL:
        if shared[registry.kind] != registry.shared or not registry.populate(decoded[registry.kind]):
            for r in ALL:
                r.load_real()
            return False
    return True
