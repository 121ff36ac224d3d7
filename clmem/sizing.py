"""Will a trial fit? Memory estimates made before anything is allocated, and per-trial resource
requests checked against this machine or the nodes of a Ray cluster.

Pure Python (no torch, no Ray): ``clmem validate`` runs it on the experiment file alone. The
estimates are lower bounds — float32 weights and gradients of the model's parameters plus one
batch of memory state (``B`` = ``strategy.train_mb_size``, one time step) — so a refusal is
never a false alarm: a trial refused here could not have built its model.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable

from clmem.options import ConfigError, shown

BYTES_PER_VALUE = 4  # float32
#: Input shape and classes of the built-in benchmarks; other benchmarks get the lower bound (1,), 2.
SHAPES: dict[str, tuple[tuple[int, ...], int]] = {
    "split_digits": ((1, 8, 8), 10), "permuted_digits": ((1, 8, 8), 10),
    "split_mnist": ((1, 28, 28), 10), "permuted_mnist": ((1, 28, 28), 10),
}
_LOWER_BOUND_SHAPE: tuple[tuple[int, ...], int] = ((1,), 2)


def _mlp(o: dict, shape, c: int) -> tuple[int, int]:
    d, h, layers = math.prod(shape), o.get("hidden_size", 256), o.get("num_layers", 2)
    if layers == 0:
        return d * c + c, 0
    return d * h + h + (layers - 1) * (h * h + h) + h * c + c, 0


def _cnn(o: dict, shape, c: int) -> tuple[int, int]:
    ch, h = o.get("channels", 32), o.get("hidden_size", 128)
    in_ch, height, width = shape if len(shape) == 3 else (1, 1, 1)
    for _ in range(2):  # SmallCNN pools twice when the map allows
        if min(height, width) >= 4:
            height, width = height // 2, width // 2
    convs = 9 * in_ch * ch + ch + 9 * ch * 2 * ch + 2 * ch
    return convs + 2 * ch * height * width * h + h + h * c + c, 0


def _lstm(o: dict, shape, c: int) -> tuple[int, int]:
    d, h, layers = shape[-1], o.get("hidden_size", 64), o.get("num_layers", 1)
    return 4 * h * (d + h + 2) + (layers - 1) * 4 * h * (2 * h + 2) + h * c + c, 2 * h * layers


def _memory_core(links: bool) -> Callable[[dict, tuple, int], tuple[int, int]]:
    def estimate(o: dict, shape, c: int) -> tuple[int, int]:
        d, h = shape[-1], o.get("hidden_size", 64)
        n, w = o.get("memory_size", 32), o.get("word_size", 16)
        reads, writes = o.get("num_reads", 1), o.get("num_writes", 1)
        inputs = d + reads * w
        controller = 4 * h * (inputs + h + 2) if o.get("controller", "lstm") == "lstm" else h * (inputs + 1)
        interface = h * (reads * w + 3 * w * writes)
        output = (h + reads * w) * c
        state = n * w + n * (reads + writes) + (n * n if links else 0)
        return controller + interface + output, state

    return estimate


def _memn2n(o: dict, shape, c: int) -> tuple[int, int]:
    return (o.get("hops", 3) + 1) * c * o.get("embedding_dim", 20), 0


#: model name -> (options, input shape, classes) -> (parameters, memory-state values per sample)
ESTIMATORS: dict[str, Callable[[dict, tuple, int], tuple[int, int]]] = {
    "mlp": _mlp, "cnn": _cnn, "lstm": _lstm, "memn2n": _memn2n,
    "ntm": _memory_core(False), "mann": _memory_core(False), "sparse_dnc": _memory_core(False),
    "dnc": _memory_core(True),
}


def estimate_bytes(trial: dict) -> int | None:
    """Lower bound of the bytes a resolved trial's model needs in training, or None (unknown model).

    Weights and gradients (2 values per parameter) plus ``B`` × the memory state of one sample.
    """
    model = trial["model"]
    estimator = ESTIMATORS.get(model["name"])
    if estimator is None:
        return None
    shape, classes = SHAPES.get(trial["benchmark"]["name"], _LOWER_BOUND_SHAPE)
    params, state = estimator(model, shape, classes)
    batch = trial.get("strategy", {}).get("train_mb_size", 1) or 1
    return BYTES_PER_VALUE * (2 * params + batch * state)


def available_memory() -> int:
    """Bytes of memory available to a new process here (``MemAvailable``, else physical memory)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _culprit(trial: dict) -> str:
    """The integer option whose value, set to 1, shrinks the estimate most (the key path to blame)."""
    candidates = [("model", k) for k, v in trial["model"].items() if _is_count(v) and v > 1]
    if _is_count(trial.get("strategy", {}).get("train_mb_size")):
        candidates.append(("strategy", "train_mb_size"))
    best, smallest = "model.name", estimate_bytes(trial)
    for section, key in candidates:
        smaller = estimate_bytes({**trial, section: {**trial[section], key: 1}})
        if smaller is not None and smaller < smallest:
            best, smallest = f"{section}.{key}", smaller
    return best


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_fits(trial: dict, available: int, where: str = "this machine") -> None:
    """Raise a :class:`ConfigError` naming the option to shrink when ``trial`` cannot fit ``available`` bytes."""
    need = estimate_bytes(trial)
    if need is None or need <= available:
        return
    path = _culprit(trial)
    section, key = path.split(".")
    raise ConfigError(path, f"{shown(trial[section][key])} makes the model need at least {_gb(need)} "
                            f"(weights, gradients, one batch of memory state), more than the {_gb(available)} "
                            f"available on {where} (expected a smaller value)")


def _gb(size: int) -> str:
    """``size`` bytes in words: ``6960 bytes``, ``2.5 MB``, ``23.9 GB``, ``8.00e+18 bytes``."""
    if size < 1e6 or size >= 1e15:
        return f"{size} bytes" if size < 1e6 else f"{size:.2e} bytes"
    return f"{size / 1e6:.3g} MB" if size < 1e9 else f"{size / 1e9:.3g} GB"


# ---- CPU and GPU requests ---------------------------------------------------------------------
def local_gpu_count() -> int:
    """NVIDIA GPUs visible here without importing torch: ``CUDA_VISIBLE_DEVICES`` when set, else the
    driver's ``/proc/driver/nvidia/gpus`` entries."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v for v in visible.split(",") if v.strip()]
        return 0 if not ids or ids[0].strip() == "-1" else len(ids)
    gpus = Path("/proc/driver/nvidia/gpus")
    return len(list(gpus.iterdir())) if gpus.is_dir() else 0


def local_node() -> dict[str, float]:
    """This machine as one node: ``{"cpu": CPUs this process may use, "gpu": visible GPUs}``."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return {"cpu": float(cpus), "gpu": float(local_gpu_count())}


def plan_request(resources: dict, nodes: list[dict], where: str) -> tuple[dict, bool]:
    """(request to give Ray, GPU falls back to the CPU) for a trial's ``resources`` on ``nodes``.

    A trial must fit one node. ``gpu > 0`` where no node has a GPU falls back to the CPU (the
    request drops its GPU; the trial runs on the CPU); a request no node can ever hold is a
    :class:`ConfigError` naming ``resources.cpu`` or ``resources.gpu``.
    """
    cpu, gpu = float(resources["cpu"]), float(resources["gpu"])
    most_cpu = max((n.get("cpu", 0.0) for n in nodes), default=0.0)
    most_gpu = max((n.get("gpu", 0.0) for n in nodes), default=0.0)
    fallback = gpu > 0 and most_gpu == 0
    if fallback:
        gpu = 0.0
    if cpu > most_cpu:
        raise ConfigError("resources.cpu", f"{shown(cpu)} CPUs per trial, but no node of {where} has more "
                                           f"than {most_cpu:g} (expected at most {most_cpu:g})")
    if gpu > most_gpu:
        raise ConfigError("resources.gpu", f"{shown(gpu)} GPUs per trial, but no node of {where} has more "
                                           f"than {most_gpu:g} (expected at most {most_gpu:g}, or 0)")
    if not any(n.get("cpu", 0.0) >= cpu and n.get("gpu", 0.0) >= gpu for n in nodes):
        raise ConfigError("resources", f"{{cpu: {cpu:g}, gpu: {gpu:g}}} per trial, but no node of {where} has "
                                       f"both at once (expected a request one node can hold)")
    return {"cpu": cpu, "gpu": gpu}, fallback
