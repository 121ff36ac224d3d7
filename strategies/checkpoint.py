"""Checkpointing an Avalanche strategy through ``state_dict``s, never by pickling the strategy.

A strategy is *resumable* from the end of an experience when its whole state lives in its model,
its optimizer, Avalanche's clock and plugins that implement ``state_dict``/``load_state_dict``
(all of clmem's plugins do). Avalanche's built-in strategies other than ``Naive`` keep state that
has no ``state_dict`` (replay buffers as datasets, EWC importances, a frozen LwF model, …); for
them :func:`resumability` says why not, and a retried trial restarts from its first experience.

On disk (:func:`write_checkpoint`) a checkpoint is ``state.pt`` holding tensors and plain data only,
``state.pt.sha256`` (its hash and size) and ``meta.json``; :func:`read_checkpoint` verifies both and
loads with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import glob
import hashlib
import json
from pathlib import Path
from typing import Any

#: Plugins that hold no training state worth restoring by state_dict (the evaluator's forgetting/BWT history is
#: saved by :func:`evaluator_state`; clmem's own metrics come from R, which is checkpointed; PeriodicEval holds
#: only its settings).
STATELESS_PLUGINS = {"EvaluationPlugin", "PeriodicEval"}
#: Strategy classes whose state is entirely model + optimizer + plugins.
PLAIN_STRATEGIES = {"Naive"}
_CLOCK_FIELDS = ("train_iterations", "train_exp_counter", "train_exp_epochs",
                 "train_exp_iterations", "train_epoch_iterations", "total_iterations")


def _stateful_plugins(strategy) -> list:
    return [p for p in strategy.plugins
            if type(p).__name__ not in STATELESS_PLUGINS and type(p).__name__ != "Clock"]


def resumability(strategy) -> tuple[bool, str]:
    """(True, "") when :func:`strategy_state` captures all of ``strategy``'s state, else (False, why)."""
    name = type(strategy).__name__
    if name not in PLAIN_STRATEGIES and not getattr(strategy, "clmem_resumable", False):
        return False, f"strategy class {name} keeps state without a state_dict"
    for plugin in _stateful_plugins(strategy):
        if not (hasattr(plugin, "state_dict") and hasattr(plugin, "load_state_dict")):
            return False, f"plugin {type(plugin).__name__} has no state_dict/load_state_dict"
    return True, ""


def _clock(strategy):
    return next((p for p in strategy.plugins if type(p).__name__ == "Clock"), None)


def strategy_state(strategy) -> dict[str, Any]:
    """Model, optimizer, clock and plugin states of a resumable strategy (tensors and plain data)."""
    clock = _clock(strategy)
    return {
        "model": strategy.model.state_dict(),
        "optimizer": strategy.optimizer.state_dict(),
        "clock": {f: getattr(clock, f) for f in _CLOCK_FIELDS if clock is not None and hasattr(clock, f)},
        "plugins": [p.state_dict() for p in _stateful_plugins(strategy)],
        "evaluator": evaluator_state(strategy),
    }


def _history_metrics(strategy) -> list:
    """The evaluator's metrics that remember earlier evaluations: Avalanche's forgetting and BWT metrics
    (each holds a ``forgetting`` with the ``initial`` and ``last`` value per experience)."""
    evaluator = getattr(strategy, "evaluator", None)
    found = []
    for metric in getattr(evaluator, "metrics", []) or []:
        history = getattr(metric, "forgetting", None)
        if isinstance(getattr(history, "initial", None), dict) and isinstance(getattr(history, "last", None), dict):
            found.append(metric)
    return found


def evaluator_state(strategy) -> list[dict]:
    """Per history metric (in evaluator order): its class and ``initial``/``last`` values per experience, so
    Avalanche's first-vs-last forgetting and BWT of a resumed trial cover the experiences trained before."""
    return [{"metric": type(m).__name__,
             "initial": {int(k): float(v) for k, v in m.forgetting.initial.items()},
             "last": {int(k): float(v) for k, v in m.forgetting.last.items()}} for m in _history_metrics(strategy)]


def load_evaluator_state(strategy, state: list[dict]) -> None:
    metrics = _history_metrics(strategy)
    if [type(m).__name__ for m in metrics] != [s["metric"] for s in state]:
        raise ValueError(f"checkpoint has evaluator metrics {[s['metric'] for s in state]}, strategy has "
                         f"{[type(m).__name__ for m in metrics]}")
    for metric, saved in zip(metrics, state):
        metric.forgetting.initial = {int(k): float(v) for k, v in saved["initial"].items()}
        metric.forgetting.last = {int(k): float(v) for k, v in saved["last"].items()}


def load_strategy_state(strategy, state: dict[str, Any]) -> None:
    """Restore what :func:`strategy_state` saved into a freshly built strategy of the same config."""
    strategy.model.load_state_dict(state["model"])
    strategy.optimizer.load_state_dict(state["optimizer"])
    clock = _clock(strategy)
    for field, value in state["clock"].items():
        setattr(clock, field, value)
    plugins = _stateful_plugins(strategy)
    if len(plugins) != len(state["plugins"]):
        raise ValueError(f"checkpoint has {len(state['plugins'])} plugin states, strategy has {len(plugins)} plugins")
    for plugin, plugin_state in zip(plugins, state["plugins"]):
        plugin.load_state_dict(plugin_state)
    load_evaluator_state(strategy, state.get("evaluator", []))


# ---- checkpoint files: plain state, size + hash beside it, verified loading ----------------------
STATE_FILE, HASH_FILE, META_FILE = "state.pt", "state.pt.sha256", "meta.json"
_ARRAY = "__clmem_ndarray__"


class DamagedCheckpoint(Exception):
    """A checkpoint directory that cannot be used; the message says why in one line."""


def plain_state(value: Any, path: str = "state") -> Any:
    """``value`` as tensors and plain Python data only, what ``torch.load(weights_only=True)`` reads back.

    NumPy arrays become ``{"__clmem_ndarray__": tensor, "dtype": str}`` (see :func:`restore_state`),
    NumPy scalars Python numbers; any other object raises ``TypeError`` naming its path.
    """
    import numpy as np
    import torch

    if value is None or isinstance(value, (bool, int, float, str, bytes, torch.Tensor, torch.dtype)):
        return value
    if isinstance(value, np.ndarray):
        try:
            return {_ARRAY: torch.from_numpy(np.ascontiguousarray(value).copy()), "dtype": value.dtype.str}
        except TypeError:
            raise TypeError(f"checkpoint {path}: NumPy dtype {value.dtype} has no tensor equivalent") from None
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        items = {k: plain_state(v, f"{path}[{k!r}]") for k, v in value.items()}
        return type(value)(items) if type(value).__name__ == "OrderedDict" else items
    if isinstance(value, (list, tuple)):
        items = [plain_state(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    raise TypeError(f"checkpoint {path}: {type(value).__name__} is neither a tensor nor plain data")


def restore_state(value: Any) -> Any:
    """The inverse of :func:`plain_state` (NumPy arrays back from their tensors)."""
    if isinstance(value, dict):
        if _ARRAY in value:
            import numpy as np

            return value[_ARRAY].numpy().astype(np.dtype(value["dtype"]), copy=True)
        items = {k: restore_state(v) for k, v in value.items()}
        return type(value)(items) if type(value).__name__ == "OrderedDict" else items
    if isinstance(value, (list, tuple)):
        items = [restore_state(v) for v in value]
        return items if isinstance(value, list) else tuple(items)
    return value


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def write_checkpoint(directory: str | Path, state: dict, meta: dict) -> None:
    """Write ``state.pt`` (plain state, :func:`plain_state`), ``state.pt.sha256`` (hash and size) and
    ``meta.json`` into ``directory``."""
    import torch

    directory = Path(directory)
    torch.save(plain_state(state), directory / STATE_FILE)
    size = (directory / STATE_FILE).stat().st_size
    (directory / HASH_FILE).write_text(f"{_digest(directory / STATE_FILE)} {size}\n")
    (directory / META_FILE).write_text(json.dumps(meta))


def read_meta(directory: str | Path) -> dict:
    """``meta.json`` of a checkpoint (a dict with an integer ``experience``), or :class:`DamagedCheckpoint`."""
    path = Path(directory) / META_FILE
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DamagedCheckpoint(f"{META_FILE} unreadable ({type(err).__name__})") from None
    if not isinstance(meta, dict) or type(meta.get("experience")) is not int:
        raise DamagedCheckpoint(f"{META_FILE} has no integer 'experience'")
    return meta


def read_checkpoint(directory: str | Path) -> tuple[dict, dict]:
    """(state, meta) of a checkpoint written by :func:`write_checkpoint`, after checking size and hash;
    loaded with ``torch.load(weights_only=True)``, so a file that would run code is refused. Any
    problem raises :class:`DamagedCheckpoint`."""
    import torch

    directory = Path(directory)
    meta, state_file = read_meta(directory), directory / STATE_FILE
    try:
        expected, size = (directory / HASH_FILE).read_text().split()
        actual_size = state_file.stat().st_size
    except (OSError, ValueError) as err:
        raise DamagedCheckpoint(f"{STATE_FILE} or {HASH_FILE} missing or unreadable ({type(err).__name__})") from None
    if actual_size != int(size):
        raise DamagedCheckpoint(f"{STATE_FILE} has {actual_size} bytes, {HASH_FILE} says {size}")
    if _digest(state_file) != expected:
        raise DamagedCheckpoint(f"{STATE_FILE} does not match its sha256 in {HASH_FILE}")
    try:
        state = torch.load(state_file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 (UnpicklingError for a planted pickle, RuntimeError, EOFError...)
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()] or [""]
        first = next((ln for ln in lines if "GLOBAL" in ln or "WeightsUnpickler" in ln), lines[0])[:160]
        raise DamagedCheckpoint(f"{STATE_FILE} refused by torch.load(weights_only=True): "
                                f"{type(err).__name__}: {first}") from None
    if not isinstance(state, dict):
        raise DamagedCheckpoint(f"{STATE_FILE} holds a {type(state).__name__}, not a state dict")
    return restore_state(state), meta


def first_valid(directories: list, root: str | Path) -> tuple[dict | None, dict | None, list[str]]:
    """(state, meta, problems) of the first of ``directories`` (newest first) that lies under ``root``
    and reads intact; ``problems`` has one ``"<dir>: why"`` per directory skipped before it."""
    root, problems = Path(root).resolve(), []
    for directory in directories:
        where = Path(directory).resolve()
        if not where.is_relative_to(root):
            problems.append(f"{directory}: outside the grid's storage {root}")
            continue
        try:
            state, meta = read_checkpoint(where)
            return state, meta, problems
        except DamagedCheckpoint as err:
            problems.append(f"{where.relative_to(root)}: {err}")
    return None, None, problems


def checkpoint_dirs(storage: Path, grid: str, key: str,
                    up_to: int | None = None) -> tuple[list[str], list[tuple[str, str]]]:
    """(checkpoint directories of trial ``key`` in any Tune run named ``<grid>*`` under ``storage`` (layout
    ``<run>/trial_*_<key>/checkpoint_*``), newest experience first and at most ``up_to``; (directory, why)
    for each whose ``meta.json`` is damaged)."""
    found, damaged = [], []
    for directory in Path(storage).glob(f"{glob.escape(grid)}*/trial_*_{glob.escape(key)}/checkpoint_*"):
        try:
            experience = read_meta(directory)["experience"]
        except DamagedCheckpoint as err:
            damaged.append((str(directory), f"{directory.relative_to(storage)}: {err}"))
            continue
        if up_to is None or experience <= up_to:
            found.append((experience, directory.stat().st_mtime, str(directory)))
    return [d for _, _, d in sorted(found, reverse=True)], damaged


def resume_state(storage: Path, grid: str, key: str, latest: str | None = None,
                 up_to: int | None = None) -> tuple[dict | None, str]:
    """(state to resume a trial attempt from, or None for a fresh start; a note on damaged checkpoints
    passed over, or ""). ``latest``: the Tune checkpoint of a retried attempt; else ``up_to`` (``--resume``:
    the run's last logged experience; None: a fresh trial) bounds the checkpoints of earlier runs. Only
    checkpoints under ``storage`` are read, newest first, each verified (:func:`read_checkpoint`); when
    all are damaged the state is ``{"experience": -1}``: a restart from the first experience."""
    if latest is None and up_to is None:
        return None, ""
    if latest is not None:
        try:
            up_to = read_meta(latest)["experience"]
        except DamagedCheckpoint:
            up_to = None
    found, damaged = checkpoint_dirs(storage, grid, key, up_to)
    candidates = ([latest] if latest is not None else []) + [d for d in found if d != str(latest)]
    if not candidates and not damaged:
        return None, ""
    state, meta, problems = first_valid(candidates, storage)
    same = Path(latest).resolve() if latest is not None else None
    problems += [why for directory, why in damaged if Path(directory).resolve() != same]
    if state is None:
        return {"experience": -1}, f"damaged checkpoint(s): {'; '.join(problems)} — restarted from the first experience"
    note = f"damaged checkpoint(s): {'; '.join(problems)} — resumed after experience {meta['experience']}"
    return state, note if problems else ""
