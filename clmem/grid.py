"""The Ray Tune adapter: runs an experiment's grid, one Tune trial per resolved trial.

Trials report once per experience with ``tune.report`` (with a checkpoint of model, optimizer
and plugin states when the strategy is resumable); a driver-side Tune callback turns the reports
into MLflow runs through :class:`clmem.tracking.Tracker`, so only the driver writes to the store.

Faults: a trial that fails is retried up to ``max_failures`` times and resumes after its last
checkpointed experience. ``resume=True`` continues an interrupted grid: finished trials are
skipped, interrupted ones continue their MLflow run from their last Ray checkpoint, and no step
is logged twice.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Tune's experiment-state snapshots are not needed for clmem's resume (MLflow + trial checkpoints)
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "60")
# Results go to MLflow: Tune's own CSV/JSON/TensorBoard loggers would only cost the driver time
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")

import ray  # noqa: E402
from ray import tune  # noqa: E402

from clmem.config import Experiment  # noqa: E402
from clmem.options import ConfigError  # noqa: E402

if TYPE_CHECKING:  # trial workers unpickle this module: keep MLflow out of them
    from clmem.tracking import Tracker

#: Test and chaos-drill hook: "EXPERIENCE:MARKER_FILE" makes the trial process exit hard right
#: after reporting that experience, once (the marker file records that it happened).
FAULT_ENV = "CLMEM_FAULT_AFTER_EXPERIENCE"


#: Keys Ray Tune adds to every result; not logged to MLflow (the trial reports its own
#: ``trial_time_s``: seconds since it started running, after its imports, this attempt).
TUNE_AUTO_KEYS = frozenset({
    "timestamp", "checkpoint_dir_name", "done", "training_iteration", "trial_id", "date",
    "time_this_iter_s", "time_total_s", "pid", "hostname", "node_ip", "config",
    "time_since_restore", "iterations_since_restore", "should_checkpoint", "experiment_tag",
})


def _maybe_crash(experience: int) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    at, marker = spec.split(":", 1)
    if int(at) == experience and not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        os._exit(17)


def _load_state(directory: str | None):
    import torch

    if not directory or not (Path(directory) / "state.pt").is_file():
        return None
    # Files written by an earlier attempt of this same trial (plain tensors and lists).
    return torch.load(Path(directory) / "state.pt", map_location="cpu", weights_only=False)


def _report(experience: int, report: dict, key: str, started: float) -> None:
    import torch

    report["trial_time_s"] = time.perf_counter() - started
    state = report.pop("_checkpoint", None)
    if "ACC" in report:  # last experience: render the heatmap here, not in the driver
        from clmem.plots import accuracy_heatmap, png_base64

        report["R_png"] = png_base64(accuracy_heatmap, report["R"])
    report["worker_pid"] = os.getpid()
    report["node_id"] = ray.get_runtime_context().get_node_id()
    if state is None:
        tune.report(report)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(state, Path(tmp) / "state.pt")
            (Path(tmp) / "meta.json").write_text(json.dumps({"experience": experience, "key": key}))
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(tmp))
    _maybe_crash(experience)


def _limit_threads(cpus: float) -> None:
    """Use as many intra-op threads (torch, FAISS) as CPUs the trial asked for, whatever the worker's
    environment says, so that trials sharing a machine do not oversubscribe it."""
    import torch

    threads = max(1, int(cpus))
    torch.set_num_threads(threads)
    faiss = sys.modules.get("faiss")
    if faiss is not None:
        faiss.omp_set_num_threads(threads)


def _trainable(config: dict) -> None:
    """Tune function trainable: run one trial, reporting (and checkpointing) per experience."""
    import warnings

    warnings.filterwarnings("ignore")
    import avalanche.training  # noqa: F401  (imported before the trial's clock starts)

    from clmem.runner import run_trial

    started = time.perf_counter()
    trial = config["job"]["trial"]
    _limit_threads(trial["resources"]["cpu"])
    checkpoint = tune.get_checkpoint()
    resume = None
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            resume = _load_state(directory)
    if resume is None:
        resume = _load_state(config["job"].get("resume_checkpoint"))
    run_trial(trial, lambda i, r: _report(i, r, trial["key"], started), checkpointing=True, resume=resume)


class MlflowDriverCallback(tune.Callback):
    """Logs each Tune trial as a child MLflow run of the grid's parent run, from the driver."""

    def __init__(self, tracker: Tracker, experiment: Experiment, parent_id: str, total: int,
                 existing: dict[str, tuple[str, int]] | None = None, progress: Callable[[str], None] = print):
        self.tracker, self.experiment, self.parent_id = tracker, experiment, parent_id
        self.total, self.progress = total, progress
        self.existing = dict(existing or {})  # trial key -> (run id to continue, its last logged experience)
        self.run_ids: dict[str, str] = {}
        self.last_step: dict[str, int] = {}
        self.last: dict[str, dict] = {}
        self.ended: set[str] = set()
        self.done = self.failed = 0

    def _run_id(self, trial) -> str:
        if trial.trial_id not in self.run_ids:
            spec = trial.config["job"]["trial"]
            if spec["key"] in self.existing:
                run_id, logged = self.existing[spec["key"]]
                self.tracker.reopen(run_id)
                self.last_step[run_id] = logged
            else:
                run_id = self.tracker.start_trial(self.parent_id, self.experiment.name, spec)
                self.last_step[run_id] = -1
            self.run_ids[trial.trial_id] = run_id
        return self.run_ids[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info):
        self._run_id(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        result = {k: v for k, v in result.items() if k not in TUNE_AUTO_KEYS}
        run_id = self._run_id(trial)
        self.last[trial.trial_id] = result
        if result["experience"] <= self.last_step[run_id]:
            return  # already logged by an earlier attempt
        if self.last_step[run_id] == -1 or "resumed_from" in result:
            tags = {"clmem.node_id": result.get("node_id"), "clmem.worker_pid": result.get("worker_pid"),
                    "clmem.device": result.get("device"), "clmem.metric": result.get("metric")}
            if "resumed_from" in result:
                tags["clmem.resumed_from"] = result["resumed_from"]
            self.tracker.set_tags(run_id, tags)
            self._warn_fallback(trial.config["job"]["trial"], result)
        self.tracker.log_experience(run_id, result)
        self.last_step[run_id] = result["experience"]
        spec = trial.config["job"]["trial"]
        self.progress(
            f"[{self.done}/{self.total} trials done] trial {spec['index']} ({spec['strategy']['name']}, "
            f"seed {spec['seed']}): experience {result['experience'] + 1}/{result['experiences_total']}, "
            f"seen accuracy {result['seen_acc']:.3f}")

    def _warn_fallback(self, spec: dict, result: dict) -> None:
        if spec["resources"]["gpu"] > 0 and result.get("device") == "cpu":
            self.progress(f"warning: trial {spec['index']} asked for a GPU but CUDA is not available on "
                          f"node {result.get('node_id')}: it runs on the CPU")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.progress(f"trial {trial.config['job']['trial']['index']} failed; retrying from its last checkpoint")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        self._end(trial, "FINISHED")
        self.progress(f"trial {trial.config['job']['trial']['index']} finished ({self.done}/{self.total} done)")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.done += 1
        self.failed += 1
        self._end(trial, "FAILED")
        self.progress(f"trial {trial.config['job']['trial']['index']} FAILED (Ray logs: {trial.local_path})")

    def _end(self, trial, status: str) -> None:
        run_id = self._run_id(trial)
        self.tracker.finish_trial(run_id, self.last.get(trial.trial_id), status)
        self.ended.add(run_id)

    def end_unfinished(self) -> int:
        """Mark runs of trials that never ended KILLED (interrupted grid); returns how many."""
        left = [r for r in self.run_ids.values() if r not in self.ended]
        for run_id in left:
            self.tracker.end_run(run_id, "KILLED")
        return len(left)


def _trial_name(trial) -> str:
    spec = trial.config["job"]["trial"]
    return f"trial_{spec['index']:04d}_{spec['key']}"


def init_ray(address: str | None) -> bool:
    """Join ``address`` or start a local Ray on this machine's CPUs; True if we started it.

    No ``worker_process_setup_hook`` warms the workers: Ray 2.60 starts a job's workers only
    when its trial actors are created, so a hook would import torch/Avalanche no earlier than the
    trial function does (and, in a one-off measurement noted on issue 6, with more CPU time). The
    trial function imports them before its clock starts.
    """
    if ray.is_initialized():
        return False
    kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=os.cpu_count(), **kwargs)
    return True


def storage_root(storage_path: str | None = None) -> Path:
    return Path(storage_path or os.environ.get("CLMEM_RAY_STORAGE", "ray_results")).resolve()


def latest_checkpoint(storage: Path, experiment: str, parent_id: str, key: str,
                      up_to: int | None = None) -> str | None:
    """The newest Ray checkpoint (by experience, at most ``up_to``) of trial ``key`` in any run of
    this grid. A trial writes its checkpoint before the driver logs that experience: after an
    interrupt, a checkpoint can be newer than the MLflow run, and resuming from it would leave
    an experience unlogged, so ``--resume`` passes the run's last logged experience as ``up_to``."""
    best, best_exp = None, -1
    for meta in storage.glob(f"{experiment}-{parent_id[:8]}*/trial_*_{key}/checkpoint_*/meta.json"):
        experience = json.loads(meta.read_text())["experience"]
        if experience > best_exp and (up_to is None or experience <= up_to):
            best, best_exp = str(meta.parent), experience
    return best


def _resume_plan(experiment: Experiment, tracker: Tracker, storage: Path):
    """(parent id, jobs still to run, {key: (run id, last logged experience)} of the interrupted trials) for
    ``--resume``. A trial's checkpoint is capped at its last logged experience (see :func:`latest_checkpoint`)."""
    parent = tracker.find_grid(experiment)
    if parent is None:
        raise ConfigError("--resume", f"no earlier grid of experiment {experiment.name!r} with these "
                                      f"trials in {tracker.uri} (run it without --resume)")
    parent_id = parent.info.run_id
    finished, existing = set(), {}
    for run in sorted(tracker.children(parent), key=lambda r: r.info.start_time):
        key = run.data.tags.get("clmem.trial_key")
        if run.info.status == "FINISHED":
            finished.add(key)
        else:
            existing[key] = (run.info.run_id, tracker.last_step(run.info.run_id))
    jobs = [{"trial": t, "resume_checkpoint": latest_checkpoint(
                storage, experiment.name, parent_id, t["key"], up_to=existing[t["key"]][1])
             if t["key"] in existing else None}
            for t in experiment.trials if t["key"] not in finished]
    return parent_id, jobs, existing


def shutdown_ray(started: bool) -> None:
    """Stop Ray if this process started it (``started`` as returned by :func:`init_ray`)."""
    if started:
        ray.shutdown()


def _plan(experiment: Experiment, tracker: Tracker, storage: Path, resume: bool, progress):
    """(parent run id, jobs to run, interrupted runs per key as in :func:`_resume_plan`): a new parent run, or
    the resume plan."""
    if not resume:
        return tracker.start_parent(experiment, "grid"), [
            {"trial": t, "resume_checkpoint": None} for t in experiment.trials], {}
    parent_id, jobs, existing = _resume_plan(experiment, tracker, storage)
    tracker.reopen(parent_id)
    progress(f"resuming grid {parent_id}: {len(experiment.trials) - len(jobs)} trials already "
             f"finished, {len(jobs)} to run ({len(existing)} of them continue an interrupted run)")
    return parent_id, jobs, existing


def run_grid(experiment: Experiment, tracker: Tracker, address: str | None = None,
             max_concurrent: int | None = None, storage_path: str | None = None,
             progress: Callable[[str], None] = print, resume: bool = False) -> tuple[str, int]:
    """Run the grid of ``experiment`` on Ray Tune; returns (parent run id, failed trials)."""
    storage = storage_root(storage_path)
    started = init_ray(address)  # no-op when the caller started Ray (clmem grid does)
    try:
        parent_id, jobs, existing = _plan(experiment, tracker, storage, resume, progress)
    except BaseException:
        shutdown_ray(started)
        raise
    if not jobs:
        tracker.end_run(parent_id, "FINISHED")
        shutdown_ray(started)
        return parent_id, 0
    callback = MlflowDriverCallback(tracker, experiment, parent_id, len(jobs), existing, progress)
    status = "KILLED"
    try:
        _fit(experiment, jobs, callback, storage, parent_id, max_concurrent, resume)
        status = "FINISHED" if callback.done == len(jobs) and not callback.failed else (
            "FAILED" if callback.done == len(jobs) else "KILLED")
    finally:
        if callback.end_unfinished():
            status = "KILLED"
        tracker.end_run(parent_id, status)
        shutdown_ray(started)
    if status == "KILLED":
        raise KeyboardInterrupt(f"grid interrupted; continue it with --resume (parent run {parent_id})")
    return parent_id, callback.failed


def _fit(experiment, jobs, callback, storage: Path, parent_id: str, max_concurrent, resume: bool):
    resources = experiment.trials[0]["resources"]
    trainable = tune.with_resources(_trainable, {"cpu": resources["cpu"], "gpu": resources["gpu"]})
    suffix = f"-resume{int(time.time())}" if resume else ""
    tuner = tune.Tuner(
        trainable,
        param_space={"job": tune.grid_search(jobs)},
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent, reuse_actors=True,
                                    trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
        run_config=tune.RunConfig(
            name=f"{experiment.name}-{parent_id[:8]}{suffix}", storage_path=str(storage), verbose=0,
            callbacks=[callback],
            failure_config=tune.FailureConfig(max_failures=experiment.max_failures),
            # num_to_keep would force a Tune experiment snapshot every num_to_keep checkpoints
            # (one per experience): a measured bottleneck. Checkpoints are small (model, optimizer,
            # plugin state) and one is written per experience.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
        ),
    )
    # Tune's ResultGrid looks for the result.json/progress.csv its auto loggers would have written
    # (disabled above: results are in MLflow) and warns once per trial; clmem does not use it.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    tuner.fit()
