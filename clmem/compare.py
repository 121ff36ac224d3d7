"""Comparison of a grid's trials: mean ± sd over seeds per combination of grid axes, best first.

Every run carries its score (tag ``clmem.metric``, e.g. ``bits_per_sequence``) and its direction
(tag ``clmem.higher_is_better``). ACC, BWT, FWT and AIA are on the score's own scale, so their
direction is the score's; clmem's Forgetting is defined so that positive always means "got worse"
(see :mod:`clmem.metrics`), so it is lower-is-better for every score. Tables rank best first within
each score and say in words what the score is and which sign of BWT / forgetting is good.
"""
from __future__ import annotations

import csv
import io
import math
import re
from collections import OrderedDict
from typing import NamedTuple

import numpy as np

from clmem.options import ConfigError

COLUMNS = ("ACC", "BWT", "FWT", "Forgetting", "wall_time_s")


class Score(NamedTuple):
    """What fills R: its name in words and whether a higher value is better (None: unknown)."""

    name: str
    unit: str
    higher_is_better: bool | None


#: The streams' scores (``Stream.metric``): unit in words and direction.
SCORES = {
    "accuracy": Score("accuracy", "top-1 accuracy (fraction of test samples classified correctly)", True),
    "bits_per_sequence": Score("bits_per_sequence", "bits per sequence (wrong output bits per test sequence)",
                               False),
    "error": Score("error", "error (fraction of test questions answered wrongly)", False),
    "episode_accuracy": Score("episode_accuracy", "per-step accuracy of few-shot episodes (fraction of episode "
                                                  "steps labelled correctly)", True),
}
#: Summary columns whose direction does not follow the score's.
_FIXED_DIRECTION = {"Forgetting": False, "forgetting_at_step": False, "avl_forgetting": False,
                    "avl_stream_acc": True, "avl_bwt": True}
_LOWER_BETTER_NAME = re.compile(r"error|failed|bits_per_seq|time", re.IGNORECASE)


def run_score(tags: dict | None) -> Score:
    """The score of a run from its tags (``clmem.metric``, ``clmem.higher_is_better``).

    A run logged without them has score ``""`` and an unknown direction (None).
    """
    tags = tags or {}
    name = tags.get("clmem.metric") or ""
    known = SCORES.get(name)
    flag = tags.get("clmem.higher_is_better")
    if flag is not None and str(flag) not in ("True", "False"):
        raise ConfigError("tags.clmem.higher_is_better", f"expected True or False, got {flag!r}")
    higher = (str(flag) == "True") if flag is not None else (known.higher_is_better if known else None)
    unit = known.unit if known else (name.replace("_", " ") if name else "score of unknown kind")
    return Score(name, unit, higher)


def column_higher_is_better(column: str, score_higher_is_better: bool | None) -> bool:
    """Whether a larger ``column`` value is better, for a score of the given direction (None → higher)."""
    if column in _FIXED_DIRECTION:
        return _FIXED_DIRECTION[column]
    if _LOWER_BETTER_NAME.search(column):
        return False
    return True if score_higher_is_better is None else score_higher_is_better


def group_rows(runs: list[dict], axes: list[str], columns=COLUMNS) -> list[dict]:
    """Aggregate finished runs (``{"params", "metrics", "status"[, "tags"]}``) per axis combination.

    Returns one row per group and score: ``{"group": {axis: value}, "n": seeds, "score": Score,
    metric: (mean, sd)}``; the sd is the sample standard deviation (ddof = 1), 0.0 for a single seed.
    Runs of different scores never share a row.
    """
    groups: "OrderedDict[tuple, list[dict]]" = OrderedDict()
    scores: dict[tuple, Score] = {}
    for run in runs:
        if run["status"] != "FINISHED":
            continue
        score = run_score(run.get("tags"))
        key = (*(run["params"].get(a, "-") for a in axes), score.name)
        scores[key] = score
        groups.setdefault(key, []).append(run["metrics"])
    rows = []
    for key, members in groups.items():
        row = {"group": dict(zip(axes, key[:-1])), "n": len(members), "score": scores[key]}
        for col in columns:
            values = np.array([m[col] for m in members if col in m], dtype=float)
            sd = float(values.std(ddof=1)) if values.size > 1 else 0.0
            row[col] = (float(values.mean()), sd) if values.size else (math.nan, math.nan)
        rows.append(row)
    return rows


def _score_of(row: dict) -> Score:
    return row.get("score") or Score("", "score of unknown kind", None)


def sort_rows(rows: list[dict], metric: str) -> list[dict]:
    """Best first by ``metric`` within each score (ascending where lower is better); NaN last."""
    order = {}
    for row in rows:
        order.setdefault(_score_of(row).name, len(order))

    def key(row):
        score = _score_of(row)
        value = row[metric][0]
        sign = -1.0 if column_higher_is_better(metric, score.higher_is_better) else 1.0
        return (order[score.name], math.isnan(value), 0.0 if math.isnan(value) else sign * value)

    return sorted(rows, key=key)


def _better(higher: bool) -> str:
    return "higher is better" if higher else "lower is better"


def describe_score(score: Score, metric: str = "ACC") -> list[str]:
    """Two lines for a table of ``score``: what ACC is, the ranking, and the signs of BWT/FWT/Forgetting."""
    if score.higher_is_better is None:
        what = (f"ACC = mean final {score.unit} over the test experiences (direction unknown: the runs were "
                f"logged without the clmem.higher_is_better tag; ranked as if higher is better)")
        higher = True
    else:
        higher = score.higher_is_better
        what = f"ACC = mean final {score.unit} over the test experiences ({_better(higher)})"
    best = "highest" if column_higher_is_better(metric, higher) else "lowest"
    first = f"{what}; rows ranked by {metric}, best ({best}) first"
    if higher:
        signs = ("BWT = mean of R[T-1][j] − R[j][j]: negative means forgetting, positive means later training "
                 "improved earlier experiences (higher is better); FWT > 0: earlier training helped before "
                 "an experience was trained (higher is better)")
    else:
        signs = ("BWT = mean of R[T-1][j] − R[j][j]: positive means forgetting (the error rose), negative means "
                 "later training lowered it (lower is better); FWT < 0: earlier training helped before an "
                 "experience was trained (lower is better)")
    forgetting = ("Forgetting = rise of the error above its best earlier value" if not higher
                  else "Forgetting = drop below the best earlier score")
    return [first, f"{signs}; {forgetting} (0 = none, negative = ended better than ever before; lower is better)"]


def describe(rows: list[dict], metric: str = "ACC") -> list[str]:
    """The lines of :func:`describe_score` for each score present in ``rows`` (in row order)."""
    seen: "OrderedDict[str, Score]" = OrderedDict()
    for row in rows:
        seen.setdefault(_score_of(row).name, _score_of(row))
    lines = []
    for name, score in seen.items():
        head = describe_score(score, metric)
        lines += ([f"[{name or 'unknown score'}] {head[0]}", f"[{name or 'unknown score'}] {head[1]}"]
                  if len(seen) > 1 else head)
    return lines


def _header(axes: list[str], columns, with_score: bool) -> list[str]:
    short = {"strategy.name": "strategy", "benchmark.name": "benchmark", "model.name": "model"}
    return [short.get(a, a) for a in axes] + (["score"] if with_score else []) + ["seeds"] + list(columns)


def _cells(row: dict, axes: list[str], columns, with_score: bool) -> list[str]:
    cells = [str(row["group"][a]) for a in axes] + ([_score_of(row).name or "?"] if with_score else [])
    return cells + [str(row["n"])] + [f"{row[c][0]:.3f} ± {row[c][1]:.3f}" for c in columns]


def _csv(rows: list[dict], axes: list[str], columns) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(_header(axes, (), False) + [f"{c}_{s}" for c in columns for s in ("mean", "sd")]
                    + ["score", "higher_is_better"])
    for row in rows:
        score = _score_of(row)
        writer.writerow([row["group"][a] for a in axes] + [row["n"]]
                        + [f"{v:.6f}" for c in columns for v in row[c]] + [score.name, score.higher_is_better])
    return out.getvalue()


def format_table(rows: list[dict], axes: list[str], columns=COLUMNS, fmt: str = "text",
                 ranked_by: str = "ACC") -> str:
    """The rows as an aligned text table, Markdown (``md``) or CSV (``csv``: mean and sd columns, then each
    row's score and its direction). Text opens with, and Markdown follows the table with, :func:`describe`:
    the score's unit, its direction, the ranking and the signs of BWT / forgetting."""
    if fmt == "csv":
        return _csv(rows, axes, columns)
    with_score = len({_score_of(r).name for r in rows}) > 1
    header = _header(axes, columns, with_score)
    body = [_cells(r, axes, columns, with_score) for r in rows]
    notes = describe(rows, ranked_by)
    if fmt == "md":
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(b) + " |" for b in body]) + "\n\n" + "\n\n".join(notes) + "\n"
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join(notes + [line(header), line(["-" * w for w in widths])] + [line(b) for b in body]) + "\n"
