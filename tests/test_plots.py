"""Plots: files are real PNGs of the expected size; memory heatmaps from a real DNC trace."""
import numpy as np
import torch

from clmem import plots
from clmem.memory import DNCCore, DNCCoreConfig

PNG = b"\x89PNG\r\n\x1a\n"


def is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == PNG


def test_heatmap_curves_and_bars(tmp_path):
    R = [[0.9, 0.1], [0.5, 0.8]]
    assert is_png(plots.accuracy_heatmap(R, tmp_path / "r.png"))
    curves = {"naive": np.array([[0.9, 0.5], [0.8, np.nan]]), "replay": np.array([[0.9, 0.8]])}
    assert is_png(plots.curves_by_experience(curves, "acc", tmp_path / "c.png"))
    bars = {"naive": {"ACC": (0.1, 0.01), "BWT": (-0.8, 0.05)}, "replay": {"ACC": (0.8, 0.02), "BWT": (-0.2, 0.1)}}
    assert is_png(plots.summary_bars(bars, ("ACC", "BWT"), tmp_path / "b.png"))


def test_memory_heatmaps_from_dnc_trace(tmp_path):
    torch.manual_seed(0)
    core = DNCCore(DNCCoreConfig(input_size=4, output_size=3, hidden_size=8, memory_size=6, word_size=5,
                                 num_reads=2, num_writes=1))
    y, _, trace = core(torch.randn(1, 7, 4), return_trace=True)
    assert trace.usage.shape == (1, 7, 6) and trace.read_weights.shape == (1, 7, 2, 6)
    path = plots.memory_heatmaps(trace.usage[0], trace.read_weights[0], trace.write_weights[0],
                                 tmp_path / "memory.png")
    assert is_png(path) and path.stat().st_size > 5000


def test_memory_learner_trial_logs_memory_heatmaps(tmp_path, monkeypatch):
    import yaml
    from mlflow.tracking import MlflowClient

    from clmem.cli import main

    monkeypatch.chdir(tmp_path)
    exp = {"name": "mem_plot",
           "benchmark": {"name": "continual_algorithmic", "tasks": "copy,repeat_copy", "num_bits": 3,
                         "min_length": 1, "max_length": 3, "max_repeats": 2, "train_samples": 16,
                         "test_samples": 8},
           "model": {"name": "dnc", "hidden_size": 8, "memory_size": 6, "word_size": 4, "num_reads": 2},
           "strategy": {"name": "sequence", "train_epochs": 1, "train_mb_size": 8, "optimizer": "adam"},
           "seeds": [0]}
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(exp))
    uri = f"sqlite:///{tmp_path}/m.db"
    assert main(["run", str(tmp_path / "e.yaml"), "--tracking-uri", uri]) == 0
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("mem_plot").experiment_id],
                              "tags.`clmem.kind` = 'trial'")
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert "memory.png" in artifacts
    assert is_png(client.download_artifacts(runs[0].info.run_id, "memory.png", str(tmp_path)))
