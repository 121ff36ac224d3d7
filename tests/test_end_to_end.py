"""End to end through real Ray Tune and a real MLflow SQLite store in a temp dir."""
import json

import pytest
import yaml
from mlflow.tracking import MlflowClient

from clmem.cli import main

GRID = {
    "name": "e2e",
    "benchmark": {"name": "split_digits", "n_experiences": 5},
    "model": {"name": "mlp", "hidden_size": 32, "num_layers": 1},
    "strategy": {"name": ["naive", "replay"], "train_epochs": 1, "lr": 0.05,
                 "replay": {"mem_size": 50}},
    "seeds": [0, 1],
    "resources": {"cpu": 1},
}


def children_of(client, parent):
    return client.search_runs([parent.info.experiment_id],
                              f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")


@pytest.mark.slow
def test_grid_on_ray_logs_parent_and_children(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    file = tmp_path / "e2e.yaml"
    file.write_text(yaml.safe_dump(GRID))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["grid", str(file), "--tracking-uri", uri, "--max-concurrent", "2"]) == 0
    out = capsys.readouterr().out
    assert "trials done] trial" in out and "experience 5/5" in out
    assert "clmem ui --tracking-uri" in out and "replay" in out and "naive" in out

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("e2e")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("clmem.kind") == "grid"]
    assert len(parents) == 1 and len(runs) == 5
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert json.loads(parent.data.tags["clmem.axes"]) == ["strategy.name"]
    assert "experiment.yaml" in [a.path for a in client.list_artifacts(parent.info.run_id)]
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert plots == {"plots/R_naive.png", "plots/R_replay.png", "plots/seen_acc_by_experience.png",
                     "plots/forgetting_at_step_by_experience.png", "plots/acc_bwt_bars.png"}
    children = children_of(client, parent)
    assert len(children) == 4
    combos = sorted((c.data.params["strategy.name"], c.data.params["seed"]) for c in children)
    assert combos == [("naive", "0"), ("naive", "1"), ("replay", "0"), ("replay", "1")]
    for child in children:
        assert child.info.status == "FINISHED"
        params = child.data.params
        assert params["benchmark.name"] == "split_digits" and params["model.hidden_size"] == "32"
        history = client.get_metric_history(child.info.run_id, "seen_acc")
        assert sorted(m.step for m in history) == [0, 1, 2, 3, 4]
        for key in ("ACC", "BWT", "FWT", "Forgetting", "wall_time_s", "acc_exp_4"):
            assert key in child.data.metrics
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"R.json", "R.png", "trial.yaml"} <= artifacts
        R = json.loads(open(client.download_artifacts(child.info.run_id, "R.json", str(tmp_path))).read())["R"]
        assert len(R) == 5 and child.data.metrics["ACC"] == pytest.approx(sum(R[-1]) / 5)
    by_strategy = {c.data.params["strategy.name"]: c.data.metrics["ACC"] for c in children}
    assert by_strategy["replay"] > by_strategy["naive"]

    assert main(["compare", "e2e", "--tracking-uri", uri, "--format", "md",
                 "--output", str(tmp_path / "cmp.md"), "--plots", str(tmp_path / "plots")]) == 0
    assert len(list((tmp_path / "plots").glob("*.png"))) == 5
    assert main(["compare", "e2e", "--tracking-uri", uri, "--format", "csv", "--metric", "Forgetting",
                 "--output", str(tmp_path / "cmp.csv")]) == 0
    csv_lines = (tmp_path / "cmp.csv").read_text().splitlines()
    assert csv_lines[0].startswith("strategy,seeds,ACC_mean,ACC_sd,BWT_mean")
    assert csv_lines[1].startswith("replay,2,")  # least forgetting first
    assert main(["compare", "e2e", "--tracking-uri", uri, "--group-by", "benchmark.name", "--format", "csv",
                 "--output", str(tmp_path / "all.csv")]) == 0
    pooled = (tmp_path / "all.csv").read_text().splitlines()
    assert pooled[0].startswith("benchmark,seeds,") and pooled[1].startswith("split_digits,4,")
    assert main(["compare", "e2e", "--tracking-uri", uri, "--group-by", "strategy.colour"]) == 2
    table = (tmp_path / "cmp.md").read_text()
    assert table.startswith("| strategy | seeds | ACC | BWT | FWT | Forgetting | wall_time_s |")
    assert table.index("| replay |") < table.index("| naive |")  # sorted by ACC, best first


@pytest.mark.slow
def test_run_command_tracks_one_trial_in_process(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    raw = dict(GRID, strategy={"name": "replay", "train_epochs": 1, "mem_size": 30},
               benchmark={"name": "split_digits", "n_experiences": 2})
    file = tmp_path / "one.yaml"
    file.write_text(yaml.safe_dump(raw))
    assert main(["run", str(file), "--trial", "1"]) == 0  # default store ./mlflow.db
    assert "experience 2/2" in capsys.readouterr().out
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("e2e").experiment_id])
    assert len(runs) == 2
    child = [r for r in runs if r.data.tags.get("clmem.kind") == "trial"][0]
    assert child.data.params["seed"] == "1" and child.info.status == "FINISHED"
    assert (tmp_path / "mlartifacts").is_dir()


@pytest.mark.slow
def test_ui_command_serves_the_same_store_on_localhost(tmp_path):
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"sqlite:///{tmp_path}/ui.db"
    proc = subprocess.Popen([sys.executable, "-m", "clmem", "ui", "--tracking-uri", uri, "--port", str(port)],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline, status = time.time() + 120, None
        while time.time() < deadline and status != 200:
            try:
                status = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status
            except OSError:
                time.sleep(0.5)
        assert status == 200
        assert (tmp_path / "ui.db").exists()  # the UI opened the store it was given
    finally:  # the UI's server, job runner and workers share its process group
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def _tiny(name: str, **strategy) -> dict:
    return {"name": name, "benchmark": {"name": "split_digits", "n_experiences": 2, "per_class": 10},
            "model": {"name": "mlp", "hidden_size": 8, "num_layers": 1},
            "strategy": {"name": "naive", "train_epochs": 1, **strategy}, "seeds": [0]}


def test_validate_and_grid_of_a_folder_check_every_file_first(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "exps"
    folder.mkdir()
    assert main(["validate", str(folder)]) == 2
    assert "no experiment files (*.yaml) in this folder" in capsys.readouterr().err
    (folder / "a.yaml").write_text(yaml.safe_dump(_tiny("dir_a")))
    (folder / "b.yaml").write_text(yaml.safe_dump(_tiny("dir_b", lr=float("nan"))))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["grid", str(folder), "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "b.yaml: strategy.lr" in err, err
    assert not (tmp_path / "mlflow.db").exists()  # the good first file did not run either
    (folder / "b.yaml").write_text(yaml.safe_dump(_tiny("dir_b")))
    assert main(["validate", str(folder)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [str(folder / "a.yaml"), str(folder / "b.yaml")]


@pytest.mark.slow
def test_grid_of_a_folder_runs_each_file_as_its_own_grid(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "exps"
    folder.mkdir()
    for name in ("dir_a", "dir_b"):
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(_tiny(name)))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["grid", str(folder), "--tracking-uri", uri]) == 0
    assert "2 experiment files: 2 without failed trials" in capsys.readouterr().out
    client = MlflowClient(uri)
    for name in ("dir_a", "dir_b"):
        runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
        assert sorted(r.data.tags.get("clmem.kind") for r in runs) == ["grid", "trial"]
        assert all(r.info.status == "FINISHED" for r in runs)
