"""Experiment files: loading, validation and grid expansion.

An experiment file (YAML) has the keys::

    name: quickstart                 # MLflow experiment name (required)
    description: ...                 # optional
    benchmark: {name: split_digits, n_experiences: 5}
    model: {name: mlp, hidden_size: 128}
    strategy:
      name: [naive, replay, ewc]     # a list anywhere a value is allowed is a grid axis
      train_epochs: 5
      lr: 0.05
      replay: {mem_size: [100, 200]} # options for one strategy only (also for benchmark/model)
    seeds: [0, 1, 2]
    resources: {cpu: 1, gpu: 0}      # per trial; gpu may be a fraction
    tracking_uri: sqlite:///mlflow.db
    max_failures: 0                  # Ray Tune retries of a failed trial

A section's flat options must be valid for every name it lists; options for one name go in a
block keyed by that name. Errors are :class:`ConfigError` s naming file, key path and expectation.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
from pathlib import Path
from typing import Any

import yaml

from clmem.registries import BENCHMARKS, MODELS, STRATEGIES, TRAINING_OPTIONS
from clmem.compat import check_pair
from clmem.options import ConfigError, Opt, check_name, defaults, shown
from clmem.registry import Registry

TOP_LEVEL = ("name", "description", "benchmark", "model", "strategy", "seeds", "resources",
             "tracking_uri", "max_failures")
REQUIRED = ("name", "benchmark", "model", "strategy")
#: per trial; a trial runs on one device, so ``gpu`` is a fraction of one GPU or 1
RESOURCES = {"cpu": Opt(float, 1.0, min=0.0), "gpu": Opt(float, 0.0, min=0.0)}
SEED = Opt(int, min=0, max=2 ** 32 - 1)
SECTIONS: dict[str, tuple[Registry, dict[str, Opt]]] = {
    "benchmark": (BENCHMARKS, {}),
    "model": (MODELS, {}),
    "strategy": (STRATEGIES, TRAINING_OPTIONS),
}


MAX_FILE_BYTES = 1_000_000
MAX_DEPTH = 20          # experiment files nest 5 levels at most (strategy.replay.mem_size: [[...]])
MAX_VALUES = 100_000    # values in the parsed file, aliases expanded
MAX_STRING = 1_000      # characters of one string value (MLflow params, tags and paths stay short)
MAX_TRIALS = 10_000
_FLOAT_12 = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


class _Loader(yaml.SafeLoader):
    """PyYAML's SafeLoader that refuses duplicate keys and deep nesting (a :class:`ConfigError`
    naming the key path) and reads YAML 1.2 exponents without a dot or sign (``1e-3``, ``1e309``) as
    numbers rather than strings."""

    def __init__(self, stream):
        super().__init__(stream)
        self._path: list[str] = []

    def _where(self) -> str:
        return "".join(p if p.startswith("[") or not i else f".{p}" for i, p in enumerate(self._path))

    def compose_node(self, parent, index):
        label = f"[{index}]" if isinstance(index, int) else (
            str(index.value) if isinstance(index, yaml.ScalarNode) else None)  # None: the root or a key
        if label is not None:
            self._path.append(label)
        if len(self._path) > MAX_DEPTH:
            line = self.peek_event().start_mark.line + 1
            raise ConfigError(self._where(), f"line {line}: nested deeper than {MAX_DEPTH} levels "
                                             f"(expected at most {MAX_DEPTH})")
        try:
            return super().compose_node(parent, index)
        finally:
            if label is not None:
                self._path.pop()

    def compose_mapping_node(self, anchor):
        node = super().compose_mapping_node(anchor)
        seen: dict = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            line = key.start_mark.line + 1
            if (key.tag, key.value) in seen:
                self._path.append(str(key.value))
                raise ConfigError(self._where(), f"duplicate key (lines {seen[(key.tag, key.value)]} and "
                                                 f"{line}; expected each key once per mapping)")
            seen[(key.tag, key.value)] = line
        return node


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))


def _read_text(p: Path, shown: str) -> str:
    if p.stat().st_size > MAX_FILE_BYTES:
        raise ConfigError("", f"file of {p.stat().st_size} bytes (expected at most {MAX_FILE_BYTES})", shown)
    data = p.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError("", f"byte {err.start} (0x{data[err.start]:02x}) is not UTF-8 "
                              f"(expected a UTF-8 text file)", shown) from None


def load_file(path: str | Path) -> dict:
    """Read and parse an experiment file; any problem is a one-line :class:`ConfigError`."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("", "file not found (expected a YAML experiment file)", str(path))
    text = _read_text(p, str(path))
    try:
        raw = yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except ConfigError as err:
        raise err.in_file(str(path)) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError("", f"{where}invalid YAML ({problem})", str(path)) from None
    except (RecursionError, ValueError, OverflowError) as err:  # e.g. an integer of 5,000 digits
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise ConfigError("", f"cannot read the YAML ({type(err).__name__}: {first[:120]})", str(path)) from None
    if not isinstance(raw, dict):
        raise ConfigError("", f"expected a mapping of keys at the top, got {type(raw).__name__}", str(path))
    try:
        _check_values(raw)
    except ConfigError as err:
        raise err.in_file(str(path)) from None
    return raw


def _check_values(raw: Any) -> None:
    """Every value of a parsed file: finite numbers, short strings, at most :data:`MAX_VALUES` of them
    (aliases make a small file large). Iterative: any depth, no recursion."""
    stack, count = [("", raw)], 0
    while stack:
        path, value = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise ConfigError(path, f"more than {MAX_VALUES} values (expected a small file; aliases expand)")
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and len(key) > 100:
                    raise ConfigError(path, f"key {shown(key)} (expected keys of at most 100 characters)")
                stack.append((f"{path}.{key}" if path else str(key), item))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item) for i, item in enumerate(value))
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(path, f"expected a finite number, got {value!r}")
        elif isinstance(value, str) and len(value) > MAX_STRING:
            raise ConfigError(path, f"string of {len(value)} characters (expected at most {MAX_STRING})")
        elif not isinstance(value, (str, int, float, bool, type(None))):
            raise ConfigError(path, f"expected a number, string, boolean, list or mapping, "
                                    f"got {type(value).__name__} {shown(value)}")


def load_experiment(path: str | Path) -> "Experiment":
    """Load, validate and expand an experiment file."""
    raw = load_file(path)
    try:
        return Experiment.from_dict(raw, source=str(path))
    except ConfigError as err:
        raise err.in_file(str(path)) from None


def _is_axis(value: Any) -> bool:
    return isinstance(value, list)


def _values(path: str, value: Any) -> list:
    if _is_axis(value):
        if not value:
            raise ConfigError(path, "empty grid axis (expected a value or a non-empty list)")
        return value
    return [value]


def _check_keys(raw: dict, allowed, path: str) -> None:
    for key in raw:
        if key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(where, f"unknown key (expected one of: {', '.join(allowed)})")


def _check_mapping(value: Any, path: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(path, f"expected a mapping, got {value!r}")
    return value


def _check_section(kind: str, raw: Any) -> None:
    """Validate a section before expansion: names, keys and each option value (all axis values)."""
    registry, shared = SECTIONS[kind]
    raw = _check_mapping(raw, kind)
    if "name" not in raw:
        raise ConfigError(f"{kind}.name", f"missing (expected one of: {', '.join(registry.names())})")
    names = _values(f"{kind}.name", raw["name"])
    for name in names:
        if not isinstance(name, str):
            raise ConfigError(f"{kind}.name", f"expected a string, got {name!r}")
        registry.get(name, f"{kind}.name")
    for key, value in raw.items():
        if key == "name":
            continue
        if key in registry:
            if key not in names:
                raise ConfigError(f"{kind}.{key}", f"options for {kind} {key!r}, which is not in {kind}.name "
                                                   f"(expected a block for one of: {', '.join(map(str, names))})")
            block = _check_mapping(value, f"{kind}.{key}")
            for opt, val in block.items():
                _check_option(kind, key, f"{kind}.{key}.{opt}", opt, val, shared)
            continue
        for name in names:
            _check_option(kind, name, f"{kind}.{key}", key, value, shared)


def _check_option(kind, name, path, key, value, shared) -> None:
    registry, _ = SECTIONS[kind]
    declared = {**shared, **registry.get(name).options}
    if key not in declared:
        valid = ", ".join(sorted(declared)) or "none"
        raise ConfigError(path, f"unknown option of {kind} {name!r} (expected one of: {valid})")
    for v in _values(path, value):
        declared[key].check(path, v)


def _axes(raw: Any, path: str = "") -> list[tuple[str, list]]:
    """All grid axes (dotted path, values) in ``raw``, in file order."""
    found: list[tuple[str, list]] = []
    if isinstance(raw, dict):
        for key, value in raw.items():
            found += _axes(value, f"{path}.{key}" if path else str(key))
    elif _is_axis(raw):
        found.append((path, raw))
    return found


def _axis_params(raw: dict) -> list[str]:
    """Grid axes of the file as resolved param keys (``strategy.replay.mem_size`` → ``strategy.mem_size``)."""
    out: list[str] = []
    for path, _ in _axes({k: raw[k] for k in SECTIONS}):
        parts = path.split(".")
        if len(parts) == 3 and parts[1] in SECTIONS[parts[0]][0]:
            parts = [parts[0], parts[2]]
        key = ".".join(parts)
        if key not in out:
            out.append(key)
    return out


def _set(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for key in keys[:-1]:
        tree = tree[key]
    tree[keys[-1]] = value


def _resolve_section(kind: str, raw: dict) -> dict:
    """One concrete section: defaults of the chosen name, then flat options, then its block."""
    registry, shared = SECTIONS[kind]
    name = raw["name"]
    out = {"name": name, **defaults(shared), **defaults(registry.get(name).options)}
    for key, value in raw.items():
        if key != "name" and key not in registry:
            out[key] = value
    out.update(raw.get(name, {}))
    declared = {**shared, **registry.get(name).options}
    return {k: (declared[k].check(f"{kind}.{k}", v) if k in declared else v) for k, v in out.items()}


def _check_seed(seed: Any) -> int:
    try:
        return SEED.check("seeds", seed)
    except ConfigError:
        raise ConfigError("seeds", f"expected an integer >= 0 and <= 4294967295 (2**32 - 1), "
                                   f"got {shown(seed)}") from None


def _check_resource(key: str, value: Any) -> float:
    """A per-trial Ray resource request: CPUs > 0; GPUs in [0, 1] (a trial uses one device)."""
    value = RESOURCES[key].check(f"resources.{key}", value)
    if key == "gpu" and value > 1:
        raise ConfigError("resources.gpu", f"expected a number in [0, 1] (a trial runs on one device: a fraction "
                                           f"of one GPU, or 1), got {shown(value)}")
    if key == "cpu" and value <= 0:
        raise ConfigError("resources.cpu", f"expected a number > 0 (CPUs per trial), got {shown(value)}")
    return value


def trial_key(trial: dict) -> str:
    """A stable short id of a resolved trial (same config → same key), used to find it again."""
    body = {k: v for k, v in trial.items() if k not in ("index", "key")}
    return hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]


class Experiment:
    """A validated experiment: its raw mapping and the resolved trials of its grid."""

    def __init__(self, raw: dict, trials: list[dict], axes: list[str], source: str | None):
        self.raw, self.trials, self.axes, self.source = raw, trials, axes, source
        #: set by the CLI's machine check: trials ask for a GPU where there is none (they run on the CPU)
        self.gpu_fallback = False

    @property
    def name(self) -> str:
        return self.raw["name"]

    @property
    def tracking_uri(self) -> str | None:
        return self.raw.get("tracking_uri")

    @property
    def max_failures(self) -> int:
        return self.raw.get("max_failures", 0)

    @classmethod
    def from_dict(cls, raw: dict, source: str | None = None) -> "Experiment":
        raw = copy.deepcopy(raw)
        cls._check_top(raw)
        raw.setdefault("seeds", [0])
        raw.setdefault("resources", {})
        trials = cls._expand(raw)
        return cls(raw, trials, _axis_params(raw), source)

    @staticmethod
    def _check_top(raw: dict) -> None:
        _check_keys(raw, TOP_LEVEL, "")
        for key in REQUIRED:
            if key not in raw:
                raise ConfigError(key, "missing required key")
        check_name("name", raw["name"])
        for kind in SECTIONS:
            _check_section(kind, raw[kind])
        if "seeds" in raw:
            seeds = [_check_seed(seed) for seed in _values("seeds", raw["seeds"])]
            raw["seeds"] = seeds if _is_axis(raw["seeds"]) else seeds[0]
        resources = _check_mapping(raw.get("resources", {}), "resources")
        _check_keys(resources, tuple(RESOURCES), "resources")
        for key, value in resources.items():
            _check_resource(key, value)
        for key, opt in (("description", Opt(str)), ("max_failures", Opt(int, min=0, max=100))):
            if key in raw:
                opt.check(key, raw[key])
        if "tracking_uri" in raw:
            from clmem.tracking import check_tracking_uri

            check_tracking_uri(Opt(str).check("tracking_uri", raw["tracking_uri"]), "tracking_uri")

    @staticmethod
    def _expand(raw: dict) -> list[dict]:
        axes = _axes({k: raw[k] for k in SECTIONS})
        size = math.prod(len(values) for _, values in axes) * len(_values("seeds", raw["seeds"]))
        if size > MAX_TRIALS:
            raise ConfigError(axes[0][0] if axes else "seeds", f"a grid of {size} combinations "
                                                               f"(expected at most {MAX_TRIALS} trials)")
        trials, seen = [], set()
        for combo in itertools.product(*[values for _, values in axes]):
            tree = copy.deepcopy({k: raw[k] for k in SECTIONS})
            for (path, _), value in zip(axes, combo):
                _set(tree, path, value)
            resolved = {kind: _resolve_section(kind, tree[kind]) for kind in SECTIONS}
            check_pair(resolved)
            for seed in _values("seeds", raw["seeds"]):
                trial = {"seed": seed, **resolved,
                         "resources": {**defaults(RESOURCES), **raw["resources"]}}
                key = trial_key(trial)
                if key not in seen:
                    seen.add(key)
                    trials.append({**trial, "index": len(trials), "key": key})
        return trials
