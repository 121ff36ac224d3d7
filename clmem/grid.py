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

from clmem import ray_reaper  # noqa: E402
from clmem.config import Experiment  # noqa: E402
from clmem.options import ConfigError  # noqa: E402
from clmem.sizing import available_memory, check_fits, plan_request  # noqa: E402
from strategies.checkpoint import checkpoint_dirs, resume_state, write_checkpoint  # noqa: E402

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


def _report(experience: int, report: dict, key: str, started: float, note: list[str]) -> None:
    if note:  # the first report of an attempt that skipped damaged checkpoints
        report["checkpoint_note"] = note.pop()
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
            write_checkpoint(tmp, state, {"experience": experience, "key": key})
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
    job, checkpoint = config["job"], tune.get_checkpoint()
    where = (Path(job["storage"]), job["grid"], trial["key"])
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            resume, note = resume_state(*where, latest=directory)
    else:
        resume, note = resume_state(*where, up_to=job.get("resume_up_to"))
    notes = [note] if note else []
    run_trial(trial, lambda i, r: _report(i, r, trial["key"], started, notes), checkpointing=True, resume=resume)


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
        self.gpu_fallback = False  # the whole grid runs on the CPU (announced once by run_grid)
        self.retried: set[str] = set()     # Tune trial ids retried since their last report
        self.announced: set[str] = set()   # Tune trial ids whose (re)start was announced

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
        spec = trial.config["job"]["trial"]
        if result.get("checkpoint_note"):  # this attempt passed over damaged checkpoints
            self.tracker.set_tags(run_id, {"clmem.checkpoint_fallback": result["checkpoint_note"][:4000]})
            self.progress(f"warning: trial {spec['index']}: {result['checkpoint_note']}")
        if self.last_step[run_id] == -1 or "resumed_from" in result:
            tags = {"clmem.node_id": result.get("node_id"), "clmem.worker_pid": result.get("worker_pid"),
                    "clmem.device": result.get("device"), "clmem.metric": result.get("metric")}
            if "resumed_from" in result:
                tags["clmem.resumed_from"] = result["resumed_from"]
                if result.get("restart_reason"):
                    tags["clmem.restart_reason"] = str(result["restart_reason"])[:4000]
            self.tracker.set_tags(run_id, tags)
            self._warn_fallback(spec, result)
        self._announce_start(trial, spec, result)
        if result["experience"] <= self.last_step[run_id]:
            return  # already logged by an earlier attempt
        self.tracker.log_experience(run_id, result)
        self.last_step[run_id] = result["experience"]
        self.progress(
            f"[{self.done}/{self.total} trials done] trial {spec['index']} ({spec['model']['name']}, "
            f"{spec['strategy']['name']}, seed {spec['seed']}): experience {result['experience'] + 1}/"
            f"{result['experiences_total']}, {str(result.get('metric', 'accuracy')).replace('_', ' ')} on "
            f"experiences seen {result['seen_acc']:.3f}")

    def _warn_fallback(self, spec: dict, result: dict) -> None:
        if spec["resources"]["gpu"] > 0 and result.get("device") == "cpu" and not self.gpu_fallback:
            self.progress(f"warning: trial {spec['index']} asked for a GPU but CUDA is not available on "
                          f"node {result.get('node_id')}: it runs on the CPU")

    def on_trial_recover(self, iteration, trials, trial, **info):
        # whether the retry continues or restarts is only known when it reports (see _announce_start)
        self.progress(f"trial {trial.config['job']['trial']['index']} failed; Ray retries it")
        self.retried.add(trial.trial_id)

    def _announce_start(self, trial, spec: dict, result: dict) -> None:
        """On the first report of a retried or ``--resume``d attempt: whether it continued after its last
        checkpoint or restarted from the first experience (the report's ``resumed_from``)."""
        if "resumed_from" not in result or (trial.trial_id in self.announced and trial.trial_id not in self.retried):
            return
        self.retried.discard(trial.trial_id)
        self.announced.add(trial.trial_id)
        begun = result["resumed_from"]
        if begun >= 0:
            self.progress(f"trial {spec['index']} continues after experience {begun + 1} (its last checkpoint)")
        else:
            self.progress(f"trial {spec['index']} restarts from the first experience: "
                          f"{result.get('restart_reason') or 'no saved state'}")

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


class _NoRestoreHint(logging.Filter):
    """Drops Ray Tune's "Resume experiment with: Tuner.restore(...)" advice: a clmem grid continues with
    ``clmem grid FILE --resume``, which clmem prints itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return "Tuner.restore(" not in text and "Resume experiment with" not in text


def quiet_restore_hint() -> None:
    """Install :class:`_NoRestoreHint` on Tune's loggers once."""
    for name in ("ray.tune.tune", "ray.tune"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoRestoreHint) for f in logger.filters):
            logger.addFilter(_NoRestoreHint())


def _trial_name(trial) -> str:
    spec = trial.config["job"]["trial"]
    return f"trial_{spec['index']:04d}_{spec['key']}"


def init_ray(address: str | None, progress: Callable[[str], None] = print) -> bool:
    """Join ``address`` or start a local Ray on this machine's CPUs; True if we started it.

    Before starting a local Ray it ends the Ray processes a killed earlier driver left behind, and records
    its own (:mod:`clmem.ray_reaper`).

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
        return True
    for driver, count in ray_reaper.reap_stale():  # Ray processes of a killed earlier driver
        progress(f"ended {count} Ray processes left by an earlier clmem driver (pid {driver}) that was killed")
    ray.init(num_cpus=os.cpu_count(), **kwargs)
    node = getattr(ray._private.worker, "_global_node", None)
    ray_reaper.record_driver(node.get_session_dir_path() if node is not None else None)
    return True


#: Seconds ``clmem grid --address`` waits for a cluster (an autoscaler) to offer a node that holds one
#: trial before it refuses, or runs trials asking for a GPU on the CPU when no node has a GPU.
RESOURCE_WAIT_ENV, RESOURCE_WAIT_S = "CLMEM_RESOURCE_WAIT_S", 600.0


def _alive_nodes() -> list[dict]:
    return [{"cpu": n["Resources"].get("CPU", 0.0), "gpu": n["Resources"].get("GPU", 0.0),
             "memory": n["Resources"].get("memory", 0.0)} for n in ray.nodes() if n.get("Alive")]


def _check_nodes(experiment: Experiment, nodes: list[dict], where: str, local: bool, fallback: bool):
    request, gpu_fallback = plan_request(experiment.trials[0]["resources"], nodes, where)
    if gpu_fallback and not fallback:
        raise ConfigError("resources.gpu", f"no node of {where} has a GPU yet")
    memory = available_memory() if local else max((n["memory"] for n in nodes), default=0.0)
    if memory:
        for trial in experiment.trials:
            check_fits(trial, int(memory), where)
    return request, gpu_fallback


def cluster_request(experiment: Experiment, address: str | None, progress: Callable[[str], None] = print,
                    wait_s: float | None = None) -> tuple[dict, bool]:
    """(Ray resources per trial, whether trials asking for a GPU run on the CPU) for the connected Ray.

    A trial must fit one alive node (CPUs, GPUs, memory: :mod:`clmem.sizing`). The local Ray is what
    it is: a request it cannot hold is a :class:`ConfigError` at once, and ``gpu > 0`` without a GPU
    falls back to the CPU. A cluster (``address``) is asked to scale up (``request_resources``) and
    given ``wait_s`` seconds (``$CLMEM_RESOURCE_WAIT_S``, default 600) to offer such a node; then the
    same rules apply: never an endless wait for resources that do not exist.
    """
    where = f"the Ray cluster at {address}" if address else "the local Ray (this machine)"
    if wait_s is None:
        wait_s = float(os.environ.get(RESOURCE_WAIT_ENV, RESOURCE_WAIT_S)) if address else 0.0
    deadline, asked = time.monotonic() + wait_s, False
    while True:
        last = time.monotonic() >= deadline
        try:
            request, fallback = _check_nodes(experiment, _alive_nodes(), where, not address, fallback=last)
            break
        except ConfigError as err:
            if last:
                raise (err.in_file(experiment.source) if experiment.source else err) from None
        if not asked:
            from ray.autoscaler.sdk import request_resources

            resources = experiment.trials[0]["resources"]
            request_resources(bundles=[{"CPU": resources["cpu"], "GPU": resources["gpu"]}])
            progress(f"waiting up to {wait_s:g} s (${RESOURCE_WAIT_ENV}) for {where} to offer a node with "
                     f"{resources['cpu']:g} CPU and {resources['gpu']:g} GPU for one trial")
            asked = True
        time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
    if asked:  # Tune's own demand keeps what is needed from here on
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[])
    if fallback:
        progress(f"warning: resources.gpu is {experiment.trials[0]['resources']['gpu']:g} but {where} has no "
                 f"GPU: every trial runs on the CPU (tag clmem.gpu_fallback)")
    return request, fallback


def storage_root(storage_path: str | None = None) -> Path:
    return Path(storage_path or os.environ.get("CLMEM_RAY_STORAGE", "ray_results")).resolve()


def latest_checkpoint(storage: Path, experiment: str, parent_id: str, key: str,
                      up_to: int | None = None) -> str | None:
    """The newest Ray checkpoint (by experience, at most ``up_to``) of trial ``key`` in any run of
    this grid (directories with a damaged ``meta.json`` are passed over). A trial writes its checkpoint
    before the driver logs that experience: after an interrupt, a checkpoint can be newer than the MLflow
    run, and resuming from it would leave an experience unlogged, so ``--resume`` bounds the checkpoints
    by the run's last logged experience (``resume_up_to``, see :func:`strategies.checkpoint.resume_state`)."""
    found, _ = checkpoint_dirs(storage, grid_prefix(experiment, parent_id), key, up_to)
    return found[0] if found else None


def grid_prefix(experiment_name: str, parent_id: str) -> str:
    """Name (prefix) of the grid's Tune runs under the storage: ``<experiment>-<parent run id[:8]>``."""
    return f"{experiment_name}-{parent_id[:8]}"


def _job(trial: dict, storage: Path, parent_id: str, name: str, resume_up_to: int | None = None) -> dict:
    return {"trial": trial, "storage": str(storage), "grid": grid_prefix(name, parent_id),
            "resume_up_to": resume_up_to}


def _resume_plan(experiment: Experiment, tracker: Tracker, storage: Path):
    """(parent id, jobs still to run, {key: (run id, last logged experience)} of the interrupted trials) for
    ``--resume``. A trial's checkpoints are capped at its last logged experience (see :func:`latest_checkpoint`)."""
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
    jobs = [_job(t, storage, parent_id, experiment.name, existing[t["key"]][1] if t["key"] in existing else None)
            for t in experiment.trials if t["key"] not in finished]
    return parent_id, jobs, existing


def shutdown_ray(started: bool) -> None:
    """Stop Ray if this process started it (``started`` as returned by :func:`init_ray`)."""
    if started:
        ray.shutdown()
        ray_reaper.forget_driver()


def _plan(experiment: Experiment, tracker: Tracker, storage: Path, resume: bool, progress):
    """(parent run id, jobs to run, interrupted runs per key as in :func:`_resume_plan`): a new parent run, or
    the resume plan."""
    if not resume:
        parent_id = tracker.start_parent(experiment, "grid")
        return parent_id, [_job(t, storage, parent_id, experiment.name) for t in experiment.trials], {}
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
        request, gpu_fallback = cluster_request(experiment, address, progress)
        parent_id, jobs, existing = _plan(experiment, tracker, storage, resume, progress)
        if gpu_fallback:
            tracker.set_tags(parent_id, {"clmem.gpu_fallback": "true"})
    except BaseException:
        shutdown_ray(started)
        raise
    if not jobs:
        tracker.end_run(parent_id, "FINISHED")
        shutdown_ray(started)
        return parent_id, 0
    callback = MlflowDriverCallback(tracker, experiment, parent_id, len(jobs), existing, progress)
    callback.gpu_fallback = gpu_fallback
    status = "KILLED"
    try:
        _fit(experiment, jobs, callback, storage, parent_id, max_concurrent, resume, request)
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


def _fit(experiment, jobs, callback, storage: Path, parent_id: str, max_concurrent, resume: bool,
         request: dict):
    trainable = tune.with_resources(_trainable, {"cpu": request["cpu"], "gpu": request["gpu"]})
    suffix = f"-resume{int(time.time())}" if resume else ""
    tuner = tune.Tuner(
        trainable,
        param_space={"job": tune.grid_search(jobs)},
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent, reuse_actors=True,
                                    trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
        run_config=tune.RunConfig(
            name=f"{grid_prefix(experiment.name, parent_id)}{suffix}", storage_path=str(storage), verbose=0,
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
    quiet_restore_hint()
    tuner.fit()
