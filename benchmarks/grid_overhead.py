"""Scheduling overhead of `clmem grid` on local Ray (issue 6 benchmark).

A 16-trial grid of short trials (split_digits, naive, 16 seeds) runs through the same code path
as `clmem grid` (Ray Tune + driver-side MLflow logging into a temporary SQLite store). Overhead =
grid wall time / (sum of trial times / CPUs) − 1, where a trial's time is Ray Tune's
`time_total_s` of its last report (from the start of the trial function: stream, model, training,
evaluations) and the grid's wall time runs from `run_grid` entry (Ray start included, reported
separately) to its return.

The extra wall time, grid wall − ideal, is reported too: it stays about the same whatever the trial
length (Ray starting the trial worker processes, each importing torch and Avalanche, and Tune's own
start and finish), so the overhead ratio depends on how long the trials are. Two trial lengths are run by
default (2, 30 and 100 epochs per experience: trials of about 1, 4 and 10 s on this machine).

Usage: python benchmarks/grid_overhead.py [--trials 16] [--epochs 2 30 100]
Writes benchmarks/results/grid_overhead.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
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
    import ray

    from clmem.config import Experiment
    from clmem.grid import run_grid
    from clmem.tracking import Tracker

    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            tracker = Tracker(f"sqlite:///{tmp}/mlflow.db")
            exp = Experiment.from_dict(experiment(trials, epochs))
            t0 = time.perf_counter()
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
            ray_start = time.perf_counter() - t0
            t1 = time.perf_counter()
            parent, failed = run_grid(exp, tracker, progress=lambda line: None)
            grid_wall = time.perf_counter() - t1
            ray.shutdown()
            children = tracker.children(tracker.client.get_run(parent))
            trial_times = [c.data.metrics["trial_time_s"] for c in children]
        finally:
            os.chdir(cwd)
    ideal = sum(trial_times) / cpus
    return {"trials": len(trial_times), "failed": failed, "cpus": cpus, "epochs": epochs,
            "ray_start_s": ray_start, "grid_wall_s": grid_wall, "sum_trial_s": sum(trial_times),
            "mean_trial_s": sum(trial_times) / len(trial_times), "ideal_s": ideal,
            "overhead": grid_wall / ideal - 1.0,
            "fixed_cost_per_trial_s": (grid_wall - ideal) * cpus / len(trial_times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, nargs="+", default=[2, 30, 100])
    args = parser.parse_args()
    cpus = os.cpu_count()
    rows = [measure(args.trials, epochs, cpus) for epochs in args.epochs]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "grid_overhead.json").write_text(json.dumps(rows, indent=2))
    lines = ["| trials | CPUs | epochs | mean trial (s) | sum/CPUs (s) | grid wall (s) | overhead "
             "| extra wall (s) | Ray start (s) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['trials']} | {r['cpus']} | {r['epochs']} | {r['mean_trial_s']:.2f} | {r['ideal_s']:.1f} "
                     f"| {r['grid_wall_s']:.1f} | {100 * r['overhead']:.1f}% | {r['grid_wall_s'] - r['ideal_s']:.1f} "
                     f"| {r['ray_start_s']:.1f} |")
    md = "\n".join(lines) + "\n"
    (RESULTS / "grid_overhead.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
