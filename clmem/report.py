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
from clmem.compare import group_rows
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


def export_plots(tracker: Tracker, parent_run, out_dir: str | Path, log: bool = True) -> list[Path]:
    """Write the grid's plots into ``out_dir`` (and log them to the parent run); returns the files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    axes = parse_axes(parent_run) or ["strategy.name"]
    runs = [r for r in tracker.children(parent_run) if r.info.status == "FINISHED"]
    if not runs:
        return []
    groups: dict[str, list] = {}
    for run in runs:
        groups.setdefault(_label(run.data.params, axes), []).append(run)
    T = 1 + max(m.step for m in tracker.client.get_metric_history(runs[0].info.run_id, "seen_acc"))
    files = []
    for label, members in groups.items():
        safe = re.sub(r"[^A-Za-z0-9_.=-]+", "_", label)
        files.append(plots.accuracy_heatmap(_mean_R(tracker, members), out / f"R_{safe}.png",
                                            f"mean R over {len(members)} seed(s): {label}"))
    for metric, ylabel in (("seen_acc", "accuracy on experiences seen so far"),
                           ("forgetting_at_step", "average forgetting (Chaudhry et al.)")):
        curves = {label: np.stack([_history(tracker, r, metric, T) for r in members])
                  for label, members in groups.items()}
        files.append(plots.curves_by_experience(curves, ylabel, out / f"{metric}_by_experience.png"))
    rows = group_rows([{"params": dict(r.data.params), "metrics": dict(r.data.metrics), "status": "FINISHED"}
                       for r in runs], axes, ("ACC", "BWT"))
    bars = {_label(row["group"], axes): {m: row[m] for m in ("ACC", "BWT")} for row in rows}
    files.append(plots.summary_bars(bars, ("ACC", "BWT"), out / "acc_bwt_bars.png"))
    if log:
        for f in files:
            tracker.client.log_artifact(parent_run.info.run_id, str(f), "plots")
    return files
