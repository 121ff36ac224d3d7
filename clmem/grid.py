"""The Ray Tune adapter: runs an experiment's grid, one Tune trial per resolved trial.

Trials report once per experience with ``tune.report``; a driver-side Tune callback turns those
reports into MLflow runs through :class:`clmem.tracking.Tracker`, so only the driver writes to the
tracking store.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import ray  # noqa: E402
from ray import tune  # noqa: E402

from clmem.config import Experiment  # noqa: E402
from clmem.tracking import Tracker  # noqa: E402


def _trainable(config: dict) -> None:
    """Tune function trainable: run one trial, reporting after each experience."""
    import warnings

    from clmem.runner import run_trial

    warnings.filterwarnings("ignore")
    import avalanche.training  # noqa: F401  (import before the trial's wall clock starts)
    run_trial(config["trial"], on_experience=lambda i, report: tune.report(report))


class MlflowDriverCallback(tune.Callback):
    """Logs each Tune trial as a child MLflow run of the grid's parent run, from the driver."""

    def __init__(self, tracker: Tracker, experiment: Experiment, parent_id: str,
                 progress: Callable[[str], None] = print):
        self.tracker, self.experiment, self.parent_id = tracker, experiment, parent_id
        self.progress = progress
        self.run_ids: dict[str, str] = {}
        self.last: dict[str, dict] = {}
        self.done = 0
        self.failed = 0

    def _run_id(self, trial) -> str:
        if trial.trial_id not in self.run_ids:
            spec = trial.config["trial"]
            self.run_ids[trial.trial_id] = self.tracker.start_trial(
                self.parent_id, self.experiment.name, spec)
        return self.run_ids[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info):
        self._run_id(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.tracker.log_experience(self._run_id(trial), result)
        self.last[trial.trial_id] = result
        spec = trial.config["trial"]
        self.progress(
            f"[{self.done}/{len(self.experiment.trials)} trials done] trial {spec['index']} "
            f"({spec['strategy']['name']}, seed {spec['seed']}): experience "
            f"{result['experience'] + 1}/{result['experiences_total']}, "
            f"seen accuracy {result['seen_acc']:.3f}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        self.tracker.finish_trial(self._run_id(trial), self.last.get(trial.trial_id), "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.done += 1
        self.failed += 1
        self.tracker.finish_trial(self._run_id(trial), self.last.get(trial.trial_id), "FAILED")
        self.progress(f"trial {trial.config['trial']['index']} FAILED (see Ray logs: {trial.local_path})")


def _trial_name(trial) -> str:
    spec = trial.config["trial"]
    return f"trial_{spec['index']:04d}_{spec['key']}"


def init_ray(address: str | None) -> bool:
    """Join ``address`` or start a local Ray on this machine's CPUs; True if we started it."""
    if ray.is_initialized():
        return False
    kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=os.cpu_count(), **kwargs)
    return True


def run_grid(experiment: Experiment, tracker: Tracker, address: str | None = None,
             max_concurrent: int | None = None, storage_path: str | None = None,
             progress: Callable[[str], None] = print) -> tuple[str, int]:
    """Run every trial of ``experiment`` on Ray Tune; returns (parent run id, failed trials)."""
    started = init_ray(address)
    parent_id = tracker.start_parent(experiment, "grid")
    callback = MlflowDriverCallback(tracker, experiment, parent_id, progress)
    resources = experiment.trials[0]["resources"]
    trainable = tune.with_resources(_trainable, {"cpu": resources["cpu"], "gpu": resources["gpu"]})
    storage = Path(storage_path or os.environ.get("CLMEM_RAY_STORAGE", "ray_results")).resolve()
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(experiment.trials)},
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent, reuse_actors=True,
                                    trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
        run_config=tune.RunConfig(
            name=f"{experiment.name}-{int(time.time())}", storage_path=str(storage), verbose=0,
            callbacks=[callback],
            failure_config=tune.FailureConfig(max_failures=experiment.max_failures),
        ),
    )
    status = "FINISHED"
    try:
        tuner.fit()
        if callback.failed:
            status = "FAILED"
    except BaseException:
        status = "KILLED"
        raise
    finally:
        tracker.end_run(parent_id, status)
        if started:
            ray.shutdown()
        sys.stdout.flush()
    return parent_id, callback.failed
