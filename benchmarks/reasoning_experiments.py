"""The six named experiments (issue 18 item 3): copy, associative, continual, logical, temporal, knowledge.

Runs each ``experiments/<name>.yaml`` through clmem's grid on local Ray (tracked in a temporary SQLite store)
and writes, per file, the comparison table (ACC, BWT, forgetting, the task's own figure) and the three figures
the design documents claim for their system, measured on clmem:

* **associative recall accuracy** (claimed 85–95%): ``associative.yaml``, right after training on associative
  recall — sequences with every output bit right (1 − ``seq_error_exp_0``) and output bits right
  (1 − bits per sequence / scored bits per sequence);
* **positive backward transfer in 70% of task transitions**: a transition is training on experience ``i >= 1``;
  its backward transfer is the mean change of the earlier experiences' scores, ``mean_{j<i}(R[i][j] −
  R[i−1][j])``, counted positive when earlier tasks got better (sign flipped for bits per sequence); fraction
  over every transition of every trial, per file and pooled over the files;
* **knowledge-graph completion hits@1** (claimed 70–85%): ``knowledge.yaml``, final and just-learned
  (``R[j][j]``) hits@1 averaged over experiences.

Usage: python benchmarks/reasoning_experiments.py [--files copy associative ...] [--budget-min 50]
         [--train-samples N] [--epochs N] [--max-concurrent N] [--render] [--readme]
Writes benchmarks/results/reasoning_experiments.{json,md} after every file.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import yaml
from _grid import RESULTS, ROOT, grid_runs, merge
from _readme import replace_block

FILES = ("copy", "associative", "continual", "logical", "temporal", "knowledge")
#: Per file: the experience whose own figure is reported (copy, associative recall) and what the figure is.
FOCUS = {"copy": (0, "copy"), "associative": (0, "associative recall"), "continual": (2, "associative recall")}
OUT = "reasoning_experiments"
NOTES = """
Notes:
- Every file runs at a size cut to fit 2 shared CPU cores (the note beside each heading: training sequences per
  experience and epochs; hidden size 32, memory 16 × 8, Adam 0.005, one seed). No learner masters any task at this
  budget, so compare the rows with each other; the claimed figures are measured at this budget only.
- Chance levels: bit accuracy 0.5 on the algorithmic streams; hits@1 1/num_entities on knowledge graphs; 0.5 on
  logic (balanced yes/no); temporal: 1/2 for first, about 1/(events) for before, 1/6 for order.
- Positive backward transfer counts a transition when the earlier experiences' mean score got better. While no
  algorithmic task is mastered, training on any of them also improves what they share (the output phase, bit
  statistics), so earlier tasks' bits per sequence can fall: a high fraction on those streams is transfer of
  that kind, not skills kept; read it beside the absolute scores.
"""


def _runs(raw: dict, max_concurrent: int | None) -> list[dict]:
    """Run the experiment ``raw`` on local Ray; per trial its params, final metrics and R / sequence-error
    matrices rebuilt from the per-experience metric histories (row ``i`` = after training experience ``i``)."""
    return grid_runs(raw, _read, max_concurrent)


def _matrix(client, run, prefix: str) -> list[list[float]]:
    count = len([k for k in run.data.metrics if k.startswith(prefix) and k[len(prefix):].isdigit()])
    columns = [sorted(client.get_metric_history(run.info.run_id, f"{prefix}{j}"), key=lambda m: m.step)
               for j in range(count)]
    return [[col[i].value for col in columns] for i in range(len(columns[0]))] if columns else []


def _read(client, run) -> dict:
    return {"model": run.data.params["model.name"], "strategy": run.data.params["strategy.name"],
            "status": run.info.status, "metrics": {k: run.data.metrics[k] for k in
                                                   ("ACC", "BWT", "Forgetting", "wall_time_s")},
            "R": _matrix(client, run, "acc_exp_"), "seq_error": _matrix(client, run, "seq_error_exp_")}


def transitions(R: list[list[float]], higher_is_better: bool) -> list[float]:
    """Backward transfer of each transition ``i >= 1``: ``mean_{j<i}(R[i][j] − R[i−1][j])``, signed so that
    positive means earlier tasks got better."""
    sign = 1.0 if higher_is_better else -1.0
    return [sign * statistics.fmean(R[i][j] - R[i - 1][j] for j in range(i)) for i in range(1, len(R))]


def scored_bits(benchmark: dict) -> list[float]:
    """Mean scored output bits per test sequence of each experience of an algorithmic stream (seed 0)."""
    from clmem.benchmarks import build_stream

    stream = build_stream(benchmark["name"], 0, **{k: v for k, v in benchmark.items() if k != "name"})
    out = []
    for exp in stream.benchmark.test_stream:
        ys = [exp.dataset[i][1] for i in range(len(exp.dataset))]
        out.append(statistics.fmean(float((y >= 0).sum()) for y in ys))
    return out


def _task_figure(name: str, run: dict, bits: list[float] | None) -> dict:
    """The task's own figure of one trial (see the module docstring)."""
    R = run["R"]
    if name in FOCUS:
        j = FOCUS[name][0]
        seq = run["seq_error"]
        return {"bits_after_own": R[j][j], "seq_acc_after_own": 1 - seq[j][j],
                "bit_acc_after_own": 1 - R[j][j] / bits[j],
                "bits_final": R[-1][j], "seq_acc_final": 1 - seq[-1][j]}
    return {"acc_after_own": statistics.fmean(R[j][j] for j in range(len(R))), "acc_final": statistics.fmean(R[-1])}


def measure(name: str, raw: dict, runs: list[dict]) -> dict:
    """Rows (one per trial, seed 0) and the file's figures."""
    higher = raw["benchmark"]["name"] != "continual_algorithmic"
    bits = scored_bits(raw["benchmark"]) if name in FOCUS else None
    rows, deltas = [], []
    for run in sorted(runs, key=lambda r: (r["strategy"], r["model"])):
        steps = transitions(run["R"], higher)
        deltas += steps
        rows.append({"model": run["model"], "strategy": run["strategy"], **run["metrics"],
                     **_task_figure(name, run, bits), "positive_transitions": sum(d > 0 for d in steps),
                     "transitions": len(steps), "R": run["R"]})
    return {"score": "accuracy" if higher else "bits_per_sequence", "scored_bits": bits, "rows": rows,
            "positive_transitions": sum(d > 0 for d in deltas), "transitions": len(deltas)}


def claims(results: dict) -> dict:
    """The three claimed figures, measured, from the files run so far."""
    out = {}
    if "associative" in results:
        rows = results["associative"]["rows"]
        out["associative_recall"] = {k: {"best": max(r[k] for r in rows), "mean": statistics.fmean(r[k] for r in rows),
                                         "best_model": max(rows, key=lambda r: r[k])["model"]}
                                     for k in ("seq_acc_after_own", "bit_acc_after_own", "seq_acc_final")}
    pos = sum(v["positive_transitions"] for v in results.values())
    total = sum(v["transitions"] for v in results.values())
    out["positive_bwt_transitions"] = {"pooled": [pos, total], **{
        k: [v["positive_transitions"], v["transitions"]] for k, v in results.items() if v["transitions"]}}
    if "knowledge" in results:
        rows = results["knowledge"]["rows"]
        out["kg_hits_at_1"] = {k: {"best": max(r[k] for r in rows), "mean": statistics.fmean(r[k] for r in rows),
                                   "best_model": max(rows, key=lambda r: r[k])["model"]}
                               for k in ("acc_final", "acc_after_own")}
    return out


def _row_md(name: str, r: dict) -> str:
    if name in FOCUS:
        own = (f"{r['bits_after_own']:.2f} / {r['seq_acc_after_own']:.3f} / {r['bit_acc_after_own']:.3f} | "
               f"{r['bits_final']:.2f} / {r['seq_acc_final']:.3f}")
    else:
        own = f"{r['acc_after_own']:.3f} | {r['acc_final']:.3f}"
    return (f"| {r['model']} | {r['strategy']} | {r['ACC']:.3f} | {r['BWT']:+.3f} | {r['Forgetting']:+.3f} | {own} "
            f"| {r['positive_transitions']}/{r['transitions']} | {r['wall_time_s']:.0f} |")


def _file_md(name: str, entry: dict) -> list[str]:
    if name in FOCUS:
        what = FOCUS[name][1]
        own = (f"{what} after training on it: bits/seq / seq. acc. / bit acc. | {what} at the end: bits/seq / "
               "seq. acc.")
        head = "score: bits per sequence (lower is better; BWT > 0, forgetting > 0 = earlier tasks got worse)"
    else:
        own = "mean R[j][j] (just learned) | mean final"
        head = "score: accuracy (higher is better; BWT < 0, forgetting > 0 = earlier tasks got worse)"
    header = f"| model | strategy | ACC | BWT | forgetting | {own} | positive transitions | wall (s) |"
    lines = [f"### {name} (`experiments/{name}.yaml`, {entry['note']})", "", head, "", header,
             "|" + "---|" * (header.count("|") - 1)]
    return lines + [_row_md(name, r) for r in sorted(entry["rows"], key=lambda r: r["ACC"],
                                                    reverse=entry["score"] == "accuracy")] + [""]


def render(results: dict, measured: dict) -> str:
    lines = ["# Named experiments (issue 18): copy, associative, continual, logical, temporal, knowledge", "",
             "Written by `benchmarks/reasoning_experiments.py`; seed 0, one trial per row, 2 shared CPU cores.", ""]
    for name, entry in results.items():
        lines += _file_md(name, entry)
    lines += ["## The claimed figures, measured", ""]
    if "associative_recall" in measured:
        a = measured["associative_recall"]
        lines.append(f"- associative recall (claimed 85–95%): best sequence accuracy right after training on it "
                     f"{a['seq_acc_after_own']['best']:.3f} ({a['seq_acc_after_own']['best_model']}), mean "
                     f"{a['seq_acc_after_own']['mean']:.3f}; best bit accuracy {a['bit_acc_after_own']['best']:.3f} "
                     f"({a['bit_acc_after_own']['best_model']}), mean {a['bit_acc_after_own']['mean']:.3f}; after "
                     f"the next task best sequence accuracy {a['seq_acc_final']['best']:.3f}")
    p = measured["positive_bwt_transitions"]
    per = ", ".join(f"{k} {v[0]}/{v[1]}" for k, v in p.items() if k != "pooled")
    lines.append(f"- positive backward transfer (claimed in 70% of task transitions): {p['pooled'][0]}/"
                 f"{p['pooled'][1]} transitions pooled ({per})")
    if "kg_hits_at_1" in measured:
        k = measured["kg_hits_at_1"]
        lines.append(f"- knowledge-graph completion hits@1 (claimed 70–85%): best final {k['acc_final']['best']:.3f} "
                     f"({k['acc_final']['best_model']}), mean {k['acc_final']['mean']:.3f}; best just-learned "
                     f"{k['acc_after_own']['best']:.3f}, mean {k['acc_after_own']['mean']:.3f}")
    return "\n".join(lines) + "\n" + NOTES


def _write(results: dict) -> None:
    measured = claims(results)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{OUT}.json").write_text(json.dumps({"files": results, "claims": measured}, indent=1))
    (RESULTS / f"{OUT}.md").write_text(render(results, measured))


def _overrides(args) -> dict:
    out: dict = {}
    if args.train_samples:
        out["benchmark"] = {"train_samples": args.train_samples}
    if args.epochs:
        out["strategy"] = {"train_epochs": args.epochs}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", nargs="+", default=list(FILES), choices=FILES)
    parser.add_argument("--budget-min", type=float, default=50.0, help="start no file after this many minutes")
    parser.add_argument("--train-samples", type=int, default=None, help="override every file's train_samples")
    parser.add_argument("--epochs", type=int, default=None, help="override every file's train_epochs")
    parser.add_argument("--max-concurrent", type=int, default=None)
    parser.add_argument("--render", action="store_true", help="only re-write the Markdown from the JSON")
    parser.add_argument("--readme", action="store_true",
                        help="also rewrite the README's per-file tables (block 'experiments') from the results")
    args = parser.parse_args()
    if args.render:
        results = json.loads((RESULTS / f"{OUT}.json").read_text())["files"]
        _write(results)
        return _readme(results) if args.readme else None
    start, results = time.perf_counter(), {}
    for name in args.files:
        elapsed = (time.perf_counter() - start) / 60
        if elapsed > args.budget_min:
            print(f"{name}: skipped, {elapsed:.0f} min of the {args.budget_min:.0f} min budget spent", flush=True)
            continue
        raw = merge(yaml.safe_load((ROOT / "experiments" / f"{name}.yaml").read_text()), _overrides(args))
        t0 = time.perf_counter()
        results[name] = measure(name, raw, _runs(raw, args.max_concurrent))
        b, s = raw["benchmark"], raw["strategy"]
        results[name]["note"] = (f"{b['train_samples']} training sequences per experience, {s['train_epochs']} epochs, "
                                 f"{(time.perf_counter() - t0) / 60:.1f} min")
        _write(results)
        print(render({name: results[name]}, claims(results)), flush=True)
    if args.readme:
        _readme(results)


def _readme(results: dict) -> None:
    """The README's block: one comparison table per experiment file (headings one level down)."""
    lines = [f"Produced by `python benchmarks/reasoning_experiments.py --render --readme` from "
             f"`benchmarks/results/{OUT}.json` (seed 0, one trial per row, 2 shared CPU cores; the claimed figures "
             "and notes are in the results file).", ""]
    for name, entry in results.items():
        lines += ["#" + line if line.startswith("### ") else line for line in _file_md(name, entry)]
    replace_block("experiments", "\n".join(lines))


if __name__ == "__main__":
    main()
