"""Shared pieces of the memory-core benchmarks: copy task, timed training loop, one-process-per-run driver.

Each measured configuration runs in its own child process (``python <script> --child '<json spec>'``) that prints one
JSON line; peak memory is ``ru_maxrss`` of that child at the end minus ``ru_maxrss`` read right after its imports
(torch, the implementation's package, the data) and before the model is built: i.e. the resident memory added by
building and training the model. On Linux ``ru_maxrss`` is in KiB.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent

# Copy task (Graves et al. 2014 style): 8 payload bits + start flag + end flag = 10 input channels.
INPUT_SIZE, PAYLOAD, LENGTH, BATCH = 10, 8, 20, 16
STEPS = 2 * LENGTH + 2  # start flag, 20 payload steps, end flag, 20 recall steps = 42


def copy_batch(batch: int = BATCH, length: int = LENGTH, seed: int = 0):
    """``(x [B, 2L+2, 10], target [B, L, 8])``: the payload must be reproduced during the last L steps."""
    gen = torch.Generator().manual_seed(seed)
    bits = torch.randint(0, 2, (batch, length, PAYLOAD), generator=gen).float()
    x = torch.zeros(batch, 2 * length + 2, INPUT_SIZE)
    x[:, 0, PAYLOAD] = 1.0
    x[:, 1:length + 1, :PAYLOAD] = bits
    x[:, length + 1, PAYLOAD + 1] = 1.0
    return x, bits


def copy_loss(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE on the recall steps: ``outputs [B, T, >=8]`` (logits), ``target [B, L, 8]``."""
    recall = outputs[:, -target.shape[1]:, :PAYLOAD]
    return torch.nn.functional.binary_cross_entropy_with_logits(recall, target)


def maxrss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_training(step: Callable[[int], None], min_iters: int, max_iters: int, budget_s: float,
                  warmup: int = 1) -> Dict[str, float]:
    """Run ``warmup`` untimed then between ``min_iters`` and ``max_iters`` timed iterations (stop after
    ``budget_s`` seconds once ``min_iters`` are done). Returns iterations, wall seconds, the median (reported),
    mean and minimum wall seconds per iteration, and the median CPU seconds of this process per iteration (with one
    thread, CPU time is the work done whatever else runs on the machine; wall time also counts waiting for a CPU)."""
    for i in range(warmup):
        step(i)
    times: List[float] = []
    cpu: List[float] = []
    start = time.perf_counter()
    while len(times) < max_iters and (len(times) < min_iters or time.perf_counter() - start < budget_s):
        t0, c0 = time.perf_counter(), time.process_time()
        step(warmup + len(times))
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    total = sum(times)
    return {"iterations": len(times), "seconds": total, "mean_seconds_per_iteration": total / len(times),
            "seconds_per_iteration": statistics.median(times), "min_seconds_per_iteration": min(times),
            "cpu_seconds_per_iteration": statistics.median(cpu)}


def train_step_fn(model: torch.nn.Module, forward: Callable[[torch.Tensor], torch.Tensor],
                  batches: int = 4) -> Callable[[int], None]:
    """Closure doing forward + backward + Adam step on pre-generated copy batches (data time excluded)."""
    data = [copy_batch(seed=i) for i in range(batches)]
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step(i: int) -> None:
        x, target = data[i % batches]
        optimiser.zero_grad(set_to_none=True)
        loss = copy_loss(forward(x), target)
        loss.backward()
        optimiser.step()

    return step


def set_threads(threads: int) -> None:
    """Pin torch (and FAISS, if importable) to ``threads`` threads so that runs compare on equal terms."""
    torch.set_num_threads(threads)
    try:
        import faiss

        faiss.omp_set_num_threads(threads)
    except ImportError:
        pass


def child_result(spec: Dict[str, Any], build: Callable[[], Any]) -> Dict[str, Any]:
    """Measure one configuration in this process: ``build() -> (model, forward)``; returns the JSON record."""
    set_threads(spec["threads"])
    torch.manual_seed(0)
    baseline = maxrss_mib()
    model, forward = build()
    timing = time_training(train_step_fn(model, forward), spec["min_iters"], spec["max_iters"], spec["budget_s"])
    peak = maxrss_mib()
    seq_per_s = BATCH / timing["seconds_per_iteration"]
    return {**spec, **timing, "sequences_per_second": seq_per_s, "seconds_per_sequence": 1.0 / seq_per_s,
            "sequences_per_cpu_second": BATCH / timing["cpu_seconds_per_iteration"], "load_average": os.getloadavg(),
            "baseline_rss_mib": baseline, "peak_rss_mib": peak, "peak_minus_baseline_mib": peak - baseline}


def run_child(python: str, script: str, spec: Dict[str, Any], timeout_s: float) -> Dict[str, Any]:
    """Run ``script --child spec`` with interpreter ``python``; returns its JSON record or an error record."""
    cmd = [python, script, "--child", json.dumps(spec)]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout_s:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {**spec, "error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1])


def environment() -> Dict[str, Any]:
    """Machine description stored with the results."""
    return {"host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
            "machine": platform.machine(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
            "processor": platform.processor() or platform.machine(), "cpu": cpu_model(),
            "loadavg_end": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def cpu_model() -> str:
    """CPU model name and its widest x86 vector extension (kernel speed ratios depend on both)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    vector = next((f for f in ("avx512f", "avx2", "avx", "sse4_2") if f in flags), "")
    return f"{name} ({vector})" if vector else name or "unknown"


def write_results(name: str, payload: Dict[str, Any], markdown: str) -> None:
    """Write ``results/<name>.json`` and ``results/<name>.md``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown)
    print(markdown)


def fmt(value: Optional[float], digits: int = 2) -> str:
    """Number or an em dash for missing values."""
    return "—" if value is None else f"{value:.{digits}f}"


def child_main(build_for: Callable[[Dict[str, Any]], Callable[[], Any]]) -> bool:
    """If invoked as ``--child spec``, measure and print the JSON record; returns whether it was a child."""
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        spec = json.loads(sys.argv[2])
        print(json.dumps(child_result(spec, build_for(spec))), flush=True)
        return True
    return False
