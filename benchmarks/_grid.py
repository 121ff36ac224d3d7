"""Shared by the grid benchmarks: run an experiment file through clmem's own grid and read it back."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def merge(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` applied recursively: mappings merge key by key, anything else
    (lists included, i.e. grid axes) replaces the value."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def grid_runs(raw: dict, read=None, max_concurrent: int | None = None) -> list:
    """Run the experiment ``raw`` on local Ray, tracked in a temporary SQLite store; return ``read(client, run)``
    per trial run (default: its params, metrics and status). A failed trial ends the script."""
    from clmem.config import Experiment
    from clmem.grid import run_grid
    from clmem.tracking import Tracker

    read = read or (lambda client, r: {"params": dict(r.data.params), "metrics": dict(r.data.metrics),
                                       "status": r.info.status})
    experiment = Experiment.from_dict(raw)
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            tracker = Tracker(f"sqlite:///{tmp}/mlflow.db")
            parent, failed = run_grid(experiment, tracker, progress=lambda line: print(line, flush=True),
                                      max_concurrent=max_concurrent)
            runs = [read(tracker.client, r) for r in tracker.children(tracker.client.get_run(parent))]
        finally:
            os.chdir(cwd)
    if failed:
        raise SystemExit(f"{failed} trial(s) failed")
    return runs


def run_experiment(name: str, overrides: dict, axes: list[str],
                   columns=("ACC", "BWT", "Forgetting", "wall_time_s"), max_concurrent: int | None = None) -> list[dict]:
    """Run ``experiments/<name>.yaml`` (merged with ``overrides``, see :func:`merge`) with :func:`grid_runs`;
    return mean ± sd over seeds per group of ``axes``.
    ``max_concurrent`` caps the trials running at once (``None``: as many as the CPUs allow)."""
    from clmem.compare import group_rows

    raw = merge(yaml.safe_load((ROOT / "experiments" / f"{name}.yaml").read_text()), overrides)
    return group_rows(grid_runs(raw, max_concurrent=max_concurrent), axes, columns)
