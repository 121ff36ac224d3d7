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


def benchmark_sections() -> dict[str, list[dict]]:
    """Every tiny benchmark section per stream kind, in registry order: each registered benchmark with a
    ``tiny`` option set whose data is present (Omniglot joins when its files are), bAbI once per ``encoding``."""
    from clmem.datafiles import preflight

    out: dict[str, list[dict]] = {}
    for entry in BENCHMARKS:
        tiny = entry.meta.get("tiny")
        if tiny is None:
            continue
        try:
            preflight({"name": entry.name, **tiny})
        except (OSError, ConfigError, ValueError):
            continue
        variants = [{}] if "encoding" not in entry.options else [{"encoding": e} for e in entry.options["encoding"].choices]
        for extra in variants:
            section = {"name": entry.name, **tiny, **extra}
            out.setdefault(stream_kind(section), []).append(section)
    return out


def kind_benchmarks() -> dict[str, dict]:
    """The primary tiny benchmark of each stream kind (the first of :func:`benchmark_sections`): the full
    model × strategy product runs on it."""
    return {kind: sections[0] for kind, sections in benchmark_sections().items()}


def other_benchmarks() -> list[dict]:
    """The tiny sections that are not their kind's primary one (covered pairwise by :func:`run_stream_pairs`)."""
    return [section for sections in benchmark_sections().values() for section in sections[1:]]


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


def _cell(model: str, strategy: str, section: dict, streams: dict) -> Cell:
    """Validate the pair on ``section``; if accepted, train it (streams are built once per section)."""
    from clmem.config import Experiment

    kind, start = stream_kind(section), time.perf_counter()
    try:
        trial = Experiment.from_dict(_experiment(model, strategy, section)).trials[0]
    except ConfigError as err:
        return Cell(model, strategy, kind, "refused", str(err), time.perf_counter() - start)
    try:
        key = repr(sorted(section.items()))
        if key not in streams:
            streams[key] = BENCHMARKS.get(section["name"]).builder(
                0, **{k: v for k, v in trial["benchmark"].items() if k != "name"})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            detail, status = train_cell(trial, streams[key]), "trains"
    except Exception as err:  # noqa: BLE001 - a crash is what the matrix reports
        detail, status = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}", "crashed"
    return Cell(model, strategy, kind, status, detail, time.perf_counter() - start)


def run_matrix(models=None, strategies=None) -> Iterator[Cell]:
    """Every (model, strategy, kind) cell on each kind's primary benchmark; ``models``/``strategies``
    restrict the enumeration."""
    benches, streams = kind_benchmarks(), {}
    for model in models or MODELS.names():
        for kind in model_accepts(model):
            if kind not in benches:
                continue  # no registered benchmark of this kind has a tiny setting
            for strategy in strategies or STRATEGIES.names():
                yield _cell(model, strategy, benches[kind], streams)


#: The pair a further benchmark of a kind is checked with: its reference model under every strategy and
#: every model under its reference strategy (the first name of each tuple that is registered and fits).
REFERENCE_MODELS = ("mlp", "lstm", "memn2n")
REFERENCE_STRATEGIES = ("sequence", "naive")


def _reference(names, preferred, fits) -> str:
    return next((n for n in (*preferred, *names) if n in names and fits(n)), None)


def run_stream_pairs(section: dict) -> Iterator[Cell]:
    """Pairwise coverage of a non-primary benchmark: every model that accepts its kind under the reference
    strategy, and every strategy with the reference model. A stream's own quirks (input width, answer
    masks, sequence lengths) meet each model and each strategy once, at a fraction of the full product."""
    from clmem.compat import check_pair

    kind, streams = stream_kind(section), {}
    models = [m for m in MODELS.names() if kind in model_accepts(m)]
    ref_model = _reference(models, REFERENCE_MODELS, lambda m: True)

    def fits(strategy: str) -> bool:
        try:
            check_pair({"benchmark": section, "model": {"name": ref_model}, "strategy": {"name": strategy}})
        except ConfigError:
            return False
        return True

    ref_strategy = _reference(STRATEGIES.names(), REFERENCE_STRATEGIES, fits)
    for model in models:
        yield _cell(model, ref_strategy, section, streams)
    for strategy in STRATEGIES.names():
        if strategy != ref_strategy:
            yield _cell(ref_model, strategy, section, streams)


__all__ = ["Cell", "STREAM_KINDS", "TINY_MODEL", "TINY_STRATEGY", "benchmark_sections", "kind_benchmarks",
           "other_benchmarks", "run_matrix", "run_stream_pairs", "train_cell"]
