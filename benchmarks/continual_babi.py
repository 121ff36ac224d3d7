"""Continual bAbI with MemN2N and DNC: naive fine-tuning (``sequence``) vs replay (``sequence_replay``) vs EWC
(``sequence_ewc``), through clmem's own runner (``clmem.runner.run_trial``).

MemN2N reads the memory-network encoding (sentences as memory slots); the DNC reads the word stream
``sentence <sep> ... <query> question <answer>`` one word per step (``encoding: sequence``) and answers at the last
step, with its own (smaller) memory window and epochs, since it costs about one recurrent step per word.

Stream: the real bAbI v1.2 ``en`` (1k) tasks 1, 2, 6, 7, 15, one experience per task, in that order (benchmark
``continual_babi`` with ``data_root`` set; see ``experiments/continual_babi.yaml`` for the keys). The stream's metric is
the *error* (1 − accuracy, lower is better), so ACC is the mean final error, BWT the mean change of each earlier
task's error (positive = it got worse) and forgetting the average rise of the error above its best earlier value, as
``clmem.metrics`` defines them for lower-is-better metrics.

    .venv/bin/python benchmarks/continual_babi.py                    # 2 models x 3 strategies x --seeds
    .venv/bin/python benchmarks/continual_babi.py --quick            # 1 epoch per experience, 100 questions

The README's figures, as three parallel processes merged (``continual_babi.{json,md}``)::

    .venv/bin/python benchmarks/continual_babi.py --models memn2n --seeds 0 1 2 --tag memn2n
    .venv/bin/python benchmarks/continual_babi.py --models dnc --seeds 0 --tag dnc8e0
    .venv/bin/python benchmarks/continual_babi.py --models dnc --seeds 1 --tag dnc8e1
    .venv/bin/python benchmarks/continual_babi.py --merge memn2n dnc8e0 dnc8e1

From an experiment file instead (every trial of its grid, ``--jobs`` processes at once, results written after each
trial to ``benchmarks/results/<file stem>[_<tag>].{json,md}``; see ``_experiment_mode.py``)::

    nice -n 15 .venv/bin/python benchmarks/continual_babi.py --experiment experiments/continual_babi_memory.yaml \
        --jobs 2 --budget-min 70
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
import _harness as H  # noqa: E402

from clmem.config import Experiment  # noqa: E402
from clmem.runner import run_trial  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
STRATEGIES = ["sequence", "sequence_replay", "sequence_ewc"]


def default_data() -> Path:
    if os.environ.get("CLMEM_DATA"):
        return Path(os.environ["CLMEM_DATA"]) / "babi"
    return REPO.parent / "shared" / "data" / "babi"


def experiment(args, model: str) -> dict:
    memn2n = model == "memn2n"
    return {
        "name": "continual_babi_benchmark",
        "benchmark": {"name": "continual_babi", "tasks": args.tasks, "data_root": str(args.data),
                      "encoding": "memnet" if memn2n else "sequence",
                      "max_memory": args.max_memory if memn2n else args.dnc_max_memory,
                      "train_questions": args.train_questions, "test_questions": args.test_questions},
        "model": {"name": "memn2n", "embedding_dim": args.dim, "hops": 3} if memn2n else
                 {"name": "dnc", "hidden_size": 64, "memory_size": 32, "word_size": 16, "num_reads": 2},
        "strategy": {"name": args.strategies, "train_epochs": args.epochs if memn2n else args.dnc_epochs,
                     "train_mb_size": 32,
                     "eval_mb_size": 256, "optimizer": "adam", "lr": args.lr, "clip_grad_norm": 40.0,
                     "sequence_replay": {"mem_size": args.mem_size},
                     "sequence_ewc": {"ewc_lambda": args.ewc_lambda}},
        "seeds": args.seeds,
        "resources": {"cpu": 1, "gpu": 0},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--strategies", nargs="+", default=None, help="default: sequence, sequence_replay, sequence_ewc")
    p.add_argument("--models", nargs="+", default=None,
                   help="memn2n and/or dnc (default both); with --experiment: names of its model.name axis")
    p.add_argument("--dnc-epochs", type=int, default=8)
    p.add_argument("--dnc-max-memory", type=int, default=10, help="sentences in the DNC's word stream")
    p.add_argument("--tasks", default="1,2,6,7,15")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--dim", type=int, default=20)
    p.add_argument("--max-memory", type=int, default=20)
    p.add_argument("--train-questions", type=int, default=1000)
    p.add_argument("--test-questions", type=int, default=1000)
    p.add_argument("--mem-size", type=int, default=500)
    p.add_argument("--ewc-lambda", type=float, default=100.0)
    p.add_argument("--data", type=Path, default=default_data())
    p.add_argument("--quick", action="store_true")
    p.add_argument("--tag", default=None)
    p.add_argument("--merge", nargs="+", default=None,
                   help="write continual_babi.{json,md} from the runs of continual_babi_<tag>.json (parallel runs)")
    p.add_argument("--experiment", type=Path, default=None,
                   help="run every trial of this experiment file instead (--models / --strategies filter its grid)")
    p.add_argument("--jobs", type=int, default=1, help="with --experiment: trials run at once (processes)")
    p.add_argument("--budget-min", type=float, default=None,
                   help="with --experiment: start no trial after this many minutes of wall time")
    p.add_argument("--update", action="store_true",
                   help="with --experiment: rerun only the filtered trials, keeping the results file's other runs")
    args = p.parse_args()
    if args.experiment is not None:
        from _experiment_mode import run_experiment  # noqa: PLC0415

        run_experiment(args, REPO, RESULTS)
        return
    if args.merge:
        merge(args.merge)
        return
    torch.set_num_threads(1)
    args.models, args.strategies = args.models or ["memn2n", "dnc"], args.strategies or STRATEGIES
    if not set(args.models) <= {"memn2n", "dnc"}:
        sys.exit(f"--models: expected memn2n and/or dnc (without --experiment), got {' '.join(args.models)}")
    if args.quick:
        args.epochs = args.dnc_epochs = 1
        args.train_questions, args.test_questions, args.seeds = 100, 100, args.seeds[:1]
    if not (args.data / "en").is_dir():
        sys.exit(f"bAbI data not found: expected {args.data}/en (pass --data or set CLMEM_DATA)")
    raws = {model: experiment(args, model) for model in args.models}
    rows = []
    for model, raw in raws.items():
        rows += run_model(model, Experiment.from_dict(raw))
    payload = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "experiments": raws, "runs": rows,
               "environment": H.environment()}
    name = "continual_babi" + (f"_{args.tag}" if args.tag else "") + ("_quick" if args.quick else "")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=1) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(args, rows))
    print(f"wrote {RESULTS / name}.json and .md", flush=True)


def merge(tags: list) -> None:
    parts = [json.loads((RESULTS / f"continual_babi_{tag}.json").read_text()) for tag in tags]
    rows = [r for part in parts for r in part["runs"]]
    args = argparse.Namespace(**parts[0]["args"])
    args.models = list(dict.fromkeys(m for part in parts for m in part["args"]["models"]))
    per_model = {"memn2n": ("epochs", "max_memory", "dim"), "dnc": ("dnc_epochs", "dnc_max_memory")}
    for part in parts:  # each model's settings from the run that trained it
        for model in part["args"]["models"]:
            for key in per_model[model]:
                setattr(args, key, part["args"][key])
    args.seeds = sorted({r["seed"] for r in rows})
    payload = {"args": vars(args), "experiments": {k: v for part in parts for k, v in part["experiments"].items()},
               "runs": rows, "merged_from": tags, "environment": parts[-1]["environment"]}
    (RESULTS / "continual_babi.json").write_text(json.dumps(payload, indent=1) + "\n")
    (RESULTS / "continual_babi.md").write_text(markdown(args, rows))


def run_model(model: str, exp: Experiment) -> list:
    rows = []
    for trial in exp.trials:
        name, seed = trial["strategy"]["name"], trial["seed"]
        name = f"{model} {name}"
        print(f"[{name} seed {seed}] start", flush=True)
        t0 = time.perf_counter()
        result = run_trial(trial, on_experience=lambda i, rep: print(
            f"[{name} seed {seed}] after experience {i}: errors {[round(x, 3) for x in rep['R'][-1]]}", flush=True))
        rows.append({"model": model, "strategy": trial["strategy"]["name"], "seed": seed, "R": result.R, "b": result.b,
                     "summary": {k: v for k, v in result.summary.items() if isinstance(v, (int, float))},
                     "wall_seconds": time.perf_counter() - t0})
        print(f"[{name} seed {seed}] summary {rows[-1]['summary']}", flush=True)
    return rows


def markdown(args, rows: list) -> str:
    tasks = args.tasks.split(",")
    lines = ["# Continual bAbI (real en 1k), MemN2N and DNC via clmem.runner", "",
             f"Tasks {args.tasks} in sequence, {args.train_questions} train / {args.test_questions} test questions "
             f"per task, Adam lr {args.lr}, batch 32, gradient clip 40; replay mem_size {args.mem_size}; EWC lambda "
             f"{args.ewc_lambda}. MemN2N: d={args.dim}, 3 hops, memory {args.max_memory} sentences, {args.epochs} "
             f"epochs per experience. DNC: LSTM 64, N=32, W=16, R=2, word stream of the last {args.dnc_max_memory} "
             f"sentences, {args.dnc_epochs} epochs per experience. Metric: test error (lower is better); BWT > 0 and "
             "forgetting > 0 mean earlier tasks got worse (Lopez-Paz & Ranzato BWT; forgetting: max over earlier "
             "rows, Chaudhry et al.).", "",
             "| model | strategy | seed | final error per task (" + ", ".join(tasks) + ") | ACC (mean final error) "
             "| BWT | forgetting | wall (s) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["summary"]
        lines.append(f"| {r['model']} | {r['strategy']} | {r['seed']} | {', '.join(f'{x:.3f}' for x in r['R'][-1])} | "
                     f"{s.get('ACC', float('nan')):.3f} | {s.get('BWT', float('nan')):.3f} | "
                     f"{s.get('Forgetting', float('nan')):.3f} | {r['wall_seconds']:.0f} |")
    if len(args.seeds) > 1:
        lines += ["", "| model | strategy | ACC mean ± sd (seeds) | BWT mean ± sd | forgetting mean ± sd |", "|---|---|---|---|---|"]
        for model in args.models:
            for strat in args.strategies:
                sel = [r["summary"] for r in rows if r["strategy"] == strat and r["model"] == model]
                if not sel:
                    continue
                cell = lambda k: (f"{statistics.mean(x[k] for x in sel):.3f} ± {statistics.stdev(x[k] for x in sel):.3f}"  # noqa: E731
                                  if len(sel) > 1 else f"{sel[0][k]:.3f} (1 seed)")
                lines.append(f"| {model} | {strat} | {cell('ACC')} | {cell('BWT')} | {cell('Forgetting')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
