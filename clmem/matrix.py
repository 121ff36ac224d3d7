"""The learner × strategy matrix: every registered model × every registered strategy on each stream kind
the model accepts, at tiny sizes.

Each cell either **trains** — two experiences through the same path as a trial
(:func:`clmem.runner.build_strategy`), finite loss, parameters or memory buffers changed, the stream's
own score per experience on its scale — or is **refused** by :func:`clmem.compat.check_pair` (what
``clmem validate`` says) with its one-line reason. :func:`run_matrix` yields the cells;
``tests/test_matrix.py`` asserts that none crashes and ``benchmarks/matrix_table.py`` writes the table
into the README. A new model or strategy joins the matrix by being registered.
"""
from __future__ import annotations

import math
import time
import warnings
from typing import Iterator, NamedTuple

import torch

from clmem.catalog import BENCHMARKS, MODELS, STRATEGIES
from clmem.compat import STREAM_KINDS, model_accepts, stream_kind
from clmem.options import ConfigError
from strategies.registry import strategy_options

#: Sizes of the tiny models and strategies (applied where the component declares the option).
TINY_MODEL = {"hidden_size": 8, "memory_size": 8, "word_size": 4, "embedding_dim": 8, "channels": 4,
              "num_layers": 1, "hops": 2, "k_neighbours": 2, "k": 4, "feature_size": 8}
TINY_STRATEGY = {"train_mb_size": 4, "eval_mb_size": 8, "train_epochs": 1, "mem_size": 8, "fisher_samples": 8,
                 "fisher_mb_size": 4, "keys_per_class": 4, "patterns_per_exp": 4, "sample_size": 4,
                 "batch_size_mem": 4, "lr": 0.05}


class Cell(NamedTuple):
    model: str
    strategy: str
    kind: str
    status: str  # "trains", "refused" or "crashed"
    detail: str  # the reason of a refusal, the error of a crash, or the scores of a trained cell
    seconds: float


def _declared(options: dict, tiny: dict) -> dict:
    return {k: v for k, v in tiny.items() if k in options}


def kind_benchmarks() -> dict[str, dict]:
    """One tiny benchmark section per stream kind (the first registered benchmark of that kind with a
    ``tiny`` option set whose data is present; bAbI kinds from the same benchmark with each ``encoding``)."""
    from clmem.datafiles import preflight

    out: dict[str, dict] = {}
    for entry in BENCHMARKS:
        tiny = entry.meta.get("tiny")
        if tiny is None:
            continue
        try:  # a benchmark on real data joins when its files are present (Omniglot)
            preflight({"name": entry.name, **tiny})
        except (OSError, ConfigError, ValueError):
            continue
        variants = [{}] if "encoding" not in entry.options else [{"encoding": e} for e in entry.options["encoding"].choices]
        for extra in variants:
            section = {"name": entry.name, **tiny, **extra}
            out.setdefault(stream_kind(section), section)
    return out


def _experiment(model: str, strategy: str, benchmark: dict) -> dict:
    return {"name": "matrix", "benchmark": dict(benchmark),
            "model": {"name": model, **_declared(MODELS.get(model).options, TINY_MODEL)},
            "strategy": {"name": strategy, **_declared(strategy_options(strategy), TINY_STRATEGY)},
            "seeds": [0]}


def _state(model: torch.nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in [*model.parameters(), *model.buffers()]]


def _on_scale(value: float, metric: str) -> bool:
    if not math.isfinite(value):
        return False
    return value >= 0.0 if metric == "bits_per_sequence" else 0.0 <= value <= 1.0


def train_cell(trial: dict, stream) -> str:
    """Train the trial's pair on two experiences of ``stream``; the scores, or raise ``AssertionError``."""
    from clmem.runner import build_strategy, evaluate_row, seed_everything

    seed_everything(0)
    strategy = build_strategy(trial, stream, "cpu")
    before = _state(strategy.model)
    rows = []
    for exp in list(stream.benchmark.train_stream)[:2]:
        strategy.train(exp)
        loss = float(strategy.loss) if torch.is_tensor(strategy.loss) else float("nan")
        assert math.isfinite(loss), f"non-finite training loss {loss}"
        rows.append(evaluate_row(strategy, stream.benchmark.test_stream, stream.metric_prefix)[0])
    after = _state(strategy.model)
    changed = len(before) != len(after) or any(a.shape != b.shape or not torch.equal(a, b)
                                               for a, b in zip(before, after))
    assert changed, "neither parameters nor buffers changed"
    scores = [v for row in rows for v in row]
    assert all(_on_scale(v, stream.metric) for v in scores), f"{stream.metric} off its scale: {scores}"
    return f"{stream.metric} {rows[-1][0]:.3f}"


def run_matrix(models=None, strategies=None) -> Iterator[Cell]:
    """Every (model, strategy, kind) cell; ``models``/``strategies`` restrict the enumeration."""
    from clmem.config import Experiment

    benches, streams = kind_benchmarks(), {}
    for model in models or MODELS.names():
        for kind in model_accepts(model):
            if kind not in benches:
                continue  # no registered benchmark of this kind has a tiny setting
            for strategy in strategies or STRATEGIES.names():
                start = time.perf_counter()
                try:
                    trial = Experiment.from_dict(_experiment(model, strategy, benches[kind])).trials[0]
                except ConfigError as err:
                    yield Cell(model, strategy, kind, "refused", str(err), time.perf_counter() - start)
                    continue
                try:
                    if kind not in streams:
                        section = benches[kind]
                        streams[kind] = BENCHMARKS.get(section["name"]).builder(
                            0, **{k: v for k, v in trial["benchmark"].items() if k != "name"})
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        detail, status = train_cell(trial, streams[kind]), "trains"
                except Exception as err:  # noqa: BLE001 - a crash is what the matrix reports
                    detail, status = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}", "crashed"
                yield Cell(model, strategy, kind, status, detail, time.perf_counter() - start)


__all__ = ["Cell", "STREAM_KINDS", "TINY_MODEL", "TINY_STRATEGY", "kind_benchmarks", "run_matrix", "train_cell"]
