"""Comparison of a grid's trials: mean ± sd over seeds per combination of grid axes."""
from __future__ import annotations

import csv
import io
import math
from collections import OrderedDict

import numpy as np

COLUMNS = ("ACC", "BWT", "FWT", "Forgetting", "wall_time_s")
HIGHER_IS_BETTER = {"ACC": True, "BWT": True, "FWT": True, "AIA": True, "Forgetting": False,
                    "wall_time_s": False}


def group_rows(runs: list[dict], axes: list[str], columns=COLUMNS) -> list[dict]:
    """Aggregate finished runs (``{"params", "metrics", "status"}``) per axis combination.

    Returns one row per group: ``{"group": {axis: value}, "n": seeds, metric: (mean, sd)}``; the
    sd is the sample standard deviation (ddof = 1), 0.0 for a single seed.
    """
    groups: "OrderedDict[tuple, list[dict]]" = OrderedDict()
    for run in runs:
        if run["status"] != "FINISHED":
            continue
        key = tuple(run["params"].get(a, "-") for a in axes)
        groups.setdefault(key, []).append(run["metrics"])
    rows = []
    for key, members in groups.items():
        row = {"group": dict(zip(axes, key)), "n": len(members)}
        for col in columns:
            values = np.array([m[col] for m in members if col in m], dtype=float)
            sd = float(values.std(ddof=1)) if values.size > 1 else 0.0
            row[col] = (float(values.mean()), sd) if values.size else (math.nan, math.nan)
        rows.append(row)
    return rows


def sort_rows(rows: list[dict], metric: str) -> list[dict]:
    """Best first by ``metric`` (direction from :data:`HIGHER_IS_BETTER`, default higher)."""
    sign = -1.0 if HIGHER_IS_BETTER.get(metric, True) else 1.0
    return sorted(rows, key=lambda r: sign * (r[metric][0] if not math.isnan(r[metric][0]) else -math.inf))


def _cells(row: dict, axes: list[str], columns) -> list[str]:
    cells = [str(row["group"][a]) for a in axes] + [str(row["n"])]
    return cells + [f"{row[c][0]:.3f} ± {row[c][1]:.3f}" for c in columns]


def _header(axes: list[str], columns) -> list[str]:
    short = {"strategy.name": "strategy", "benchmark.name": "benchmark", "model.name": "model"}
    return [short.get(a, a) for a in axes] + ["seeds"] + list(columns)


def format_table(rows: list[dict], axes: list[str], columns=COLUMNS, fmt: str = "text") -> str:
    """The rows as an aligned text table, Markdown (``md``) or CSV (``csv``, mean and sd columns)."""
    header = _header(axes, columns)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(header[: len(axes) + 1] + [f"{c}_{s}" for c in columns for s in ("mean", "sd")])
        for row in rows:
            writer.writerow([row["group"][a] for a in axes] + [row["n"]]
                            + [f"{v:.6f}" for c in columns for v in row[c]])
        return out.getvalue()
    body = [_cells(r, axes, columns) for r in rows]
    if fmt == "md":
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(b) + " |" for b in body]) + "\n"
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(b) for b in body]) + "\n"
