"""Malformed experiment files: each is refused by ``clmem validate`` (and ``run``/``grid``) with exit 2 and one
line naming the file, the key path and what was expected, before anything is written."""
import pytest
import yaml

from clmem.cli import main
from clmem.sizing import check_fits, estimate_bytes, plan_request
from clmem.tracking import check_tracking_uri
from clmem.options import ConfigError

BASE = """\
name: t
benchmark: {name: split_digits, n_experiences: 2}
model: {name: mlp, hidden_size: 8, num_layers: 1}
strategy: {name: naive, train_epochs: 1}
"""


def swap(old, new):
    return BASE.replace(old, new)


def strategy(extra):
    return swap("strategy: {name: naive, train_epochs: 1}", f"strategy: {{name: naive, train_epochs: 1, {extra}}}")


def nested(depth):
    return BASE + "description: " + "[" * depth + "]" * depth + "\n"


def bomb():
    lines = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 6)]
    return BASE + "description:\n" + "\n".join("  " + line for line in lines) + "\n"


#: (id, file text or bytes, key path the line starts with, fragment of what was expected)
CASES = [
    ("lr_nan", strategy("lr: .nan"), "strategy.lr", "finite number"),
    ("lr_inf", strategy("lr: .inf"), "strategy.lr", "finite number"),
    ("lr_minus_inf", strategy("lr: -.inf"), "strategy.lr", "finite number"),
    ("lr_1e309", strategy("lr: 1e309"), "strategy.lr", "finite number"),
    ("lr_1.0e+309", strategy("lr: 1.0e+309"), "strategy.lr", "finite number"),
    ("momentum_nan", strategy("momentum: .nan"), "strategy.momentum", "finite number"),
    ("nan_in_an_axis", strategy("lr: [0.1, .nan]"), "strategy.lr[1]", "finite number"),
    ("nan_in_a_block", swap("{name: naive,", "{name: [naive, ewc], ewc: {ewc_lambda: .nan},"),
     "strategy.ewc.ewc_lambda", "finite number"),
    ("int_option_nan", swap("n_experiences: 2", "n_experiences: .nan"), "benchmark.n_experiences", "finite"),
    ("int_option_fraction", swap("hidden_size: 8", "hidden_size: 8.5"), "model.hidden_size", "an integer"),
    ("duplicate_section", BASE + "strategy: {name: ewc, lr: 0.01}\n", "strategy", "duplicate key (lines 4 and 5"),
    ("duplicate_option", strategy("lr: 0.05, lr: 0.01"), "strategy.lr", "duplicate key"),
    ("duplicate_name", "name: a\n" + BASE, "name", "duplicate key (lines 1 and 2"),
    ("block_of_absent_strategy", strategy("ewc: {ewc_lambda: 1.0}"), "strategy.ewc",
     "which is not in strategy.name (expected a block for one of: naive)"),
    ("block_of_absent_model", swap("num_layers: 1}", "num_layers: 1, cnn: {channels: 4}}"), "model.cnn",
     "which is not in model.name"),
    ("cpu_zero", BASE + "resources: {cpu: 0}\n", "resources.cpu", "expected a number > 0"),
    ("cpu_negative", BASE + "resources: {cpu: -1}\n", "resources.cpu", "expected a number >= 0"),
    ("cpu_million", BASE + "resources: {cpu: 1e6}\n", "resources.cpu", "CPUs per trial, but no node of this machine"),
    ("gpu_four", BASE + "resources: {gpu: 4}\n", "resources.gpu", "a trial runs on one device"),
    ("gpu_nan", BASE + "resources: {gpu: .nan}\n", "resources.gpu", "finite number"),
    ("name_parent_dirs", swap("name: t", "name: ../../etc"), "name", "not starting with '.'"),
    ("name_absolute", swap("name: t", "name: /tmp/elsewhere"), "name", "A-Z a-z 0-9 . _ -"),
    ("name_hidden", swap("name: t", "name: .hidden"), "name", "not starting with '.'"),
    ("name_space", swap("name: t", "name: 'my grid'"), "name", "A-Z a-z 0-9 . _ -"),
    ("name_200_chars", swap("name: t", "name: " + "a" * 200), "name", "at most 100 of A-Z"),
    ("name_5000_chars", swap("name: t", "name: " + "a" * 5000), "name", "string of 5000 characters"),
    ("name_number", swap("name: t", "name: 7"), "name", "expected a non-empty string"),
    ("uri_ftp", BASE + "tracking_uri: ftp://host/store\n", "tracking_uri", "unsupported URI scheme 'ftp'"),
    ("uri_s3", BASE + "tracking_uri: s3://bucket/store\n", "tracking_uri", "unsupported URI scheme 's3'"),
    ("seed_above_2_32", BASE + "seeds: [0, 4294967296]\n", "seeds", "<= 4294967295 (2**32 - 1)"),
    ("seed_negative", BASE + "seeds: -1\n", "seeds", "<= 4294967295 (2**32 - 1)"),
    ("seed_nan", BASE + "seeds: [.nan]\n", "seeds[0]", "finite number"),
    ("hidden_size_1e9", swap("hidden_size: 8", "hidden_size: 1e9"), "model.hidden_size",
     "more than the"),
    ("dnc_memory_size_huge", swap("model: {name: mlp, hidden_size: 8, num_layers: 1}",
                                  "model: {name: dnc, memory_size: 100000000}").replace(
        "{name: split_digits, n_experiences: 2}", "{name: continual_algorithmic}"), "model.memory_size",
     "more than the"),
    ("not_utf8", b"name: t\ndescription: caf\xe9\n", "", "is not UTF-8"),
    ("nested_3000_deep", nested(3000), "description[0][0]", "nested deeper than 20 levels"),
    ("alias_bomb", bomb(), "description", "more than 100000 values"),
    ("integer_5000_digits", BASE + "max_failures: " + "9" * 5000 + "\n", "", "cannot read the YAML"),
    ("date_value", BASE + "description: 2024-01-01\n", "description", "got date"),
    ("long_string", BASE + "description: " + "x" * 2000 + "\n", "description", "string of 2000 characters"),
    ("max_failures_huge", BASE + "max_failures: 1000000\n", "max_failures", "in [0, 100]"),
    ("grid_too_large", strategy("lr: [" + ", ".join(["0.1"] * 101) + "], train_mb_size: ["
                                + ", ".join(str(i) for i in range(1, 102)) + "]"),
     "strategy.lr", "expected at most 10000 trials"),
    ("tab_indented", BASE + "resources:\n\tcpu: 1\n", "", "invalid YAML"),
    ("top_level_list", "- 1\n- 2\n", "", "expected a mapping of keys at the top"),
    # names, keys and sections
    ("unknown_top_key", BASE + "epochs: 3\n", "epochs", "unknown"),
    ("missing_benchmark", BASE.replace("benchmark: {name: split_digits, n_experiences: 2}\n", ""), "benchmark",
     "missing"),
    ("missing_model", BASE.replace("model: {name: mlp, hidden_size: 8, num_layers: 1}\n", ""), "model", "missing"),
    ("missing_strategy_name", swap("{name: naive, train_epochs: 1}", "{train_epochs: 1}"), "strategy.name",
     "missing (expected one of"),
    ("unknown_benchmark", swap("split_digits", "split_cifar"), "benchmark.name", "unknown benchmark 'split_cifar'"),
    ("unknown_model", swap("name: mlp", "name: resnet"), "model.name", "unknown model 'resnet'"),
    ("unknown_strategy", swap("name: naive", "name: icarl"), "strategy.name", "unknown strategy 'icarl'"),
    ("unknown_strategy_in_axis", swap("name: naive", "name: [naive, icarl]"), "strategy.name",
     "unknown strategy 'icarl'"),
    ("strategy_name_number", swap("name: naive", "name: 3"), "strategy.name", "expected a string"),
    ("unknown_model_option", swap("num_layers: 1}", "num_layers: 1, width: 3}"), "model.width",
     "unknown option of model 'mlp'"),
    ("unknown_benchmark_option", swap("n_experiences: 2}", "n_experiences: 2, classes: 4}"), "benchmark.classes",
     "unknown option of benchmark 'split_digits'"),
    ("unknown_strategy_option", strategy("mem_size: 10"), "strategy.mem_size", "unknown option of strategy 'naive'"),
    ("section_not_mapping", swap("model: {name: mlp, hidden_size: 8, num_layers: 1}", "model: mlp"), "model",
     "expected a mapping"),
    ("block_not_mapping", swap("{name: naive,", "{name: [naive, ewc], ewc: 5,"), "strategy.ewc",
     "expected a mapping"),
    ("empty_file", "", "", "expected a mapping of keys at the top"),
    ("scalar_file", "just text\n", "", "expected a mapping of keys at the top"),
    ("yaml_syntax_error", BASE + "resources: {cpu: 1\n", "", "invalid YAML"),
    # option values
    ("train_epochs_zero", strategy("train_epochs: 0").replace("train_epochs: 1, ", ""), "strategy.train_epochs",
     ">= 1"),
    ("batch_negative", strategy("train_mb_size: -4"), "strategy.train_mb_size", ">= 1"),
    ("optimizer_unknown", strategy("optimizer: rmsprop"), "strategy.optimizer", "one of: 'sgd', 'adam'"),
    ("momentum_above_one", strategy("momentum: 1.5"), "strategy.momentum", "in [0.0, 1.0]"),
    ("lr_negative", strategy("lr: -0.1"), "strategy.lr", ">= 0.0"),
    ("lr_string", strategy("lr: fast"), "strategy.lr", "expected a number"),
    ("lr_bool", strategy("lr: true"), "strategy.lr", "expected a number"),
    ("n_experiences_not_a_choice", swap("n_experiences: 2", "n_experiences: 3"), "benchmark.n_experiences",
     "one of: 1, 2, 5, 10"),
    ("hidden_size_zero", swap("hidden_size: 8", "hidden_size: 0"), "model.hidden_size", ">= 1"),
    ("num_layers_string", swap("num_layers: 1", "num_layers: two"), "model.num_layers", "an integer"),
    ("empty_axis", strategy("lr: []"), "strategy.lr", "empty"),
    ("seed_fraction", BASE + "seeds: [1.5]\n", "seeds", "expected an integer >= 0"),
    ("seed_string", BASE + "seeds: first\n", "seeds", "expected an integer >= 0"),
    ("max_failures_negative", BASE + "max_failures: -1\n", "max_failures", "in [0, 100]"),
    ("unknown_resource", BASE + "resources: {memory: 4}\n", "resources.memory", "unknown"),
    ("cpu_string", BASE + "resources: {cpu: many}\n", "resources.cpu", "expected a number"),
    ("uri_number", BASE + "tracking_uri: 5\n", "tracking_uri", "expected a string"),
    # learner × stream kinds
    ("dnc_on_images", swap("model: {name: mlp, hidden_size: 8, num_layers: 1}", "model: {name: dnc}"),
     "model.name", "takes bits / qa_sequence / episodes streams, not image"),
    ("der_on_bits", swap("strategy: {name: naive, train_epochs: 1}", "strategy: {name: der}").replace(
        "{name: split_digits, n_experiences: 2}", "{name: continual_algorithmic}").replace(
        "{name: mlp, hidden_size: 8, num_layers: 1}", "{name: lstm}"), "strategy.name",
     "strategy 'der' cannot train on bits streams"),
]


def write(tmp_path, ident, content):
    path = tmp_path / f"{ident}.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


@pytest.mark.parametrize("ident, content, path, expected", CASES, ids=[c[0] for c in CASES])
def test_validate_refuses_with_one_line_and_exit_2(tmp_path, monkeypatch, capsys, ident, content, path, expected):
    monkeypatch.chdir(tmp_path)
    file = write(tmp_path, ident, content)
    assert main(["validate", str(file)]) == 2
    captured = capsys.readouterr()
    err = captured.err.rstrip("\n")
    assert captured.out == "" and "\n" not in err and len(err) < 400, err
    prefix = f"clmem: error: {file}: {path}" if path else f"clmem: error: {file}: "
    assert err.startswith(prefix), err
    assert expected in err, err


def test_table_is_large_enough():
    assert len(CASES) >= 70 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("ident", ["lr_nan", "duplicate_section", "name_parent_dirs", "uri_ftp", "hidden_size_1e9",
                                   "not_utf8", "nested_3000_deep"])
@pytest.mark.parametrize("command", ["run", "grid"])
def test_run_and_grid_refuse_before_writing_anything(tmp_path, monkeypatch, capsys, ident, command):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    content = dict((c[0], c[1]) for c in CASES)[ident]
    file = write(tmp_path, ident, content)
    assert main([command, str(file)]) == 2
    err = capsys.readouterr().err.rstrip("\n")
    assert "\n" not in err and err.startswith(f"clmem: error: {file}: "), err
    assert sorted(p.name for p in tmp_path.iterdir()) == [file.name]  # no store, no ray_results, no artifacts


def test_tracking_uri_argument_with_an_unsupported_scheme_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    file = write(tmp_path, "ok", BASE)
    assert main(["run", str(file), "--tracking-uri", "gopher://x"]) == 2
    assert capsys.readouterr().err.strip() == ("clmem: error: --tracking-uri: unsupported URI scheme 'gopher' "
                                               "(expected a path or a URI with one of: file, sqlite, http, https, "
                                               "postgresql, mysql, mssql, databricks)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.yaml"]


def test_yaml_1_2_exponents_are_numbers_and_integral_floats_are_integers(tmp_path, capsys):
    file = write(tmp_path, "exp", swap("hidden_size: 8", "hidden_size: 1e1").replace(
        "train_epochs: 1}", "train_epochs: 1, lr: 1e-3}"))
    assert main(["validate", str(file)]) == 0
    assert "ok — experiment 't', 1 trials" in capsys.readouterr().out
    from clmem.config import load_experiment

    trial = load_experiment(file).trials[0]
    assert trial["model"]["hidden_size"] == 10 and type(trial["model"]["hidden_size"]) is int
    assert trial["strategy"]["lr"] == 0.001


@pytest.mark.parametrize("uri", ["sqlite:///m.db", "m.db", "./runs/mlflow.db", "file:///tmp/mlruns", "http://h:5000",
                                 "https://h", "postgresql+psycopg2://u@h/db", "mysql://u@h/db", "databricks"])
def test_supported_tracking_uris_pass(uri):
    assert check_tracking_uri(uri) == uri


def test_memory_estimate_is_hand_computed_and_names_the_option():
    trial = {"benchmark": {"name": "split_digits"}, "strategy": {"train_mb_size": 32},
             "model": {"name": "mlp", "hidden_size": 10, "num_layers": 2}}
    # 64*10+10 + (10*10+10) + 10*10+10 = 870 parameters, weights and gradients, 4 bytes each
    assert estimate_bytes(trial) == 4 * 2 * 870
    check_fits(trial, 4 * 2 * 870)
    with pytest.raises(ConfigError, match=r"^model\.hidden_size: 10 makes the model need at least 6960 bytes \(weights"):
        check_fits(trial, 4 * 2 * 870 - 1)
    lstm = {"benchmark": {"name": "other"}, "strategy": {"train_mb_size": 2},
            "model": {"name": "lstm", "hidden_size": 3, "num_layers": 1}}
    # input 1, 2 classes (lower bounds): 4*3*(1+3+2) + 3*2+2 = 80 parameters; state 2*3 per sample
    assert estimate_bytes(lstm) == 4 * (2 * 80 + 2 * 6)
    assert estimate_bytes({**lstm, "model": {"name": "no_estimate"}}) is None


def test_resource_requests_against_nodes():
    nodes = [{"cpu": 8, "gpu": 0}, {"cpu": 2, "gpu": 1}]
    assert plan_request({"cpu": 2, "gpu": 0.5}, nodes, "c") == ({"cpu": 2.0, "gpu": 0.5}, False)
    assert plan_request({"cpu": 1, "gpu": 0.5}, [{"cpu": 2, "gpu": 0}], "c") == ({"cpu": 1.0, "gpu": 0.0}, True)
    with pytest.raises(ConfigError, match=r"^resources\.cpu: 16\.0 CPUs per trial, but no node of c has more than 8"):
        plan_request({"cpu": 16, "gpu": 0}, nodes, "c")
    with pytest.raises(ConfigError, match=r"^resources: \{cpu: 4, gpu: 1\} per trial, but no node of c has both"):
        plan_request({"cpu": 4, "gpu": 1}, nodes, "c")


@pytest.mark.slow
def test_gpu_request_without_a_gpu_runs_on_the_cpu_and_never_hangs(tmp_path, monkeypatch, capsys):
    from clmem.sizing import local_gpu_count

    if local_gpu_count():
        pytest.skip("this machine has a GPU: the CPU fallback does not apply")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLMEM_RAY_STORAGE", str(tmp_path / "ray_results"))
    raw = yaml.safe_load(BASE)
    raw.update(resources={"cpu": 1, "gpu": 0.5}, name="gpu_fallback")
    file = tmp_path / "gpu.yaml"
    file.write_text(yaml.safe_dump(raw))
    uri = f"sqlite:///{tmp_path}/m.db"
    assert main(["grid", str(file), "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "has no GPU: every trial runs on the CPU" in out
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("gpu_fallback").experiment_id])
    trial = next(r for r in runs if r.data.tags.get("clmem.kind") == "trial")
    parent = next(r for r in runs if r.data.tags.get("clmem.kind") == "grid")
    assert trial.info.status == "FINISHED" and trial.data.tags["clmem.device"] == "cpu"
    assert parent.data.tags["clmem.gpu_fallback"] == "true"


def test_a_cluster_is_asked_to_scale_then_given_a_bounded_wait(monkeypatch):
    """``--address``: no node fits yet → the autoscaler is asked once; a node appears → its GPU is used;
    none ever appears → after the wait the GPU request falls back to the CPU, a CPU request is refused."""
    import ray.autoscaler.sdk

    from clmem import grid
    from clmem.config import Experiment

    asked, views = [], iter([[{"cpu": 0, "gpu": 0, "memory": 0}], [{"cpu": 8, "gpu": 1, "memory": 32e9}]])
    monkeypatch.setattr(ray.autoscaler.sdk, "request_resources", lambda bundles: asked.append(bundles))
    monkeypatch.setattr(grid, "_alive_nodes", lambda: next(views))
    monkeypatch.setattr(grid.time, "sleep", lambda s: None)
    raw = yaml.safe_load(BASE)
    experiment = Experiment.from_dict({**raw, "resources": {"cpu": 2, "gpu": 0.5}}, source="f.yaml")
    lines = []
    assert grid.cluster_request(experiment, "auto", lines.append, wait_s=60) == ({"cpu": 2.0, "gpu": 0.5}, False)
    assert asked == [[{"CPU": 2.0, "GPU": 0.5}], []] and lines[0].startswith("waiting up to 60 s")

    monkeypatch.setattr(grid, "_alive_nodes", lambda: [{"cpu": 8, "gpu": 0, "memory": 0}])
    lines.clear()
    assert grid.cluster_request(experiment, "auto", lines.append, wait_s=0) == ({"cpu": 2.0, "gpu": 0.0}, True)
    assert "has no GPU: every trial runs on the CPU" in lines[-1]
    big = Experiment.from_dict({**raw, "resources": {"cpu": 64}}, source="f.yaml")
    with pytest.raises(ConfigError, match=r"^f\.yaml: resources\.cpu: 64\.0 CPUs per trial, but no node of the Ray "
                                          r"cluster at auto has more than 8"):
        grid.cluster_request(big, "auto", lines.append, wait_s=0)
