"""Which learner trains on which stream under which strategy, decided before anything runs.

Every benchmark has a **stream kind** (registry meta ``kind``: a string, or a function of the
resolved benchmark section), which fixes the shapes a model sees and how its outputs are scored:

========== ============================================= ==========================================
kind       sample ``(x, y)``                             learners (model meta ``accepts``)
========== ============================================= ==========================================
image      ``x [C, H, W]`` float, ``y`` class id         ``mlp``, ``cnn``, ``igor``, …
bits       ``x [T, D]``, ``y [T, bits + 1]`` float bits  sequence learners (lstm, ntm, dnc, …)
qa_sequence ``x [T, V]`` one-hot words, ``y`` answer id  sequence learners
qa_memnet  ``x [M + 1, S]`` word ids, ``y`` answer id    ``memn2n``
episodes   ``x [T, D + n_way]``, ``y [T]`` labels        sequence learners
========== ============================================= ==========================================

A strategy may refuse a kind (registry meta ``refuses``: a mapping kind → reason), e.g. the
feature-memory classifiers need one class per sample. :func:`check_pair` is called for every trial
when an experiment file is validated, so ``clmem validate`` refuses a pair with one line; the
matrix test (``tests/test_matrix.py``) checks that every pair this module allows trains.
"""
from __future__ import annotations

from typing import Any

from clmem.options import ConfigError
from clmem.registries import BENCHMARKS, MODELS, STRATEGIES

#: The stream kinds and what their samples are.
STREAM_KINDS: dict[str, str] = {
    "image": "images or flat vectors, one class id per sample",
    "bits": "bit sequences x [T, D] with per-step float bit targets (bits per sequence)",
    "qa_sequence": "a one-hot sequence x [T, V] answered at its last step, the answer id as target (bAbI words, "
                   "knowledge-graph, temporal and logic streams)",
    "qa_memnet": "bAbI in the memory-network layout x [M + 1, S] of word ids, the answer id as target",
    "episodes": "few-shot episodes x [T, D + n_way] with per-step labels y [T]",
}


def stream_kind(benchmark: dict) -> str:
    """The stream kind of a resolved benchmark section ``{"name": ..., **options}``."""
    kind = BENCHMARKS.get(benchmark["name"], "benchmark.name").meta.get("kind", "image")
    if isinstance(kind, dict):  # {"by": option, "default": value, "values": {option value: kind}}
        return kind["values"][benchmark.get(kind["by"], kind["default"])]
    return kind(benchmark) if callable(kind) else kind


def model_accepts(name: str) -> tuple[str, ...]:
    """The stream kinds model ``name`` takes (all kinds when its registration names none)."""
    return tuple(MODELS.get(name, "model.name").meta.get("accepts", tuple(STREAM_KINDS)))


def strategy_refusal(name: str, kind: str) -> str | None:
    """Why strategy ``name`` cannot train on streams of ``kind`` (``None``: it can)."""
    return dict(STRATEGIES.get(name, "strategy.name").meta.get("refuses", {})).get(kind)


def refusal(model: str, strategy: str, kind: str) -> tuple[str, str] | None:
    """``(key path, reason)`` when the pair cannot run on a stream of ``kind``, else ``None``."""
    accepts = model_accepts(model)
    if kind not in accepts:
        return "model.name", (f"model {model!r} takes {' / '.join(accepts)} streams, not {kind} "
                              f"({STREAM_KINDS.get(kind, kind)})")
    reason = strategy_refusal(strategy, kind)
    if reason is not None:
        return "strategy.name", f"strategy {strategy!r} cannot train on {kind} streams: {reason}"
    return None


def check_model_options(model: dict[str, Any]) -> None:
    """Cross-option checks of a resolved model section (e.g. ``num_chunks`` divides ``memory_size``).

    A model registered with meta ``config`` (its frozen config dataclass, or a function of the options
    building it) is checked by building that config with the sizes in meta ``config_sizes`` (default: unit
    ``input_size`` and ``output_size`` for a class, none for a function); its
    ``ValueError("Owner.field: reason")`` becomes ``ConfigError("model.field", reason)``.
    """
    meta = MODELS.get(model["name"], "model.name").meta
    config = meta.get("config")
    if config is None:
        return
    options = {k: v for k, v in model.items() if k != "name"}
    sizes = meta.get("config_sizes", {"input_size": 1, "output_size": 1} if isinstance(config, type) else {})
    try:
        config(**sizes, **options)
    except (ValueError, TypeError) as err:
        head, _, reason = str(err).partition(": ")
        field = head.rsplit(".", 1)[-1] if reason and "." in head else None
        if field is not None and field in options:
            raise ConfigError(f"model.{field}", reason) from None
        raise ConfigError("model", f"{model['name']}: {err}") from None


def check_pair(resolved: dict[str, Any]) -> None:
    """Raise a one-line :class:`ConfigError` when a resolved trial's model/strategy cannot run on its stream
    or its model options contradict each other."""
    check_model_options(resolved["model"])
    check_growth(resolved["model"], resolved["strategy"])
    kind = stream_kind(resolved["benchmark"])
    found = refusal(resolved["model"]["name"], resolved["strategy"]["name"], kind)
    if found is not None:
        raise ConfigError(*found)


def check_growth(model: dict[str, Any], strategy: dict[str, Any]) -> None:
    """``strategy.grow_memory > 0`` needs a model whose memory can grow (model meta ``grows``, a function of the
    resolved model section: ``gated`` with ``max_memory_size > memory_size``)."""
    slots = strategy.get("grow_memory") or 0
    if not slots:
        return
    grows = MODELS.get(model["name"], "model.name").meta.get("grows")
    if grows is None or not grows(model):
        raise ConfigError("strategy.grow_memory", f"model {model['name']!r} has no memory that can grow (expected "
                                                  f"'gated' with max_memory_size > memory_size), got {slots}")
