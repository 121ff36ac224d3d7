"""Split MNIST replay benchmark (issue 5): episodic_replay vs Avalanche Replay and DER.

Runs `experiments/split_mnist_buffers.yaml` (buffers 200 and 500, 3 seeds, same MLP and one
epoch for all) as a clmem grid on local Ray, tracked in a temporary SQLite store, and writes
mean ± sd over seeds of ACC, forgetting and wall time per strategy and buffer, with each
strategy's wall time relative to Avalanche Replay at the same buffer size measured in the same
run. ACC is the mean over the 5 test experiences after the last one (Lopez-Paz & Ranzato).
Trials run one at a time (``--concurrent``) so that no trial's wall time depends on which other
trial shares the cores with it; run it under ``flock /tmp/clmem-bench.lock``.

Usage: python benchmarks/split_mnist_replay.py [--data ../shared/data/mnist] [--seeds 0 1 2] [--concurrent 1]
Writes benchmarks/results/split_mnist_replay.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from _grid import RESULTS, ROOT, run_experiment
TARGETS = {"200": 0.856, "500": 0.910}  # published DER++ ACC (Buzzega et al. 2020), seq-MNIST


def run(data: str, seeds: list[int], concurrent: int) -> list[dict]:
    overrides = {"benchmark": {"dataset_root": str(Path(data).resolve())}, "seeds": seeds}
    return run_experiment("split_mnist_buffers", overrides, ["strategy.name", "strategy.mem_size"],
                          ("ACC", "Forgetting", "wall_time_s"), max_concurrent=concurrent)


def write(rows: list[dict]) -> str:
    replay_time = {r["group"]["strategy.mem_size"]: r["wall_time_s"][0]
                   for r in rows if r["group"]["strategy.name"] == "replay"}
    lines = ["| strategy | buffer | seeds | ACC | forgetting | wall time (s) | time / Replay | ACC target |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (int(r["group"]["strategy.mem_size"]), -r["ACC"][0])):
        buf, name = r["group"]["strategy.mem_size"], r["group"]["strategy.name"]
        ratio = r["wall_time_s"][0] / replay_time[buf]
        met = "met" if r["ACC"][0] >= TARGETS[buf] else "not met"
        lines.append(f"| {name} | {buf} | {r['n']} | {100 * r['ACC'][0]:.1f} ± {100 * r['ACC'][1]:.1f}% "
                     f"| {r['Forgetting'][0]:.3f} ± {r['Forgetting'][1]:.3f} | {r['wall_time_s'][0]:.1f} "
                     f"| {ratio:.2f} | ≥ {100 * TARGETS[buf]:.1f}%: {met} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--concurrent", type=int, default=1, help="trials at once (1: sequential timing)")
    args = parser.parse_args()
    load_start, start = os.getloadavg()[0], time.perf_counter()
    rows = run(args.data, args.seeds, args.concurrent)
    meta = {"seeds": args.seeds, "concurrent_trials": args.concurrent, "cpus": os.cpu_count(),
            "load_start": load_start, "load_end": os.getloadavg()[0], "total_s": time.perf_counter() - start,
            "date": time.strftime("%Y-%m-%d %H:%M")}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "split_mnist_replay.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    table = write(rows) + (f"\n{len(args.seeds)} seeds; {args.concurrent} trial(s) at a time on local Ray; "
                           f"{meta['cpus']} CPUs shared with other jobs (load average {load_start:.1f} at the "
                           f"start, {meta['load_end']:.1f} at the end); whole grid {meta['total_s'] / 60:.1f} min; "
                           f"{meta['date']}. Wall time per trial includes the initial evaluation, training and "
                           "the evaluation after every experience.\n")
    (RESULTS / "split_mnist_replay.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
