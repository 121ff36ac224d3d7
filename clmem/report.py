"""Plots of a grid read back from MLflow: R heatmaps, per-experience curves, ACC/BWT bars.

Written to a folder and logged as artifacts (``plots/``) of the grid's parent run.
"""
from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import numpy as np

from clmem import plots
from clmem.compare import Score, describe_score, group_rows, run_score, sort_rows
from clmem.tracking import Tracker, parse_axes


def _label(params: dict, axes: list[str]) -> str:
    """``replay/mem_size=200`` from the axis values of a run (names bare, options as key=value)."""
    parts = []
    for axis in axes:
        value = params.get(axis, "-")
        parts.append(value if axis.endswith(".name") else f"{axis.split('.')[-1]}={value}")
    return "/".join(parts) or "all"


def _history(tracker: Tracker, run, metric: str, length: int) -> np.ndarray:
    values = np.full(length, np.nan)
    for m in tracker.client.get_metric_history(run.info.run_id, metric):
        if 0 <= m.step < length:
            values[m.step] = m.value
    return values


def _mean_R(tracker: Tracker, runs) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        mats = [json.loads(Path(tracker.client.download_artifacts(r.info.run_id, "R.json", tmp)).read_text())["R"]
                for r in runs]
    return np.mean(np.asarray(mats, dtype=float), axis=0)


def _unit(score: Score) -> tuple[str, str]:
    """(short name of the score, its direction in words) for axis labels."""
    short = score.name.replace("_", " ") if score.name else "score"
    if score.higher_is_better is None:
        return short, "direction unknown"
    return short, "higher is better" if score.higher_is_better else "lower is better"


def _runs_by_score(runs) -> dict[str, tuple[Score, list]]:
    out: dict[str, tuple[Score, list]] = {}
    for run in runs:
        score = run_score(run.data.tags)
        out.setdefault(score.name, (score, []))[1].append(run)
    return out


def export_plots(tracker: Tracker, parent_run, out_dir: str | Path, log: bool = True) -> list[Path]:
    """Write the grid's plots into ``out_dir`` (and log them to the parent run); returns the files.

    Runs of different scores (e.g. accuracy and bits per sequence) get separate plots, suffixed with
    the score's name; each plot names the score's unit and direction, legends and bars run best first.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    axes = parse_axes(parent_run) or ["strategy.name"]
    runs = [r for r in tracker.children(parent_run) if r.info.status == "FINISHED"]
    by_score = _runs_by_score(runs)
    files = []
    for name, (score, members) in by_score.items():
        suffix = "" if len(by_score) == 1 else f"_{name or 'unknown'}"
        files += _score_plots(tracker, members, axes, score, out, suffix)
    if log:
        for f in files:
            tracker.client.log_artifact(parent_run.info.run_id, str(f), "plots")
    return files


def _ranked_groups(runs, axes: list[str]) -> tuple[dict[str, list], list[dict]]:
    """Runs per axis label, best first by ACC, and the ranked rows (ACC, BWT mean ± sd)."""
    rows = sort_rows(group_rows([{"params": dict(r.data.params), "metrics": dict(r.data.metrics),
                                  "status": "FINISHED", "tags": dict(r.data.tags)} for r in runs],
                                axes, ("ACC", "BWT")), "ACC")
    groups: dict[str, list] = {_label(row["group"], axes): [] for row in rows}
    for run in runs:
        groups[_label(run.data.params, axes)].append(run)
    return groups, rows


def _score_plots(tracker: Tracker, runs, axes: list[str], score: Score, out: Path, suffix: str) -> list[Path]:
    """R heatmaps, per-experience curves and ACC/BWT bars of the runs of one score."""
    short, direction = _unit(score)
    groups, rows = _ranked_groups(runs, axes)
    T = 1 + max(m.step for m in tracker.client.get_metric_history(runs[0].info.run_id, "seen_acc"))
    files = []
    for label, members in groups.items():
        safe = re.sub(r"[^A-Za-z0-9_.=-]+", "_", label)
        files.append(plots.accuracy_heatmap(
            _mean_R(tracker, members), out / f"R_{safe}{suffix}.png",
            f"mean R over {len(members)} seed(s): {label}\nR[i][j] = {short} ({direction})", f"{short} ({direction})",
            higher_is_better=score.higher_is_better is not False))
    for metric, ylabel in (("seen_acc", f"{short} on experiences seen so far ({direction})"),
                           ("forgetting_at_step", f"average forgetting in {short}, Chaudhry et al. "
                                                  f"(0 = none, lower is better)")):
        curves = {label: np.stack([_history(tracker, r, metric, T) for r in members])
                  for label, members in groups.items()}
        files.append(plots.curves_by_experience(curves, ylabel, out / f"{metric}_by_experience{suffix}.png",
                                                title=f"legend best first by ACC ({direction})"))
    bars = {_label(row["group"], axes): {m: row[m] for m in ("ACC", "BWT")} for row in rows}
    files.append(plots.summary_bars(bars, ("ACC", "BWT"), out / f"acc_bwt_bars{suffix}.png",
                                    title="\n".join(describe_score(score, "ACC")), ylabel=f"{short}"))
    return files
