"""Comparison tables and plots name the score's unit and direction and rank best first: ascending for
lower-is-better scores (bits per sequence), descending for accuracy; on a real MLflow SQLite store."""
import json
import math

import pytest

from clmem import metrics
from clmem.cli import main
from clmem.compare import Score, format_table, group_rows, run_score, sort_rows
from clmem.options import ConfigError
from clmem.tracking import Tracker

# R matrices [T=2, T=2] per (strategy, seed); bits per sequence: lower is better.
# ACC = mean of the last row: naive 2.0 and 3.0 (mean 2.5), replay 1.25, ewc 3.0.
BITS = {("naive", 0): [[1.0, 4.0], [3.0, 1.0]], ("naive", 1): [[1.0, 4.0], [3.0, 3.0]],
        ("replay", 0): [[1.0, 4.0], [1.5, 1.0]], ("ewc", 0): [[2.0, 4.0], [2.2, 3.8]]}
# accuracy: higher is better; ACC naive 0.45, replay 0.8.
ACCURACY = {("naive", 0): [[0.9, 0.1], [0.1, 0.8]], ("replay", 0): [[0.9, 0.1], [0.8, 0.8]]}


def _log_grid(tracker: Tracker, name: str, table: dict, metric: str, higher: bool | None) -> str:
    """A grid parent run and one finished child per entry of ``table``, logged the way the runner reports."""
    client = tracker.client
    exp_id = tracker.experiment_id(name)
    parent = client.create_run(exp_id, tags={"clmem.kind": "grid", "clmem.axes": json.dumps(["strategy.name"])})
    for (strategy, seed), R in table.items():
        run_id = client.create_run(exp_id, tags={"mlflow.parentRunId": parent.info.run_id}).info.run_id
        client.log_param(run_id, "strategy.name", strategy)
        client.log_param(run_id, "seed", seed)
        hib = True if higher is None else higher
        for i in range(len(R)):
            step = metrics.step_metrics(R[: i + 1], hib)
            report = {"experience": i, "seen_acc": step["seen_acc"], "forgetting_at_step": step["forgetting"]}
            if higher is not None:
                report.update(metric=metric, higher_is_better=higher)
            if i == len(R) - 1:
                s = metrics.summarize(R, [0.0] * len(R), hib)
                report.update(ACC=s.acc, BWT=s.bwt, FWT=s.fwt, Forgetting=s.forgetting, wall_time_s=1.0)
            tracker.log_experience(run_id, report)
        tracker.finish_trial(run_id, {"R": R, "b": [0.0] * len(R)}, "FINISHED")
    client.set_terminated(parent.info.run_id, "FINISHED")
    return parent.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    tracker = Tracker(f"sqlite:///{tmp}/m.db")
    ids = {"bits": _log_grid(tracker, "bits", BITS, "bits_per_sequence", False),
           "acc": _log_grid(tracker, "acc", ACCURACY, "accuracy", True),
           "untagged": _log_grid(tracker, "untagged", ACCURACY, "", None)}
    return tracker, ids, tmp


def _compare(capsys, tracker, name, *extra) -> list[str]:
    assert main(["compare", name, "--tracking-uri", tracker.uri, *extra]) == 0
    return capsys.readouterr().out.splitlines()


def test_lower_is_better_ranks_ascending_and_names_unit(store, capsys):
    tracker, _, _ = store
    out = _compare(capsys, tracker, "bits")
    assert any("ACC = mean final bits per sequence" in line and "(lower is better)" in line
               and "best (lowest) first" in line for line in out)
    assert any("BWT" in line and "positive means forgetting" in line for line in out)
    header = next(line for line in out if line.startswith("strategy"))
    assert out.index(header) > 1  # the two description lines come first
    body = out[out.index(header) + 2:]
    assert [line.split()[0] for line in body[:3]] == ["replay", "naive", "ewc"]
    assert "2.500 ± 0.707" in body[1]  # naive: seeds 2.0 and 3.0, sample sd


def test_tracked_tags_and_accuracy_descending(store, capsys, tmp_path):
    tracker, ids, _ = store
    child = tracker.children(tracker.client.get_run(ids["bits"]))[0]
    assert run_score(child.data.tags) == Score("bits_per_sequence", run_score(child.data.tags).unit, False)
    _compare(capsys, tracker, "acc", "--format", "md", "--output", str(tmp_path / "t.md"))
    table = (tmp_path / "t.md").read_text()
    assert table.startswith("| strategy | seeds | ACC | BWT | FWT | Forgetting | wall_time_s |")
    assert table.index("| replay |") < table.index("| naive |")  # ACC 0.8 before 0.45
    notes = table.split("\n\n")[1:]  # beside the table: what ACC is, and the signs
    assert "top-1 accuracy" in notes[0] and "(higher is better)" in notes[0] and "best (highest) first" in notes[0]
    assert "BWT" in notes[1] and "negative means forgetting" in notes[1] and "Forgetting" in notes[1]


def test_untagged_runs_say_the_direction_is_unknown(store, capsys):
    tracker, _, _ = store
    out = _compare(capsys, tracker, "untagged")
    assert any("direction unknown" in line for line in out)


def test_ranking_by_forgetting_and_csv_columns(store, capsys, tmp_path):
    tracker, _, _ = store
    csv_out = tmp_path / "t.csv"
    _compare(capsys, tracker, "bits", "--metric", "Forgetting", "--format", "csv", "--output", str(csv_out))
    lines = csv_out.read_text().splitlines()
    assert lines[0].startswith("strategy,seeds,ACC_mean,ACC_sd") and lines[0].endswith(",score,higher_is_better")
    # Forgetting (rise of the error above its best earlier value; lower is better): ewc 0.2, replay 0.5, naive 2.0
    assert [line.split(",")[0] for line in lines[1:]] == ["ewc", "replay", "naive"]
    assert lines[1].split(",")[-2:] == ["bits_per_sequence", "False"]


def test_mixed_scores_rank_within_each_and_nan_last():
    def row(strategy, metric, higher, acc):
        return {"group": {"strategy.name": strategy}, "n": 1, "score": Score(metric, metric, higher),
                "ACC": (acc, 0.0), "BWT": (0.0, 0.0)}

    rows = [row("a", "accuracy", True, 0.2), row("b", "bits_per_sequence", False, math.nan),
            row("c", "bits_per_sequence", False, 3.0), row("d", "accuracy", True, 0.9),
            row("e", "bits_per_sequence", False, 1.0)]
    ranked = [r["group"]["strategy.name"] for r in sort_rows(rows, "ACC")]
    assert ranked == ["d", "a", "e", "c", "b"]
    text = format_table(sort_rows(rows, "ACC"), ["strategy.name"], ("ACC", "BWT"))
    assert "[accuracy] ACC = mean final accuracy" in text and "[bits_per_sequence] ACC" in text
    assert text.splitlines()[4].split()[:2] == ["strategy", "score"]  # four description lines, then the header


def test_runs_of_two_scores_never_share_a_row_and_bad_tag_is_refused():
    runs = [{"params": {"strategy.name": "naive"}, "metrics": {"ACC": v}, "status": "FINISHED",
             "tags": {"clmem.metric": m, "clmem.higher_is_better": h}}
            for v, m, h in ((0.5, "accuracy", "True"), (2.0, "bits_per_sequence", "False"))]
    rows = group_rows(runs, ["strategy.name"], ("ACC",))
    assert [(r["score"].name, r["ACC"][0]) for r in rows] == [("accuracy", 0.5), ("bits_per_sequence", 2.0)]
    with pytest.raises(ConfigError, match="clmem.higher_is_better"):
        run_score({"clmem.metric": "error", "clmem.higher_is_better": "yes"})


def test_plots_name_unit_and_rank_best_first(store, monkeypatch, tmp_path):
    from clmem import report

    tracker, ids, _ = store
    seen = {}
    real_bars, real_curves = report.plots.summary_bars, report.plots.curves_by_experience

    def bars(groups, names, path, title=None, ylabel=None):
        seen["bars"] = (list(groups), title, ylabel)
        return real_bars(groups, names, path, title=title, ylabel=ylabel)

    def curves(curves, ylabel, path, title=None):
        seen.setdefault("curves", []).append((list(curves), ylabel))
        return real_curves(curves, ylabel, path, title=title)

    monkeypatch.setattr(report.plots, "summary_bars", bars)
    monkeypatch.setattr(report.plots, "curves_by_experience", curves)
    files = report.export_plots(tracker, tracker.client.get_run(ids["bits"]), tmp_path, log=False)
    assert sorted(f.name for f in files) == ["R_ewc.png", "R_naive.png", "R_replay.png", "acc_bwt_bars.png",
                                             "forgetting_at_step_by_experience.png", "seen_acc_by_experience.png"]
    order, title, ylabel = seen["bars"]
    assert order == ["replay", "naive", "ewc"] and ylabel == "bits per sequence"
    assert "bits per sequence" in title and "lower is better" in title and "positive means forgetting" in title
    assert seen["curves"][0] == (["replay", "naive", "ewc"], "bits per sequence on experiences seen so far "
                                                             "(lower is better)")


def test_a_tracked_bit_stream_trial_carries_its_score(tmp_path, monkeypatch, capsys):
    """`clmem run` → runner report → MLflow tags → `clmem compare` names bits per sequence, lower is better."""
    import yaml

    monkeypatch.chdir(tmp_path)
    exp = {"name": "bits_run",
           "benchmark": {"name": "continual_algorithmic", "tasks": "copy,repeat_copy", "num_bits": 2,
                         "min_length": 1, "max_length": 2, "max_repeats": 2, "train_samples": 8, "test_samples": 4},
           "model": {"name": "lstm", "hidden_size": 8},
           "strategy": {"name": "sequence", "train_epochs": 1, "train_mb_size": 8, "optimizer": "adam"},
           "seeds": [0]}
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(exp))
    uri = f"sqlite:///{tmp_path}/m.db"
    assert main(["run", str(tmp_path / "e.yaml"), "--tracking-uri", uri]) == 0
    tracker = Tracker(uri)
    child = tracker.children(tracker.latest_parent("bits_run", "run"))[0]
    assert child.data.tags["clmem.metric"] == "bits_per_sequence"
    assert child.data.tags["clmem.higher_is_better"] == "False"
    assert not any(k.startswith("avl_") for k in child.data.metrics)  # no accuracy-based Avalanche values
    capsys.readouterr()
    out = _compare(capsys, tracker, "bits_run")
    assert any("ACC = mean final bits per sequence" in line and "(lower is better)" in line for line in out)
