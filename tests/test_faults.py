"""Faults and resume through real Ray Tune and a real MLflow store: retries, checkpoints, --resume."""
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient

from clmem.cli import main
from clmem.config import Experiment
from clmem.grid import FAULT_ENV
from clmem.runner import run_trial

pytestmark = pytest.mark.slow


def grid(strategy, seeds, **extra):
    raw = {
        "name": "faults",
        "benchmark": {"name": "split_digits", "n_experiences": 5, "per_class": 30},
        "model": {"name": "mlp", "hidden_size": 32, "num_layers": 1},
        "strategy": {"name": strategy, "train_epochs": 2, "lr": 0.05},
        "seeds": seeds,
        "resources": {"cpu": 1},
    }
    raw.update(extra)
    return raw


def write(tmp_path, raw):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def trial_runs(uri):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("faults")
    runs = client.search_runs([exp.experiment_id])
    return client, [r for r in runs if r.data.tags.get("clmem.kind") == "trial"]


def assert_logged_once(client, run):
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "seen_acc")]
    assert sorted(steps) == [0, 1, 2, 3, 4], steps


def leftover_processes(group: int) -> list:
    """Live processes of process group ``group`` (the killed driver's session)."""
    found = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == group and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return found


def crashing_grid(tmp_path, monkeypatch, strategy, crash_after, max_failures):
    """Run a one-trial grid whose trial process exits hard once after ``crash_after``: (exit code, uri)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(FAULT_ENV, f"{crash_after}:{tmp_path / 'crashed'}")
    file = write(tmp_path, grid(strategy, [0], max_failures=max_failures))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    return main(["grid", str(file), "--tracking-uri", uri]), uri


def test_killed_trial_is_retried_and_resumes_from_last_experience(tmp_path, monkeypatch, capsys):
    code, uri = crashing_grid(tmp_path, monkeypatch, "naive", crash_after=1, max_failures=1)
    assert code == 0
    out = capsys.readouterr().out
    assert "trial 0 failed; Ray retries it" in out and "trial 0 continues after experience 2" in out, out
    assert (tmp_path / "crashed").exists()  # the trial process really died once
    client, runs = trial_runs(uri)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["clmem.resumed_from"] == "1"
    assert_logged_once(client, run)
    # the resumed trial ends exactly where an uninterrupted one does
    reference = run_trial(Experiment.from_dict(grid("naive", [0])).trials[0])
    assert run.data.metrics["ACC"] == pytest.approx(reference.summary["ACC"], abs=1e-6)
    assert run.data.metrics["BWT"] == pytest.approx(reference.summary["BWT"], abs=1e-6)
    # every metric, Avalanche's own included (its forgetting history is checkpointed too)
    for name, value in reference.avalanche.items():
        assert run.data.metrics[name] == pytest.approx(value, abs=1e-6), name


def test_non_resumable_strategy_restarts_and_logs_nothing_twice(tmp_path, monkeypatch, capsys):
    code, uri = crashing_grid(tmp_path, monkeypatch, "replay", crash_after=2, max_failures=1)
    assert code == 0
    out = capsys.readouterr().out
    assert "trial 0 restarts from the first experience: strategy class" in out and "checkpoint" not in out, out
    client, runs = trial_runs(uri)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["clmem.resumed_from"] == "-1"  # replay buffer has no state_dict
    assert "keeps state without a state_dict" in runs[0].data.tags["clmem.restart_reason"]
    assert_logged_once(client, runs[0])


def test_trial_failing_beyond_max_failures_ends_failed_not_running(tmp_path, monkeypatch):
    code, uri = crashing_grid(tmp_path, monkeypatch, "naive", crash_after=0, max_failures=0)
    assert code == 1
    client, runs = trial_runs(uri)
    assert [r.info.status for r in runs] == ["FAILED"]
    parent = client.get_run(runs[0].data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FAILED"


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_resume_after_driver_killed_runs_only_missing_trials(tmp_path, how):
    file = write(tmp_path, grid("naive", [0, 1, 2]))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cmd = [sys.executable, "-m", "clmem", "grid", str(file), "--tracking-uri", uri, "--max-concurrent", "1"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    deadline = time.time() + 240
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "finished (1/3 done)" in line or time.time() > deadline:
            break
    if how == "SIGKILL":
        os.kill(proc.pid, signal.SIGKILL)  # the driver only: the Ray it started is left without clean-up
        proc.wait(timeout=60)
    else:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: Tune stops, clmem ends open runs as KILLED
        rest = proc.communicate(timeout=180)[0]
        assert proc.returncode == 130 and "continue it with --resume" in rest, rest[-2000:]
    assert any("finished (1/3 done)" in line for line in seen), "".join(seen)[-2000:]
    client, before = trial_runs(uri)
    assert sum(r.info.status == "FINISHED" for r in before) == 1
    if how == "SIGINT":  # nothing left RUNNING after a clean interrupt
        assert all(r.info.status in ("FINISHED", "KILLED") for r in before)
        parent = client.get_run(before[0].data.tags["mlflow.parentRunId"])
        assert parent.info.status == "KILLED"

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(["grid", str(file), "--tracking-uri", uri, "--resume"]) == 0
    finally:
        os.chdir(cwd)
        left = leftover_processes(proc.pid)
        for p in left:
            p.kill()
    assert left == [], [" ".join(p.cmdline()[:3]) for p in left]  # --resume ended the killed driver's Ray
    client, after = trial_runs(uri)
    keys = [r.data.tags["clmem.trial_key"] for r in after]
    assert sorted(keys) == sorted(set(keys)) and len(keys) == 3  # each trial exactly once
    assert all(r.info.status == "FINISHED" for r in after)
    first_finished = [r for r in before if r.info.status == "FINISHED"][0]
    assert first_finished.info.run_id in {r.info.run_id for r in after}
    for run in after:
        assert_logged_once(client, run)
    parents = {r.data.tags["mlflow.parentRunId"] for r in after}
    assert len(parents) == 1 and client.get_run(parents.pop()).info.status == "FINISHED"
    # resuming a finished grid runs nothing
    os.chdir(tmp_path)
    try:
        assert main(["grid", str(file), "--tracking-uri", uri, "--resume"]) == 0
    finally:
        os.chdir(cwd)
    assert len(trial_runs(uri)[1]) == 3


def test_resume_without_earlier_grid_is_bad_input(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    file = write(tmp_path, grid("naive", [0]))
    assert main(["grid", str(file), "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--resume"]) == 2
    assert "--resume: no earlier grid of experiment 'faults'" in capsys.readouterr().err


def test_resume_checkpoint_is_never_newer_than_the_last_logged_experience(tmp_path):
    from clmem.grid import latest_checkpoint

    for run, experience in (("g-abcdef12", 0), ("g-abcdef12-resume1", 2), ("g-abcdef12", 1)):
        directory = tmp_path / run / "trial_0001_k1" / f"checkpoint_00000{experience}"
        directory.mkdir(parents=True)
        (directory / "meta.json").write_text(json.dumps({"experience": experience, "key": "k1"}))
    newest = latest_checkpoint(tmp_path, "g", "abcdef1234", "k1")
    assert newest.endswith("g-abcdef12-resume1/trial_0001_k1/checkpoint_000002")
    # the driver logged experiences 0 and 1 only: the experience-2 checkpoint is not used
    assert latest_checkpoint(tmp_path, "g", "abcdef1234", "k1", up_to=1).endswith("checkpoint_000001")
    assert latest_checkpoint(tmp_path, "g", "abcdef1234", "k1", up_to=-1) is None
    assert latest_checkpoint(tmp_path, "g", "abcdef1234", "other") is None
