"""Scheduling overhead of `clmem grid` on local Ray (issue 6 benchmark).

A 16-trial grid of short trials (split_digits, naive, 16 seeds) runs through the same code path
as `clmem grid` (Ray Tune + driver-side MLflow logging into a temporary SQLite store). Overhead =
grid wall time / (sum of trial times / CPUs) − 1, where a trial's time is Ray Tune's
`time_total_s` of its last report (from the start of the trial function: stream, model, training,
evaluations) and the grid's wall time runs as `clmem grid` runs it: from starting Ray, through
opening the MLflow store and the grid, to Ray's shutdown (Ray's start is also reported separately).

The extra wall time, grid wall − ideal, is reported too: it stays about the same whatever the trial
length (Ray's start, the trial worker processes importing torch and Avalanche, Tune's own start and
finish), so the overhead ratio depends on how long the trials are. Trial lengths: 2, 30, 100 and 200
epochs per experience (trials of about 0.4, 2, 5 and 10 s on this machine). Rows with "prewarmed
workers: no" run the same grid with Ray workers that do not import torch/Avalanche at start
(`init_ray(prewarm=False)`, clmem's behaviour before the worker setup hook), in the same run.

Usage: python benchmarks/grid_overhead.py [--trials 16] [--epochs 2 30 100 200] [--peer-epochs 2 100]
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


def measure(trials: int, epochs: int, cpus: int, prewarm: bool) -> dict:
    """One grid, timed as ``clmem grid`` runs it: start Ray, open the MLflow store, run the grid."""
    from clmem.config import Experiment
    from clmem.grid import init_ray, run_grid, shutdown_ray
    from clmem.tracking import Tracker

    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            exp = Experiment.from_dict(experiment(trials, epochs))
            t0 = time.perf_counter()
            started = init_ray(None, prewarm=prewarm)
            ray_start = time.perf_counter() - t0
            tracker = Tracker(f"sqlite:///{tmp}/mlflow.db")
            parent, failed = run_grid(exp, tracker, progress=lambda line: None)
            shutdown_ray(started)
            grid_wall = time.perf_counter() - t0
            children = tracker.children(tracker.client.get_run(parent))
            trial_times = [c.data.metrics["trial_time_s"] for c in children]
        finally:
            os.chdir(cwd)
    ideal = sum(trial_times) / cpus
    return {"trials": len(trial_times), "failed": failed, "cpus": cpus, "epochs": epochs,
            "prewarm": prewarm, "ray_start_s": ray_start, "grid_wall_s": grid_wall,
            "sum_trial_s": sum(trial_times), "mean_trial_s": sum(trial_times) / len(trial_times),
            "ideal_s": ideal, "overhead": grid_wall / ideal - 1.0,
            "overhead_after_ray_start": (grid_wall - ray_start) / ideal - 1.0}


def table(rows: list) -> str:
    lines = ["| trials | CPUs | epochs | prewarmed workers | mean trial (s) | sum/CPUs (s) | grid wall (s) "
             "| overhead | extra wall (s) | Ray start (s) | overhead without Ray start |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['trials']} | {r['cpus']} | {r['epochs']} | {'yes' if r['prewarm'] else 'no'} "
                     f"| {r['mean_trial_s']:.2f} | {r['ideal_s']:.1f} | {r['grid_wall_s']:.1f} "
                     f"| {100 * r['overhead']:.1f}% | {r['grid_wall_s'] - r['ideal_s']:.1f} "
                     f"| {r['ray_start_s']:.1f} | {100 * r['overhead_after_ray_start']:.1f}% |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, nargs="+", default=[2, 30, 100, 200])
    parser.add_argument("--peer-epochs", type=int, nargs="*", default=[2, 100],
                        help="trial lengths also run without prewarmed workers, for comparison")
    args = parser.parse_args()
    cpus = os.cpu_count()
    rows = []
    for epochs in args.epochs:
        if epochs in args.peer_epochs:
            rows.append(measure(args.trials, epochs, cpus, prewarm=False))
        rows.append(measure(args.trials, epochs, cpus, prewarm=True))
    load = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "grid_overhead.json").write_text(json.dumps({"rows": rows, "loadavg_after": load}, indent=2))
    md = table(rows) + (f"\nLoad average after the run (1/5/15 min): {load[0]:.1f} / {load[1]:.1f} / "
                        f"{load[2]:.1f} on {cpus} CPUs.\n")
    (RESULTS / "grid_overhead.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
