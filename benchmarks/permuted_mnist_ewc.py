"""Permuted MNIST EWC benchmark (issue 5): Avalanche EWC vs clmem EWCController vs naive.

Runs `experiments/permuted_mnist_ewc.yaml` (10 experiences, 3 seeds, one epoch per experience)
through clmem's grid on local Ray and writes mean ± sd over seeds of ACC, BWT and forgetting.
The Avalanche baseline quoted in the issue (EWC, ACC 0.83) trains longer (more epochs per
experience); this run uses one epoch to fit a 2-core CPU, so compare the rows with each other.

Usage: python benchmarks/permuted_mnist_ewc.py [--data ../shared/data/mnist] [--seeds 0 1 2]
Writes benchmarks/results/permuted_mnist_ewc.{json,md}.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from _grid import RESULTS, ROOT, run_experiment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--experiences", type=int, default=10)
    args = parser.parse_args()
    overrides = {"benchmark": {"dataset_root": str(Path(args.data).resolve()),
                               "n_experiences": args.experiences}, "seeds": args.seeds}
    rows = run_experiment("permuted_mnist_ewc", overrides, ["strategy.name"])
    lines = ["| strategy | seeds | ACC | BWT | forgetting | wall time (s) |", "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: -r["ACC"][0]):
        lines.append(f"| {r['group']['strategy.name']} | {r['n']} | {r['ACC'][0]:.3f} ± {r['ACC'][1]:.3f} "
                     f"| {r['BWT'][0]:.3f} ± {r['BWT'][1]:.3f} | {r['Forgetting'][0]:.3f} ± {r['Forgetting'][1]:.3f} "
                     f"| {r['wall_time_s'][0]:.0f} |")
    table = "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "permuted_mnist_ewc.json").write_text(json.dumps(rows, indent=1))
    (RESULTS / "permuted_mnist_ewc.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
