"""Checkpoints that cannot hurt (plain state, verified, weights_only, own storage only, fallback to an older
one) and a new SQLite store initialised by several processes at once."""
import hashlib
import os
import random
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from strategies.checkpoint import (DamagedCheckpoint, plain_state, read_checkpoint, restore_state, resume_state,
                                   write_checkpoint)

GRID, KEY = "exp-abcdef12", "k1"


class Planted:
    """A pickle that runs code when unpickled with weights_only=False: it creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def small_state(experience):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(4, 3)).sum().backward()
    optimizer.step()
    return {"experience": experience, "R": [[0.5] * 2] * (experience + 1), "b": [0.1, 0.1], "elapsed": 1.0,
            "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
            "strategy": {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "clock": {},
                         "plugins": [{"a": np.arange(4, dtype=np.uint16), "s": np.float32(2.5)}]}}


def checkpoint(storage, experience, run=GRID):
    directory = storage / run / f"trial_0000_{KEY}" / f"checkpoint_{experience:06d}"
    directory.mkdir(parents=True)
    write_checkpoint(directory, small_state(experience), {"experience": experience, "key": KEY})
    return directory


def plant(directory, marker):
    """Replace a checkpoint's state with a code-running pickle and a matching hash file."""
    torch.save({"x": Planted(marker)}, directory / "state.pt")
    data = (directory / "state.pt").read_bytes()
    (directory / "state.pt.sha256").write_text(f"{hashlib.sha256(data).hexdigest()} {len(data)}\n")


def test_plain_state_round_trips_through_weights_only_load(tmp_path):
    state = small_state(1)
    write_checkpoint(tmp_path, state, {"experience": 1, "key": KEY})
    back, meta = read_checkpoint(tmp_path)
    assert meta == {"experience": 1, "key": KEY}
    assert back["rng"]["python"] == state["rng"]["python"]
    assert np.array_equal(back["rng"]["numpy"][1], state["rng"]["numpy"][1])
    assert back["rng"]["numpy"][1].dtype == np.uint32
    np.random.set_state(back["rng"]["numpy"])  # usable as it was
    plugin = back["strategy"]["plugins"][0]
    assert plugin["a"].dtype == np.uint16 and plugin["a"].tolist() == [0, 1, 2, 3] and plugin["s"] == 2.5
    for name, tensor in state["strategy"]["model"].items():
        assert torch.equal(back["strategy"]["model"][name], tensor)
    assert torch.equal(back["strategy"]["optimizer"]["state"][0]["exp_avg"],
                       state["strategy"]["optimizer"]["state"][0]["exp_avg"])
    assert (tmp_path / "state.pt.sha256").read_text().split()[1] == str((tmp_path / "state.pt").stat().st_size)


def test_plain_state_refuses_objects_naming_their_path():
    with pytest.raises(TypeError, match=r"checkpoint state\['plugins'\]\[0\]: SimpleNamespace is neither"):
        plain_state({"plugins": [SimpleNamespace(a=1)]})
    assert restore_state(plain_state({"t": (1, [2.0, None], "x")})) == {"t": (1, [2.0, None], "x")}


def test_planted_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "code_ran"
    directory = checkpoint(tmp_path, 0)
    plant(directory, marker)
    with pytest.raises(DamagedCheckpoint, match=r"refused by torch.load\(weights_only=True\): UnpicklingError"):
        read_checkpoint(directory)
    assert not marker.exists()


def test_planted_latest_falls_back_to_the_previous_checkpoint(tmp_path):
    marker = tmp_path / "code_ran"
    checkpoint(tmp_path, 0)
    plant(checkpoint(tmp_path, 1), marker)
    state, note = resume_state(tmp_path, GRID, KEY, up_to=1)
    assert state["experience"] == 0 and not marker.exists()
    assert "checkpoint_000001: state.pt refused by torch.load(weights_only=True)" in note
    assert note.endswith("resumed after experience 0") and "\n" not in note


def test_truncated_latest_falls_back_with_a_note(tmp_path):
    checkpoint(tmp_path, 0)
    latest = checkpoint(tmp_path, 1)
    data = (latest / "state.pt").read_bytes()
    (latest / "state.pt").write_bytes(data[: len(data) // 2])
    # a Tune retry names its latest checkpoint; --resume gives the last logged experience
    for kwargs in ({"latest": str(latest)}, {"up_to": 1}):
        state, note = resume_state(tmp_path, GRID, KEY, **kwargs)
        assert state["experience"] == 0, kwargs
        assert f"state.pt has {len(data) // 2} bytes, state.pt.sha256 says {len(data)}" in note
    (latest / "state.pt").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, one bit flipped
    assert "does not match its sha256" in resume_state(tmp_path, GRID, KEY, up_to=1)[1]


def test_damaged_meta_json_is_one_note_not_a_crash(tmp_path):
    from clmem.grid import latest_checkpoint

    older = checkpoint(tmp_path, 0)
    latest = checkpoint(tmp_path, 1)
    (latest / "meta.json").write_text('{"experience": 1, "ke')
    state, note = resume_state(tmp_path, GRID, KEY, up_to=5)
    assert state["experience"] == 0 and "checkpoint_000001: meta.json unreadable (JSONDecodeError)" in note
    assert latest_checkpoint(tmp_path, "exp", "abcdef1234", KEY) == str(older)
    (older / "meta.json").write_text("[]")
    state, note = resume_state(tmp_path, GRID, KEY, up_to=5)
    assert state == {"experience": -1} and note.endswith("restarted from the first experience")
    assert "meta.json has no integer 'experience'" in note


def test_checkpoints_outside_the_grid_storage_are_not_read(tmp_path):
    storage, elsewhere = tmp_path / "ray_results", tmp_path / "elsewhere"
    storage.mkdir()
    outside = checkpoint(elsewhere, 3)
    state, note = resume_state(storage, GRID, KEY, latest=str(outside))
    assert state == {"experience": -1} and "outside the grid's storage" in note
    link = storage / GRID / f"trial_0000_{KEY}"
    link.parent.mkdir(parents=True)
    link.symlink_to(outside.parent)  # a link inside the storage that leads out of it
    state, note = resume_state(storage, GRID, KEY, up_to=3)
    assert state == {"experience": -1} and "outside the grid's storage" in note
    assert resume_state(storage, GRID, "other", up_to=3) == (None, "")  # nothing at all: a fresh start


def test_a_real_trial_resumes_from_a_verified_checkpoint(tmp_path):
    from clmem.config import Experiment
    from clmem.runner import run_trial

    trial = Experiment.from_dict({
        "name": "ck", "benchmark": {"name": "split_digits", "n_experiences": 2},
        "model": {"name": "mlp", "hidden_size": 8, "num_layers": 1},
        "strategy": {"name": "naive", "train_epochs": 1}}).trials[0]
    def save(i, report):  # as the Tune trainable does: written at once (state_dict tensors are live)
        if i == 0:
            write_checkpoint(tmp_path, report["_checkpoint"], {"experience": 0, "key": trial["key"]})

    whole = run_trial(trial, save, checkpointing=True)
    state, _ = read_checkpoint(tmp_path)
    resumed = run_trial(trial, resume=state)
    assert resumed.R == whole.R and resumed.summary["ACC"] == whole.summary["ACC"]
    # Avalanche's own first-vs-last forgetting and BWT remember the experience trained before the resume
    assert set(whole.avalanche) == {"avl_stream_acc", "avl_forgetting", "avl_bwt"}
    assert resumed.avalanche == pytest.approx(whole.avalanche)
    assert whole.avalanche["avl_forgetting"] == pytest.approx(whole.R[0][0] - whole.R[1][0])


def test_driver_tags_the_run_and_prints_one_warning(tmp_path):
    from clmem.config import Experiment
    from clmem.grid import MlflowDriverCallback
    from clmem.tracking import Tracker

    experiment = Experiment.from_dict({"name": "ck", "benchmark": {"name": "split_digits"},
                                       "model": {"name": "mlp"}, "strategy": {"name": "naive"}})
    tracker = Tracker(f"sqlite:///{tmp_path}/m.db")
    parent = tracker.start_parent(experiment)
    lines = []
    callback = MlflowDriverCallback(tracker, experiment, parent, 1, progress=lines.append)
    trial = SimpleNamespace(trial_id="t0", config={"job": {"trial": experiment.trials[0]}})
    note = "damaged checkpoint(s): x/checkpoint_000001: state.pt has 3 bytes, state.pt.sha256 says 9 — resumed after experience 0"
    callback.on_trial_result(0, [], trial, {"experience": 1, "experiences_total": 5, "seen_acc": 0.5,
                                            "resumed_from": 0, "checkpoint_note": note})
    run = tracker.client.get_run(callback.run_ids["t0"])
    assert run.data.tags["clmem.checkpoint_fallback"] == note and run.data.tags["clmem.resumed_from"] == "0"
    assert lines[0] == f"warning: trial 0: {note}"
    assert "checkpoint_note" not in run.data.metrics


INIT_STORE = """
import sys
from clmem.tracking import Tracker
tracker = Tracker(sys.argv[1])
print(tracker.client.get_experiment_by_name("Default").experiment_id)
"""


def test_two_processes_initialise_one_new_sqlite_store(tmp_path):
    from filelock import FileLock

    uri = f"sqlite:///{tmp_path}/new.db"
    with FileLock(f"{tmp_path}/new.db.lock"):  # both wait here, then race for MLflow's migrations
        procs = [subprocess.Popen([sys.executable, "-c", INIT_STORE, uri], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        with pytest.raises(subprocess.TimeoutExpired):
            procs[0].wait(timeout=5)  # held by the lock: the store is not touched meanwhile
        assert not (tmp_path / "new.db").exists()
    outputs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    assert [out.strip() for out, _ in outputs] == ["0", "0"]
