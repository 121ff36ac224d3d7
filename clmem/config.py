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
from pathlib import Path
from typing import Any

import yaml

from clmem.catalog import BENCHMARKS, MODELS, STRATEGIES, TRAINING_OPTIONS
from clmem.options import ConfigError, Opt, defaults
from clmem.registry import Registry

TOP_LEVEL = ("name", "description", "benchmark", "model", "strategy", "seeds", "resources",
             "tracking_uri", "max_failures")
REQUIRED = ("name", "benchmark", "model", "strategy")
RESOURCES = {"cpu": Opt(float, 1.0, min=0.0), "gpu": Opt(float, 0.0, min=0.0)}
SECTIONS: dict[str, tuple[Registry, dict[str, Opt]]] = {
    "benchmark": (BENCHMARKS, {}),
    "model": (MODELS, {}),
    "strategy": (STRATEGIES, TRAINING_OPTIONS),
}


def load_file(path: str | Path) -> dict:
    """Read and parse an experiment file; any problem is a one-line :class:`ConfigError`."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("", "file not found (expected a YAML experiment file)", str(path))
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError("", f"{where}invalid YAML ({problem})", str(path)) from None
    if not isinstance(raw, dict):
        raise ConfigError("", f"expected a mapping of keys at the top, got {type(raw).__name__}", str(path))
    return raw


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


def trial_key(trial: dict) -> str:
    """A stable short id of a resolved trial (same config → same key), used to find it again."""
    body = {k: v for k, v in trial.items() if k not in ("index", "key")}
    return hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]


class Experiment:
    """A validated experiment: its raw mapping and the resolved trials of its grid."""

    def __init__(self, raw: dict, trials: list[dict], axes: list[str], source: str | None):
        self.raw, self.trials, self.axes, self.source = raw, trials, axes, source

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
        if not isinstance(raw["name"], str) or not raw["name"].strip():
            raise ConfigError("name", f"expected a non-empty string, got {raw['name']!r}")
        for kind in SECTIONS:
            _check_section(kind, raw[kind])
        for seed in _values("seeds", raw.get("seeds", [0])):
            Opt(int, min=0).check("seeds", seed)
        resources = _check_mapping(raw.get("resources", {}), "resources")
        _check_keys(resources, tuple(RESOURCES), "resources")
        for key, value in resources.items():
            RESOURCES[key].check(f"resources.{key}", value)
        for key, opt in (("tracking_uri", Opt(str)), ("description", Opt(str)),
                         ("max_failures", Opt(int, min=0))):
            if key in raw:
                opt.check(key, raw[key])

    @staticmethod
    def _expand(raw: dict) -> list[dict]:
        axes = _axes({k: raw[k] for k in SECTIONS})
        trials, seen = [], set()
        for combo in itertools.product(*[values for _, values in axes]):
            tree = copy.deepcopy({k: raw[k] for k in SECTIONS})
            for (path, _), value in zip(axes, combo):
                _set(tree, path, value)
            resolved = {kind: _resolve_section(kind, tree[kind]) for kind in SECTIONS}
            for seed in _values("seeds", raw["seeds"]):
                trial = {"seed": seed, **resolved,
                         "resources": {**defaults(RESOURCES), **raw["resources"]}}
                key = trial_key(trial)
                if key not in seen:
                    seen.add(key)
                    trials.append({**trial, "index": len(trials), "key": key})
        return trials
