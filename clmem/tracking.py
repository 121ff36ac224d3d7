"""The MLflow adapter: the only clmem module that imports mlflow.

All writes go through one :class:`Tracker` in the driver process (Ray trials report to the
driver, which logs), so parallel trials never write one SQLite file concurrently.

Layout: a grid is a parent run (tag ``clmem.kind=grid``); each trial is a child run (tag
``mlflow.parentRunId``) with flat dotted params, per-experience metrics (step = experience index),
summary metrics, ``R.json`` and ``R.png`` artifacts and the resolved trial as ``trial.yaml``.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import yaml

from clmem.options import ConfigError, check_name, flatten, shown

if TYPE_CHECKING:  # compare/ui need no torch or Avalanche: the catalog stays unimported
    from clmem.config import Experiment

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
_NOT_METRICS = ("R", "b", "experience", "experiences_total", "worker_pid", "resumed_from", "restart_reason")
#: Report keys logged as run tags: what the score is and its direction (read by clmem.compare).
_SCORE_TAGS = {"metric": "clmem.metric", "higher_is_better": "clmem.higher_is_better"}
#: Tag of a FAILED trial run: the one-line reason (e.g. a NonFiniteError's message).
ERROR_TAG = "clmem.error"


#: Tracking-store URI schemes MLflow supports (``postgresql+psycopg2``-style driver suffixes allowed).
URI_SCHEMES = ("file", "sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")
#: Seconds a process waits for another one initialising the same new SQLite store.
STORE_LOCK_TIMEOUT_S = 300


def check_tracking_uri(uri: str, path: str = "tracking_uri") -> str:
    """``uri`` when it is a plain path or a URI whose scheme MLflow supports, else a :class:`ConfigError`."""
    if not isinstance(uri, str) or not uri.strip():
        raise ConfigError(path, f"expected a path or a URI, got {shown(uri)}")
    if "://" not in uri:  # a plain path (a SQLite file), or the bare 'databricks' profile URI
        return uri
    scheme = uri.split("://", 1)[0].lower()
    if scheme.split("+", 1)[0] not in URI_SCHEMES:
        raise ConfigError(path, f"unsupported URI scheme {shown(scheme)} (expected a path or a URI "
                                f"with one of: {', '.join(URI_SCHEMES)})")
    return uri


def resolve_tracking_uri(uri: str | None) -> str:
    """CLI/file URI, else ``$MLFLOW_TRACKING_URI``, else ``./mlflow.db``; SQLite paths made absolute."""
    if not uri and os.environ.get("MLFLOW_TRACKING_URI"):
        uri = check_tracking_uri(os.environ["MLFLOW_TRACKING_URI"], "$MLFLOW_TRACKING_URI")
    uri = check_tracking_uri(uri or DEFAULT_TRACKING_URI)
    if "://" not in uri and uri != "databricks":
        return f"sqlite:///{Path(uri).resolve()}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    return uri


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def store_lock(uri: str):
    """A lock held while a process opens (for a new file: creates and migrates) a SQLite store, so that
    two grids, or a grid and the UI, starting on the same new file never run MLflow's migrations at
    once. A file lock (``<db>.lock``, released by the OS if its holder dies); no-op for other stores."""
    db = _sqlite_path(uri)
    if db is None:
        return contextlib.nullcontext()
    from filelock import FileLock

    return FileLock(f"{db}.lock", timeout=STORE_LOCK_TIMEOUT_S)


class Tracker:
    """Creates and fills the MLflow runs of grids and trials through one ``MlflowClient``.

    With ``connect_in_background`` the client is made, and the store opened (for a new SQLite file:
    MLflow's schema migrations, about 2 s), in a thread: a grid starts Ray meanwhile. The first use
    of :attr:`client` waits for it and raises what the connection raised. A SQLite store is always
    opened at once, under :func:`store_lock`, so concurrent first uses of a new file cannot race.
    """

    def __init__(self, tracking_uri: str | None = None, connect_in_background: bool = False):
        import logging

        logging.getLogger("alembic").setLevel(logging.WARNING)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self.uri = resolve_tracking_uri(tracking_uri)
        self._client = None
        self._error: BaseException | None = None
        self._connected = threading.Event()
        if connect_in_background:
            threading.Thread(target=self._connect, args=(True,), name="clmem-mlflow-connect",
                             daemon=True).start()
        else:
            self._connect(False)

    def _connect(self, open_store: bool) -> None:
        try:
            from mlflow.tracking import MlflowClient

            with store_lock(self.uri):  # a SQLite store is created and migrated under the lock
                self._client = MlflowClient(tracking_uri=self.uri)
                if open_store or _sqlite_path(self.uri) is not None:
                    self._client.search_experiments(max_results=1)
        except BaseException as exc:  # re-raised by the first use of .client
            self._error = exc
        finally:
            self._connected.set()

    @property
    def client(self):
        """The ``MlflowClient`` (waits for a background connection to finish)."""
        self._connected.wait()
        if self._error is not None:
            raise self._error
        return self._client

    def __getstate__(self) -> dict:  # Ray Tune pickles its callbacks, and this with them
        self._connected.wait()
        return {k: v for k, v in self.__dict__.items() if k != "_connected"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._connected = threading.Event()
        self._connected.set()

    # ---- experiments and runs -------------------------------------------------------------
    def experiment_id(self, name: str, create: bool = True) -> str | None:
        check_name("name", name)  # it reaches the artifact path below
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        if not create:
            return None
        db = _sqlite_path(self.uri)
        location = (db.parent / "mlartifacts" / name).resolve().as_uri() if db else None
        exp_id = self.client.create_experiment(name, artifact_location=location)
        # MLflow 3's UI opens experiments of this kind on their run table (not the GenAI overview)
        self.client.set_experiment_tag(exp_id, "mlflow.experimentKind", "custom_model_development")
        return exp_id

    def start_parent(self, experiment: Experiment, kind: str = "grid", tags: dict | None = None) -> str:
        """A parent run for ``experiment`` holding the experiment file and its grid axes."""
        exp_id = self.experiment_id(experiment.name)
        all_tags = {"clmem.kind": kind, "clmem.axes": json.dumps(experiment.axes),
                    "clmem.grid_hash": grid_hash(experiment),
                    "clmem.num_trials": str(len(experiment.trials)),
                    "clmem.source": str(experiment.source or ""), **(tags or {})}
        run = self.client.create_run(exp_id, tags=all_tags, run_name=f"{experiment.name}-{kind}")
        run_id = run.info.run_id
        self.client.log_param(run_id, "num_trials", len(experiment.trials))
        self._log_text(run_id, yaml.safe_dump(experiment.raw, sort_keys=False), "experiment.yaml")
        return run_id

    def start_trial(self, parent_id: str | None, experiment_name: str, trial: dict) -> str:
        """A child run for one resolved trial, with its flat params and ``trial.yaml``."""
        exp_id = self.experiment_id(experiment_name)
        tags = {"clmem.kind": "trial", "clmem.trial_key": trial["key"],
                "clmem.trial_index": str(trial["index"])}
        if parent_id:
            tags["mlflow.parentRunId"] = parent_id
        name = f"{trial['strategy']['name']}-s{trial['seed']}-t{trial['index']:03d}"
        run_id = self.client.create_run(exp_id, tags=tags, run_name=name).info.run_id
        params = {k: v for k, v in flatten(trial).items() if k not in ("index", "key")}
        self._log_params(run_id, params)
        self._log_text(run_id, yaml.safe_dump(trial, sort_keys=False), "trial.yaml")
        return run_id

    def log_experience(self, run_id: str, report: dict) -> None:
        """Per-experience metrics of one report (step = experience index); the report's score and its
        direction (``metric``, ``higher_is_better``) become the tags ``clmem.metric``/``clmem.higher_is_better``."""
        from mlflow.entities import Metric, RunTag

        step, now = int(report["experience"]), int(time.time() * 1000)
        items = [(k, v) for k, v in report.items() if k not in _NOT_METRICS and _is_number(v)]
        tags = [RunTag(tag, str(report[k])) for k, tag in _SCORE_TAGS.items() if report.get(k) is not None]
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in items], tags=tags)

    def finish_trial(self, run_id: str, report: dict | None, status: str = "FINISHED",
                     error: str | None = None) -> None:
        """Log R (JSON + heatmap) from the last report and end the run with ``status``. A FAILED run gets
        the tag ``clmem.error``: ``error``, or else :func:`failure_message` of the exception being raised
        (when called from a ``finally`` block around the trial)."""
        if report and "R" in report:
            self._log_matrix(run_id, report["R"], report.get("b"), report.get("R_png"))
        if report and report.get("memory_png"):
            self._log_png(run_id, report["memory_png"], "memory.png")
        message = (error or failure_message()) if status == "FAILED" else None
        if message:
            self.set_tags(run_id, {ERROR_TAG: message})
        self.client.set_terminated(run_id, status=status)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def reopen(self, run_id: str) -> None:
        """Mark an ended or interrupted run RUNNING again (resumed grids and trials)."""
        self.client.update_run(run_id, status="RUNNING")

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def last_step(self, run_id: str, metric: str = "seen_acc") -> int:
        """The highest step logged for ``metric`` (-1 when none): where a resumed run goes on."""
        history = self.client.get_metric_history(run_id, metric)
        return max((m.step for m in history), default=-1)

    def find_grid(self, experiment: Experiment):
        """The latest grid parent run of ``experiment`` with exactly this file's trials, or None."""
        exp_id = self.experiment_id(experiment.name, create=False)
        if exp_id is None:
            return None
        flt = (f"tags.`clmem.kind` = 'grid' and tags.`clmem.grid_hash` = '{grid_hash(experiment)}'")
        runs = self.client.search_runs([exp_id], flt, order_by=["attributes.start_time DESC"],
                                       max_results=1)
        return runs[0] if runs else None

    # ---- reading back ---------------------------------------------------------------------
    def latest_parent(self, experiment_name: str, kind: str = "grid"):
        exp_id = self.experiment_id(experiment_name, create=False)
        if exp_id is None:
            return None
        runs = self.client.search_runs([exp_id], f"tags.`clmem.kind` = '{kind}'",
                                       order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0] if runs else None

    def children(self, parent_run) -> list:
        exp_id = parent_run.info.experiment_id
        flt = f"tags.`mlflow.parentRunId` = '{parent_run.info.run_id}'"
        return self._search_all(exp_id, flt)

    def _search_all(self, exp_id: str, flt: str) -> list:
        runs, token = [], None
        while True:
            page = self.client.search_runs([exp_id], flt, max_results=1000, page_token=token)
            runs += list(page)
            token = page.token
            if not token:
                return runs

    # ---- helpers --------------------------------------------------------------------------
    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, "null" if v is None else str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i:i + 100])

    def _log_text(self, run_id: str, text: str, name: str) -> None:
        self.client.log_text(run_id, text, name)

    def _log_png(self, run_id: str, png_base64: str, name: str) -> None:
        import base64

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_bytes(base64.b64decode(png_base64))
            self.client.log_artifact(run_id, str(path))

    def _log_matrix(self, run_id: str, R, b, png_base64: str | None = None) -> None:
        """``R.json`` and the ``R.png`` heatmap (given pre-rendered as base64, or rendered here)."""
        from clmem.plots import accuracy_heatmap, png_base64 as render

        self._log_text(run_id, json.dumps({"R": R, "b": b}, indent=1), "R.json")
        self._log_png(run_id, png_base64 or render(accuracy_heatmap, R), "R.png")


def failure_message(limit: int = 500) -> str | None:
    """One line for the exception being handled or raised right now (None when there is none):
    ``"Type: message"``, the message's last non-empty line (a wrapped remote traceback ends with the
    original error), at most ``limit`` characters."""
    import sys

    exc = sys.exc_info()[1]
    if exc is None:
        return None
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[-1] if lines else ""
    if not text.startswith(type(exc).__name__):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text[:limit]


def grid_hash(experiment: Experiment) -> str:
    """Identifies a grid by its trials (same resolved trials → same hash)."""
    import hashlib

    keys = ",".join(sorted(t["key"] for t in experiment.trials))
    return hashlib.sha1(keys.encode()).hexdigest()[:16]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def params_of(run) -> dict[str, str]:
    return dict(run.data.params)


def metrics_of(run) -> dict[str, float]:
    return dict(run.data.metrics)


def parse_axes(parent_run) -> list[str]:
    return json.loads(parent_run.data.tags.get("clmem.axes", "[]"))


def runs_table(runs: Iterable) -> list[dict]:
    """Each run as ``{params, metrics, status, tags}`` (metrics hold the latest value of each key)."""
    return [{"params": params_of(r), "metrics": metrics_of(r), "status": r.info.status, "tags": dict(r.data.tags)}
            for r in runs]
