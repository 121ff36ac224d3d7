"""One trial: build stream, model and strategy; train experience by experience; fill R.

The runner knows nothing of Ray or MLflow: it calls ``on_experience(i, report)`` after each
experience ``i`` with a flat dict of floats plus the rows of R so far (``R``) and the scores at
initialisation (``b``). The last report also carries the summary metrics (:data:`SUMMARY_KEYS`).
"""
from __future__ import annotations

import random
import re
import time
import warnings
from typing import Callable, NamedTuple

import numpy as np
import torch

from clmem import catalog, metrics
from clmem.benchmarks import Stream
from clmem.models import build_model

SUMMARY_KEYS = ("ACC", "BWT", "FWT", "Forgetting", "AIA", "wall_time_s")
_OPTIMIZER_KEYS = ("optimizer", "lr", "momentum", "weight_decay")


class TrialResult(NamedTuple):
    R: list[list[float]]
    b: list[float]
    summary: dict[str, float]
    avalanche: dict[str, float]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (Avalanche's RNG manager too)."""
    from avalanche.training.determinism.rng_manager import RNGManager

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    RNGManager.set_random_seeds(seed)


def pick_device(gpu: float) -> str:
    """``cuda`` when the trial asked for a GPU and CUDA is present; otherwise ``cpu``, with a warning."""
    if gpu > 0 and torch.cuda.is_available():
        return "cuda"
    if gpu > 0:
        warnings.warn("resources.gpu > 0 but CUDA is not available in this worker: running on the CPU")
    return "cpu"


def make_optimizer(params, optimizer: str, lr: float, momentum: float, weight_decay: float):
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def _accuracy_applies(stream: Stream | None) -> bool:
    """Whether a sample's target is one integer class id: Avalanche's accuracy cannot score float bit
    targets ``[T, O]`` nor per-step labels ``[T]`` (few-shot episodes)."""
    if stream is None:
        return True
    y = torch.as_tensor(stream.benchmark.test_stream[0].dataset[0][1])
    return y.dim() == 0 and not y.is_floating_point()


def make_evaluator(stream: Stream | None = None):
    """Avalanche's accuracy, forgetting and BWT metrics (where accuracy can score the stream's targets)
    plus the stream's own (no loggers)."""
    from avalanche.evaluation.metrics import accuracy_metrics, bwt_metrics, forgetting_metrics
    from avalanche.training.plugins import EvaluationPlugin

    extra = list(stream.eval_metrics()) if stream is not None and stream.eval_metrics else []
    accuracy = ([accuracy_metrics(experience=True, stream=True), forgetting_metrics(experience=True, stream=True),
                 bwt_metrics(experience=True, stream=True)] if _accuracy_applies(stream) else [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return EvaluationPlugin(*accuracy, *extra, loggers=[])


def evaluate_row(strategy, test_stream, prefix: str = "Top1_Acc_Exp") -> tuple[list[float], dict]:
    """Evaluate on every test experience: (score per experience in order, all metric values).

    The score of experience ``j`` is the Avalanche metric ``<prefix>/eval_phase/test_stream/…/Exp<j>``.
    """
    pattern = re.compile(rf"^{re.escape(prefix)}/eval_phase/test_stream/(?:Task\d+/)?Exp(\d+)$")
    results = strategy.eval(test_stream)
    row = {int(m.group(1)): float(v) for k, v in results.items() if (m := pattern.match(k))}
    if sorted(row) != list(range(len(test_stream))):
        raise RuntimeError(f"evaluation returned {prefix} for experiences {sorted(row)}")
    return [row[j] for j in range(len(test_stream))], results


def build_strategy(trial: dict, stream: Stream, device: str):
    """The trial's model, optimizer and strategy (strategy options from the experiment file)."""
    from strategies.registry import create_strategy

    model_opts = {k: v for k, v in trial["model"].items() if k != "name"}
    model = build_model(trial["model"]["name"], stream.input_shape, stream.num_classes, **model_opts)
    if stream.model_adapter is not None:  # e.g. the answer step of a sequence learner on bAbI sequences
        model = stream.model_adapter(model)
    sopts = {k: v for k, v in trial["strategy"].items() if k != "name"}
    optimizer = make_optimizer(model.parameters(), *(sopts.pop(k) for k in _OPTIMIZER_KEYS))
    return create_strategy(trial["strategy"]["name"], model=model, optimizer=optimizer,
                           criterion=stream.criterion() if stream.criterion else torch.nn.CrossEntropyLoss(),
                           evaluator=make_evaluator(stream),
                           device=device, **sopts)


def _avalanche_summary(results: dict) -> dict[str, float]:
    """Avalanche's stream-level values (pooled accuracy, first-vs-last forgetting, BWT)."""
    prefixes = {
        "avl_stream_acc": "Top1_Acc_Stream/eval_phase/test_stream",
        "avl_forgetting": "StreamForgetting/eval_phase/test_stream",
        "avl_bwt": "StreamBWT/eval_phase/test_stream",
    }
    out = {}
    for name, prefix in prefixes.items():
        for key, value in results.items():
            if key == prefix or key.startswith(prefix + "/"):
                out[name] = float(value)
    return out


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def run_trial(trial: dict, on_experience: Callable[[int, dict], None] | None = None,
              checkpointing: bool = False, resume: dict | None = None) -> TrialResult:
    """Run one resolved trial (see :mod:`clmem.config`) and return its accuracy matrix.

    With ``checkpointing``, each report carries ``"_checkpoint"``: for a resumable strategy the
    state after that experience (see :mod:`strategies.checkpoint`), otherwise only its index. ``resume`` is such a state:
    the trial continues after its experience; for a strategy that cannot be resumed exactly it
    restarts from the first experience (``resumed_from`` = -1 in the reports).
    """
    from strategies.checkpoint import resumability, strategy_state

    seed_everything(trial["seed"])
    device = pick_device(trial["resources"]["gpu"])
    bench_opts = {k: v for k, v in trial["benchmark"].items() if k != "name"}
    stream = catalog.BENCHMARKS.get(trial["benchmark"]["name"]).builder(trial["seed"], **bench_opts)
    strategy = build_strategy(trial, stream, device)
    resumable, why = resumability(strategy)
    train_stream, test_stream = stream.benchmark.train_stream, stream.benchmark.test_stream
    start = time.perf_counter()  # wall time: evaluation at init, training and evaluations
    first, R, b, elapsed, extra = _starting_point(strategy, stream, resume, why)
    extra.update(device=device, metric=stream.metric, higher_is_better=stream.higher_is_better)
    summary, avl = None, {}
    for i in range(first, len(train_stream)):
        t0 = time.perf_counter()
        strategy.train(train_stream[i])
        row, results = evaluate_row(strategy, test_stream, stream.metric_prefix)
        R.append(row)
        report = _step_report(i, len(train_stream), R, b, time.perf_counter() - t0, stream)
        report.update(extra)
        if stream.report is not None:
            report.update(stream.report(results))
        wall = elapsed + time.perf_counter() - start
        if i == len(train_stream) - 1:
            summary = _summary(R, b, stream, wall)
            avl = _avalanche_summary(results)  # a resumed trial's evaluator history is restored
            report.update(summary, **avl)
            picture = memory_picture(strategy.model, test_stream[len(test_stream) - 1].dataset, device)
            if picture:
                report["memory_png"] = picture
        if checkpointing:  # a non-resumable trial still records how far it got
            report["_checkpoint"] = {"experience": i} if not resumable else {
                "experience": i, "R": [list(r) for r in R], "b": list(b), "elapsed": wall,
                "rng": rng_state(), "strategy": strategy_state(strategy)}
        if on_experience is not None:
            on_experience(i, report)
    if summary is None:  # resumed after its last experience: nothing left to train
        summary = _summary(R, b, stream, elapsed)
    return TrialResult(R, b, summary, avl)


def memory_picture(model, dataset, device: str) -> str | None:
    """Base64 PNG of a memory learner's usage and read/write weights over one test sequence.

    Models without ``memory_trace`` (classifiers, LSTM, MemN2N) give None.
    """
    model = getattr(model, "learner", model)  # through a read-out adapter (clmem.learners.readout)
    if not hasattr(model, "memory_trace"):
        return None
    from clmem.plots import memory_heatmaps, png_base64

    trace = model.memory_trace(dataset[0][0].unsqueeze(0).to(device))
    usage = None if trace.usage is None else trace.usage[0].cpu()
    return png_base64(memory_heatmaps, usage, trace.read_weights[0].cpu(), trace.write_weights[0].cpu())


def _starting_point(strategy, stream: Stream, resume: dict | None, why: str):
    """(first experience, R rows, b, elapsed seconds, report extras) for a fresh or resumed trial."""
    from strategies.checkpoint import load_strategy_state

    if resume is not None and not why and "strategy" in resume:
        load_strategy_state(strategy, resume["strategy"])
        set_rng_state(resume["rng"])
        extra = {"resumed_from": resume["experience"]}
        return resume["experience"] + 1, resume["R"], resume["b"], resume["elapsed"], extra
    reason = why or "no saved state"
    if resume is not None:
        warnings.warn(f"restarting trial from its first experience: {reason}")
    b, _ = evaluate_row(strategy, stream.benchmark.test_stream, stream.metric_prefix)
    return 0, [], b, 0.0, ({"resumed_from": -1, "restart_reason": reason} if resume is not None else {})


def _step_report(i: int, total: int, R, b, seconds: float, stream: Stream) -> dict:
    step = metrics.step_metrics(R, stream.higher_is_better)
    report = {"experience": i, "experiences_total": total, "seen_acc": step["seen_acc"],
              "stream_acc": step["stream_acc"], "forgetting_at_step": step["forgetting"],
              "exp_time_s": seconds}
    report.update({f"acc_exp_{j}": v for j, v in enumerate(R[-1])})
    report["R"] = [list(r) for r in R]
    report["b"] = list(b)
    return report


def _summary(R, b, stream: Stream, wall: float) -> dict[str, float]:
    s = metrics.summarize(R, b, stream.higher_is_better)
    return {"ACC": s.acc, "BWT": s.bwt, "FWT": s.fwt, "Forgetting": s.forgetting,
            "AIA": s.avg_incremental_acc, "wall_time_s": wall}
