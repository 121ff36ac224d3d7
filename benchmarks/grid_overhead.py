"""Scheduling overhead of `clmem grid` on local Ray (issue 6 benchmark).

A 16-trial grid of short trials (split_digits, naive, 16 seeds) runs through the same code path
as `clmem grid` (Ray Tune + driver-side MLflow logging into a new temporary SQLite store).
Overhead = grid wall time / (sum of trial times / CPUs) - 1, where a trial's time is what the trial
reports as `trial_time_s`: from the start of its run (after its imports) to its last report
(stream, model, training, evaluations, checkpoints). The grid's wall time runs as `clmem grid`
runs it: from opening the MLflow store (in a thread) and starting Ray, through the grid, to Ray's
shutdown. The driver's own imports (torch, Avalanche, Ray, measured separately in a fresh
process) come before and are not in it.

The extra wall time, grid wall - ideal, stays about the same whatever the trial length, so the
overhead ratio depends on how long the trials are. Its parts are reported: Ray's start, the wait
for the first trial result (trial processes start and import torch + Avalanche), Ray's shutdown.
Trial lengths: 2, 30, 100, 200 and 400 epochs per experience.

Usage: python benchmarks/grid_overhead.py [--trials 16] [--epochs 2 30 100 200 400]
Writes benchmarks/results/grid_overhead.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def experiment(trials: int, epochs: int) -> dict:
    return {
        "name": "overhead",
        "benchmark": {"name": "split_digits", "n_experiences": 5},
        "model": {"name": "mlp", "hidden_size": 128, "num_layers": 2},
        "strategy": {"name": "naive", "train_epochs": epochs, "lr": 0.05},
        "seeds": list(range(trials)),
        "resources": {"cpu": 1},
    }


def measure(trials: int, epochs: int, cpus: int) -> dict:
    """One grid, timed as ``clmem grid`` runs it: open the MLflow store while Ray starts, run the grid."""
    from clmem.config import Experiment
    from clmem.grid import init_ray, run_grid, shutdown_ray
    from clmem.tracking import Tracker

    cwd = os.getcwd()
    first_result = []
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            exp = Experiment.from_dict(experiment(trials, epochs))
            t0 = time.perf_counter()
            tracker = Tracker(f"sqlite:///{tmp}/mlflow.db", connect_in_background=True)
            started = init_ray(None)
            ray_start = time.perf_counter() - t0
            parent, failed = run_grid(exp, tracker, progress=lambda line: first_result.append(
                time.perf_counter() - t0) if not first_result else None)
            t1 = time.perf_counter()
            shutdown_ray(started)
            grid_wall = time.perf_counter() - t0
            children = tracker.children(tracker.client.get_run(parent))
            trial_times = [c.data.metrics["trial_time_s"] for c in children]
        finally:
            os.chdir(cwd)
    ideal = sum(trial_times) / cpus
    return {"trials": len(trial_times), "failed": failed, "cpus": cpus, "epochs": epochs,
            "ray_start_s": ray_start, "first_result_s": first_result[0], "shutdown_s": grid_wall - (t1 - t0),
            "grid_wall_s": grid_wall, "sum_trial_s": sum(trial_times),
            "mean_trial_s": sum(trial_times) / len(trial_times), "ideal_s": ideal,
            "overhead": grid_wall / ideal - 1.0}


def driver_imports() -> float:
    """Wall seconds a fresh process takes to import what `clmem grid` imports before it starts."""
    code = "import clmem.cli, clmem.config, clmem.grid, clmem.tracking, mlflow.tracking"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-W", "ignore", "-c", code], check=True)
    return time.perf_counter() - t0


def table(rows: list) -> str:
    lines = ["| trials | CPUs | epochs | mean trial (s) | sum/CPUs (s) | grid wall (s) | overhead "
             "| extra wall (s) | Ray start (s) | first result at (s) | Ray shutdown (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['trials']} | {r['cpus']} | {r['epochs']} | {r['mean_trial_s']:.2f} "
                     f"| {r['ideal_s']:.1f} | {r['grid_wall_s']:.1f} | {100 * r['overhead']:.1f}% "
                     f"| {r['grid_wall_s'] - r['ideal_s']:.1f} | {r['ray_start_s']:.1f} "
                     f"| {r['first_result_s']:.1f} | {r['shutdown_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, nargs="+", default=[2, 30, 100, 200, 400])
    args = parser.parse_args()
    cpus = os.cpu_count()
    imports = driver_imports()
    rows = [measure(args.trials, epochs, cpus) for epochs in args.epochs]
    load = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "grid_overhead.json").write_text(json.dumps(
        {"rows": rows, "driver_imports_s": imports, "loadavg_after": load}, indent=2))
    md = table(rows) + (f"\nDriver imports before the clock starts (fresh process): {imports:.1f} s. "
                        f"Load average after the run (1/5/15 min): {load[0]:.1f} / {load[1]:.1f} / "
                        f"{load[2]:.1f} on {cpus} CPUs.\n")
    (RESULTS / "grid_overhead.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
