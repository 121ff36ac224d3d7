"""The learner × strategy matrix as a table: ✓ (trains) / ✗ refused + reason, per stream kind.

Runs :func:`clmem.matrix.run_matrix` (every registered model × strategy on each stream kind the model
accepts, tiny sizes), writes ``benchmarks/results/matrix.md`` and ``matrix.json``, and with ``--readme``
replaces the block between ``<!-- matrix:start -->`` and ``<!-- matrix:end -->`` in README.md.

    python benchmarks/matrix_table.py --readme
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

from _readme import replace_block

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _short(detail: str) -> str:
    reason = detail.split(": ", 1)[-1]
    return reason.split(": ", 1)[-1] if reason.startswith("strategy '") else reason


def render(cells) -> str:
    """Markdown: one table per stream kind (rows models, columns strategies) and the refusal reasons."""
    by_kind: dict[str, dict[tuple[str, str], object]] = defaultdict(dict)
    for c in cells:
        by_kind[c.kind][(c.model, c.strategy)] = c
    lines, reasons = [], {}
    for kind in sorted(by_kind):
        grid = by_kind[kind]
        models = sorted({m for m, _ in grid})
        strategies = sorted({s for _, s in grid})
        lines += [f"**{kind}**", "", "| model | " + " | ".join(strategies) + " |",
                  "|---|" + "---|" * len(strategies)]
        for m in models:
            row = []
            for s in strategies:
                c = grid[(m, s)]
                if c.status == "trains":
                    row.append("✓")
                elif c.status == "refused":
                    key = reasons.setdefault(_short(c.detail), len(reasons) + 1)
                    row.append(f"✗{key}")
                else:
                    row.append("CRASH")
            lines.append(f"| {m} | " + " | ".join(row) + " |")
        lines.append("")
    lines += [f"✗{n}: {text}" + ("  " if n < len(reasons) else "") for text, n in reasons.items()]
    return "\n".join(lines)


def further(pairs: dict) -> str:
    """One line per further benchmark of a kind already in the table (pairwise coverage, see
    :func:`clmem.matrix.run_stream_pairs`)."""
    lines = ["Further benchmarks of the same stream kinds, checked pairwise (every model that takes the kind under "
             "the reference strategy, every strategy with the reference model):", ""]
    for name, group in pairs.items():
        counts = {s: sum(c.status == s for c in group) for s in ("trains", "refused", "crashed")}
        lines.append(f"- `{name}` ({group[0].kind}): {counts['trains']} train, {counts['refused']} refused, "
                     f"{counts['crashed']} crash")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", action="store_true", help="also rewrite the README's matrix block")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from clmem.matrix import other_benchmarks, run_matrix, run_stream_pairs

    start = time.perf_counter()
    cells = list(run_matrix())
    seconds = time.perf_counter() - start
    table = render(cells)
    pairs = {section["name"]: list(run_stream_pairs(section)) for section in other_benchmarks()}
    table += "\n" + further(pairs)
    crashed = [c for c in cells + [c for group in pairs.values() for c in group] if c.status == "crashed"]
    counts = {s: sum(c.status == s for c in cells) for s in ("trains", "refused", "crashed")}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "matrix.json").write_text(json.dumps(
        {"seconds": seconds, "counts": counts, "cells": [c._asdict() for c in cells],
         "further_benchmarks": {name: [c._asdict() for c in group] for name, group in pairs.items()}}, indent=1))
    summary = (f"{counts['trains']} pairs train, {counts['refused']} are refused by `clmem validate`, "
               f"{counts['crashed']} crash ({seconds:.0f} s for the whole matrix at tiny sizes).")
    (RESULTS / "matrix.md").write_text(summary + "\n\n" + table + "\n")
    if args.readme:
        replace_block("matrix", f"{summary}\n\n{table}\n")
    print(summary)
    for c in crashed:
        print(f"CRASH {c.model} × {c.strategy} on {c.kind}: {c.detail}")
    return 1 if crashed else 0


if __name__ == "__main__":
    raise SystemExit(main())
