"""CPU cost of one MANN training update at the paper's sizes (issue 19): what the published curve would need.

Times ``--updates`` updates (after 3 warm-up updates) of MANNFewShot (LSTM 200 + LRUA 128 x 40, 4 reads, one write
per read) and of the LSTM-only baseline on random episodes of the paper's shape (batches of 16 episodes of
50 steps, 20 x 20 images + 5 label channels), torch threads 1, in the same process. Episode sampling and the
per-presentation jitter are not included (``mann_omniglot.py`` does those). Reports CPU and wall seconds per
update, the MANN / LSTM ratio, and the hours one core would need for 25,000 updates (where a public reference
curve reaches the published level) and for the paper's 100,000.

Usage: python benchmarks/mann_update_cost.py [--updates 20]
Writes benchmarks/results/mann_update_cost.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import _harness as H  # noqa: E402
from strategies.mann_fewshot import LSTMFewShot, MANNFewShot, train_step  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def time_updates(model, updates: int, x, y) -> dict:
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(3):
        train_step(model, optimizer, x, y)
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(updates):
        train_step(model, optimizer, x, y)
    return {"cpu_s": (time.process_time() - cpu) / updates, "wall_s": (time.perf_counter() - wall) / updates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, y = torch.rand(16, 50, 400), torch.randint(0, 5, (16, 50))
    rows = {"MANN (LSTM 200 + LRUA 128x40, 4 reads, 4 writes)": time_updates(MANNFewShot(), args.updates, x, y),
            "LSTM 200 (no memory)": time_updates(LSTMFewShot(), args.updates, x, y)}
    mann = next(iter(rows.values()))
    payload = {"updates": args.updates, "rows": rows, "environment": H.environment(),
               "hours_25k": mann["cpu_s"] * 25_000 / 3600, "hours_100k": mann["cpu_s"] * 100_000 / 3600}
    lines = ["# MANN update cost at the paper's sizes (one core, torch threads 1)", "",
             f"{args.updates} timed updates per model of 16 episodes x 50 steps (random inputs; no sampling or "
             "jitter), same process.", "", "| model | CPU s / update | wall s / update |", "|---|---|---|"]
    lines += [f"| {name} | {r['cpu_s']:.3f} | {r['wall_s']:.3f} |" for name, r in rows.items()]
    lines += ["", f"MANN / LSTM CPU ratio: {mann['cpu_s'] / rows['LSTM 200 (no memory)']['cpu_s']:.1f}x. One core "
              f"for the MANN alone: {payload['hours_25k']:.1f} h for 25,000 updates, {payload['hours_100k']:.1f} h "
              "for the paper's 100,000.", ""]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "mann_update_cost.json").write_text(json.dumps(payload, indent=1) + "\n")
    (RESULTS / "mann_update_cost.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
