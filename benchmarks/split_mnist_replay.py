"""Split MNIST replay benchmark (issue 5): episodic_replay vs Avalanche Replay and DER.

Runs `experiments/split_mnist_buffers.yaml` (buffers 200 and 500, 3 seeds, same MLP and one
epoch for all) as a clmem grid on local Ray, tracked in a temporary SQLite store, and writes
mean ± sd over seeds of ACC, forgetting and wall time per strategy and buffer, with each
strategy's wall time relative to Avalanche Replay at the same buffer size measured in the same
run. ACC is the mean over the 5 test experiences after the last one (Lopez-Paz & Ranzato).
Trials run one at a time (``--concurrent``) so that no trial's wall time depends on which other
trial shares the cores with it; run it under ``flock /tmp/clmem-bench.lock``.

``--paired R`` then times Replay and episodic_replay back to back in this process (seed 0, both
buffers, R rounds in ABBA order, one torch thread as a Ray trial with cpu: 1 has) and adds that
section to the results; it guards the grid's ratio against load that changes while the grid runs
its trials strategy by strategy. ``--paired-only`` skips the grid (keeps its last results).

Usage: python benchmarks/split_mnist_replay.py [--data ../shared/data/mnist] [--seeds 0 1 2] [--concurrent 1]
       [--paired 2] [--paired-only]
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


def paired_timing(data: str, rounds: int) -> list[dict]:
    """Wall and CPU seconds of back-to-back in-process trials: (replay, episodic_replay) per buffer, ABBA."""
    import torch
    import yaml

    from _grid import merge
    from clmem.config import Experiment
    from clmem.runner import run_trial

    torch.set_num_threads(1)
    raw = merge(yaml.safe_load((ROOT / "experiments" / "split_mnist_buffers.yaml").read_text()),
                {"benchmark": {"dataset_root": str(Path(data).resolve())}, "seeds": [0]})
    trials = {(t["strategy"]["name"], str(t["strategy"]["mem_size"])): t for t in Experiment.from_dict(raw).trials}
    out = []
    for buf in TARGETS:
        for r in range(rounds):
            order = ("replay", "episodic_replay") if r % 2 == 0 else ("episodic_replay", "replay")
            for name in order:
                wall, cpu = time.perf_counter(), time.process_time()
                result = run_trial(trials[(name, buf)])
                out.append({"strategy": name, "buffer": buf, "round": r, "wall_s": time.perf_counter() - wall,
                            "cpu_s": time.process_time() - cpu, "ACC": result.summary["ACC"]})
                print(out[-1], flush=True)
    return out


def write_paired(paired: list[dict]) -> str:
    lines = ["", "## Paired timing (seed 0, in-process, back to back)", "",
             "The grid runs its trials strategy by strategy (all episodic_replay trials, then Replay, then DER), "
             "so a change of load on the shared machine during the grid skews its time ratios (see the sd of "
             "the wall times above). Here each episodic_replay trial runs right before or after a Replay trial "
             "with the same seed and buffer (ABBA order); CPU ratio = ratio of this process's CPU seconds.", "",
             "| buffer | episodic_replay wall (s) | Replay wall (s) | wall ratio | CPU ratio | rounds |",
             "|---|---|---|---|---|---|"]
    for buf in TARGETS:
        mine = [p for p in paired if p["buffer"] == buf and p["strategy"] == "episodic_replay"]
        peer = [p for p in paired if p["buffer"] == buf and p["strategy"] == "replay"]
        w_m, w_p = sum(p["wall_s"] for p in mine), sum(p["wall_s"] for p in peer)
        c_m, c_p = sum(p["cpu_s"] for p in mine), sum(p["cpu_s"] for p in peer)
        lines.append(f"| {buf} | {w_m / len(mine):.1f} | {w_p / len(peer):.1f} | {w_m / w_p:.2f} | {c_m / c_p:.2f} "
                     f"| {len(mine)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--concurrent", type=int, default=1, help="trials at once (1: sequential timing)")
    parser.add_argument("--paired", type=int, default=0, help="rounds of paired Replay/episodic_replay timing")
    parser.add_argument("--paired-only", action="store_true", help="skip the grid, keep its last results")
    args = parser.parse_args()
    if args.paired_only:
        saved = json.loads((RESULTS / "split_mnist_replay.json").read_text())
        meta, rows = saved["meta"], saved["rows"]
    else:
        load_start, start = os.getloadavg()[0], time.perf_counter()
        rows = run(args.data, args.seeds, args.concurrent)
        meta = {"seeds": args.seeds, "concurrent_trials": args.concurrent, "cpus": os.cpu_count(),
                "load_start": load_start, "load_end": os.getloadavg()[0], "total_s": time.perf_counter() - start,
                "date": time.strftime("%Y-%m-%d %H:%M")}
    paired = paired_timing(args.data, args.paired) if args.paired else []
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "split_mnist_replay.json").write_text(json.dumps({"meta": meta, "rows": rows, "paired": paired},
                                                                indent=1))
    table = write(rows) + (f"\n{len(meta['seeds'])} seeds; {meta['concurrent_trials']} trial(s) at a time on local "
                           f"Ray; {meta['cpus']} CPUs shared with other jobs (load average {meta['load_start']:.1f} at "
                           f"the start, {meta['load_end']:.1f} at the end); whole grid {meta['total_s'] / 60:.1f} min; "
                           f"{meta['date']}. Wall time per trial includes the initial evaluation, training and "
                           "the evaluation after every experience.\n")
    if paired:
        table += write_paired(paired) + (f"\nPaired runs: {time.strftime('%Y-%m-%d %H:%M')}, load average "
                                         f"{os.getloadavg()[0]:.1f} at the end.\n")
    (RESULTS / "split_mnist_replay.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
