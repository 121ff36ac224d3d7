"""Experiment files: parsing, grid expansion and every validation error (one line, exit 2)."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clmem.catalog import BENCHMARKS, MODELS, STRATEGIES
from clmem.cli import main
from clmem.config import Experiment, load_experiment
from clmem.options import ConfigError

BASE = {
    "name": "t",
    "benchmark": {"name": "split_digits", "n_experiences": 5},
    "model": {"name": "mlp", "hidden_size": 16},
    "strategy": {"name": "naive", "train_epochs": 1},
}


def with_(**changes):
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    for dotted, value in changes.items():
        node = raw
        keys = dotted.split("__")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return raw


def write(tmp_path, raw, name="exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw) if not isinstance(raw, str) else raw)
    return path


def test_defaults_filled_and_single_trial():
    exp = Experiment.from_dict(BASE)
    assert len(exp.trials) == 1 and exp.axes == []
    t = exp.trials[0]
    assert t["seed"] == 0 and t["resources"] == {"cpu": 1.0, "gpu": 0.0}
    assert t["strategy"]["train_mb_size"] == 32 and t["strategy"]["optimizer"] == "sgd"
    assert t["model"] == {"name": "mlp", "hidden_size": 16, "num_layers": 2, "dropout": 0.0}


def test_lists_become_axes_and_blocks_apply_to_their_name_only():
    raw = with_(strategy={"name": ["naive", "replay"], "lr": [0.1, 0.01],
                          "replay": {"mem_size": [50, 100]}}, seeds=[0, 1])
    exp = Experiment.from_dict(raw)
    # naive: 2 lr x 2 seeds = 4 ; replay: 2 lr x 2 mem x 2 seeds = 8 (naive's duplicates removed)
    assert len(exp.trials) == 12
    assert exp.axes == ["strategy.name", "strategy.lr", "strategy.mem_size"]
    naive = [t for t in exp.trials if t["strategy"]["name"] == "naive"]
    assert all("mem_size" not in t["strategy"] for t in naive)
    assert sorted({t["strategy"]["mem_size"] for t in exp.trials if "mem_size" in t["strategy"]}) == [50, 100]
    assert len({t["key"] for t in exp.trials}) == 12 and [t["index"] for t in exp.trials] == list(range(12))


def test_trial_keys_are_stable():
    assert Experiment.from_dict(BASE).trials[0]["key"] == Experiment.from_dict(BASE).trials[0]["key"]


@pytest.mark.parametrize(
    "raw, path, expected",
    [
        (with_(colour="red"), "colour", "unknown key (expected one of: name, description"),
        (with_(strategy__lr="fast"), "strategy.lr", "expected a number >= 0.0, got 'fast'"),
        (with_(strategy__train_epochs=1.5), "strategy.train_epochs", "expected an integer >= 1"),
        (with_(strategy__train_epochs=True), "strategy.train_epochs", "expected an integer"),
        (with_(benchmark__name="imagenet"), "benchmark.name", "unknown benchmark 'imagenet' (expected one of: "),
        (with_(model__name="resnet"), "model.name", "unknown model 'resnet' (expected one of: "),
        (with_(strategy__name="magic"), "strategy.name", "unknown strategy 'magic' (expected one of: "),
        (with_(strategy__name=[]), "strategy.name", "empty grid axis"),
        (with_(seeds=[]), "seeds", "empty grid axis"),
        (with_(strategy__lr=[]), "strategy.lr", "empty grid axis"),
        (with_(strategy__mem_size=10), "strategy.mem_size", "unknown option of strategy 'naive'"),
        (with_(strategy={"name": "replay", "replay": {"mem_sise": 5}}), "strategy.replay.mem_sise", "unknown option of strategy 'replay' (expected one of: eval_mb_size, lr, mem_size,"),
        (with_(benchmark__n_experiences=3), "benchmark.n_experiences", "expected one of: 1, 2, 5, 10, got 3"),
        (with_(resources={"cpu": 1, "tpu": 1}), "resources.tpu", "unknown key (expected one of: cpu, gpu)"),
        (with_(resources={"gpu": -1}), "resources.gpu", "expected a number >= 0.0"),
        (with_(seeds=["a"]), "seeds", "expected an integer >= 0"),
        (with_(model="mlp"), "model", "expected a mapping"),
        (with_(name=""), "name", "expected a non-empty string"),
        ({k: v for k, v in BASE.items() if k != "model"}, "model", "missing required key"),
        (with_(strategy={"lr": 0.1}), "strategy.name", "missing (expected one of:"),
    ],
)
def test_validation_errors_name_path_and_expectation(tmp_path, raw, path, expected):
    file = write(tmp_path, raw)
    with pytest.raises(ConfigError) as info:
        load_experiment(file)
    message = str(info.value)
    assert message.startswith(f"{file}: {path}: "), message
    assert expected in message
    assert "\n" not in message
    if "unknown benchmark" in expected or "unknown model" in expected or "unknown strategy" in expected:
        kind = expected.split()[1]
        registry = {"benchmark": BENCHMARKS, "model": MODELS, "strategy": STRATEGIES}[kind]
        assert message.endswith(f"(expected one of: {', '.join(registry.names())})")


def test_yaml_syntax_and_missing_file_errors(tmp_path):
    bad = write(tmp_path, "name: [unclosed\n", "bad.yaml")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+: invalid YAML"):
        load_experiment(bad)
    with pytest.raises(ConfigError, match="nope.yaml: file not found"):
        load_experiment(tmp_path / "nope.yaml")
    top_list = write(tmp_path, "- 1\n- 2\n", "list.yaml")
    with pytest.raises(ConfigError, match="expected a mapping of keys at the top"):
        load_experiment(top_list)


def test_cli_exits_2_with_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    file = write(tmp_path, with_(strategy__name="magic", tracking_uri=f"sqlite:///{tmp_path}/t.db"))
    for command in (["run", str(file)], ["grid", str(file)], ["validate", str(file)]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "strategy.name: unknown strategy 'magic'" in err
    assert not (tmp_path / "t.db").exists() and not (tmp_path / "mlflow.db").exists()


def test_module_entry_point_exit_code(tmp_path):
    file = write(tmp_path, with_(colour=1))
    proc = subprocess.run([sys.executable, "-m", "clmem", "validate", str(file)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"clmem: error: {file}: colour: unknown key (expected one of: name, description, benchmark, model, strategy, seeds, resources, tracking_uri, max_failures)"


def test_shipped_experiments_are_valid():
    root = Path(__file__).resolve().parents[1] / "experiments"
    files = sorted(root.glob("*.yaml"))
    assert {"quickstart.yaml", "split_mnist.yaml"} <= {f.name for f in files}
    for f in files:
        exp = load_experiment(f)
        assert exp.trials, f
    quick = load_experiment(root / "quickstart.yaml")
    assert quick.trials[0]["benchmark"]["name"] == "split_digits"
