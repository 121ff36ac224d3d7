"""Distribution: the cluster-launcher config, multi-node placement, a shared MLflow server."""
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import ray
import yaml
from mlflow.tracking import MlflowClient

from clmem.cli import main

ROOT = Path(__file__).resolve().parents[1]


def small_grid(name, strategies, seeds, resources):
    return {
        "name": name,
        "benchmark": {"name": "split_digits", "n_experiences": 2, "per_class": 30},
        "model": {"name": "mlp", "hidden_size": 16, "num_layers": 1},
        "strategy": {"name": strategies, "train_epochs": 1, "lr": 0.05},
        "seeds": seeds,
        "resources": resources,
    }


def test_ray_cluster_yaml_passes_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    validate_config(config)  # Ray's JSON schema: a typo in a key fails here
    prepared = prepare_config(config)
    validate_config(prepared)
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    gpu_workers = [t for name, t in types.items() if t["resources"].get("GPU", 0) >= 1]
    assert gpu_workers and head["resources"].get("GPU", 0) == 0
    assert any("mlflow server" in c for c in prepared["head_start_ray_commands"])
    assert any("clmem[gpu]" in c for c in prepared["setup_commands"])


def test_ray_cluster_yaml_typo_is_caught(tmp_path):
    from ray.autoscaler._private.util import validate_config

    config = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    config["available_node_types"]["worker_gpu"]["min_wokers"] = 0
    with pytest.raises(Exception, match="min_wokers"):
        validate_config(config)


@pytest.mark.slow
def test_gpu_trials_placed_on_the_gpu_node_and_fall_back_to_cpu(tmp_path, monkeypatch, capsys):
    from ray.cluster_utils import Cluster

    monkeypatch.chdir(tmp_path)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        gpu_node = cluster.add_node(num_cpus=1, num_gpus=1)
        cluster.wait_for_nodes()
        file = tmp_path / "gpu.yaml"
        file.write_text(yaml.safe_dump(small_grid("placement", "naive", [0, 1], {"cpu": 1, "gpu": 0.5})))
        uri = f"sqlite:///{tmp_path}/mlflow.db"
        assert main(["grid", str(file), "--address", cluster.address, "--tracking-uri", uri]) == 0
        assert "asked for a GPU but CUDA is not available" in capsys.readouterr().out
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("placement").experiment_id],
                                  "tags.`clmem.kind` = 'trial'")
        assert len(runs) == 2
        for run in runs:
            assert run.data.tags["clmem.node_id"] == gpu_node.node_id
            assert run.data.tags["clmem.device"] == "cpu"
            assert run.info.status == "FINISHED"
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("mlflow server did not start within 120 s")
    yield url
    os.killpg(proc.pid, signal.SIGTERM)  # the server and its workers share its process group
    proc.wait(timeout=30)


@pytest.mark.slow
def test_parallel_grid_against_a_real_mlflow_server(tmp_path, monkeypatch, mlflow_server):
    monkeypatch.chdir(tmp_path)
    file = tmp_path / "server.yaml"
    file.write_text(yaml.safe_dump(small_grid("served", ["naive", "replay"], [0, 1], {"cpu": 1})))
    assert main(["grid", str(file), "--tracking-uri", mlflow_server, "--max-concurrent", "2"]) == 0
    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("served").experiment_id])
    parents = [r for r in runs if r.data.tags.get("clmem.kind") == "grid"]
    children = [r for r in runs if r.data.tags.get("clmem.kind") == "trial"]
    assert len(parents) == 1 and len(children) == 4
    keys = [c.data.tags["clmem.trial_key"] for c in children]
    assert len(set(keys)) == 4  # every trial exactly once
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert child.info.status == "FINISHED"
        assert {"R.json", "R.png"} <= {a.path for a in client.list_artifacts(child.info.run_id)}


@pytest.mark.slow
def test_trial_workers_import_the_grid_module_without_mlflow_and_set_their_threads():
    from clmem.grid import init_ray, shutdown_ray

    @ray.remote
    def trial_threads(cpus):
        import torch

        from clmem.grid import _limit_threads

        _limit_threads(cpus)  # what every trial does first
        return torch.get_num_threads(), "mlflow" in sys.modules

    started = init_ray(None)
    try:
        assert started
        # a trial sets its thread count itself; MLflow stays in the driver
        assert ray.get(trial_threads.remote(1)) == (1, False)
    finally:
        shutdown_ray(started)
