"""MemN2N on real bAbI v1.2 ``en`` (1k), joint training over the 20 tasks (Sukhbaatar et al. 2015, Table 1 "joint").

Setup (the paper's joint-training recipe, as in its reference code ``MemN2N-babi-matlab``): embedding d = 50, K = 3 hops,
adjacent weight tying, position encoding (PE), temporal encoding, linear start (LS), random noise (RN, 10% empty
memories in training), memory of the 50 most recent sentences; SGD with the loss *summed* over the batch (as the
reference code), lr 0.01 halved every 15 epochs, gradient-norm clipping 40, batch 32, 60 epochs; 10% of each task's
training questions held out for validation. LS: the softmax of the memory layers is removed for the first 20 epochs
(scaled with ``--epochs``) or until the validation loss stops falling, whichever comes first.

Reported per seed: per-task test error, mean test error, failed tasks (test error > 5%), validation error, wall time.
Across seeds: mean ± sd, and the best seed chosen by validation error (as the paper picks the best of its runs).

    .venv/bin/python benchmarks/memn2n_babi.py --seeds 0 1 2           # the real run, seeds one after another
    .venv/bin/python benchmarks/memn2n_babi.py --seeds 1 --tag s1     # one seed per process (run 2 in parallel) ...
    .venv/bin/python benchmarks/memn2n_babi.py --merge s0 s1 s2       # ... then merge their JSON into the table
    .venv/bin/python benchmarks/memn2n_babi.py --quick                 # smoke run (2 epochs, 1 seed)

Data: ``--data`` (default ``$CLMEM_DATA/babi`` or ``../shared/data/babi`` beside the checkout), holding ``en/``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from clmem.learners.memn2n import MemN2N, MemN2NConfig  # noqa: E402
from clmem.tasks.babi import Vocabulary, encode_memnet, load_babi  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
TASKS = list(range(1, 21))
PAPER = {"mean_error": 12.4, "failed": 11}


def default_data() -> Path:
    if os.environ.get("CLMEM_DATA"):
        return Path(os.environ["CLMEM_DATA"]) / "babi"
    return REPO.parent / "shared" / "data" / "babi"


def prepare(root: Path, seed: int, max_memory: int):
    train, test = load_babi(TASKS, "train", root), load_babi(TASKS, "test", root)
    vocab = Vocabulary.build([q for t in TASKS for q in train[t] + test[t]])
    rng = np.random.default_rng(seed)
    tr, va = [], []
    for t in TASKS:
        order = rng.permutation(len(train[t]))
        n_val = len(order) // 10
        va += [train[t][i] for i in order[:n_val]]
        tr += [train[t][i] for i in order[n_val:]]
    te = [q for t in TASKS for q in test[t]]
    every = tr + va + te
    width = max(len(s) for q in every for s in q.context[-max_memory:])
    qlen = max(len(q.question) for q in every)

    def enc(qs):
        d = encode_memnet(qs, vocab, max_memory=max_memory, max_sentence_len=width, max_query_len=qlen)
        tasks = torch.tensor([q.task for q in qs])
        return d.stories, d.queries, d.answers, tasks

    return vocab, enc(tr), enc(va), enc(te)


def trim(stories: torch.Tensor) -> torch.Tensor:
    """Drop the trailing memory slots that are empty for the whole batch (slot 0 is the most recent sentence)."""
    used = stories.ne(0).any(dim=-1).any(dim=0).nonzero()
    return stories[:, : int(used.max()) + 1] if len(used) else stories[:, :1]


@torch.no_grad()
def evaluate(model: MemN2N, data, batch: int = 1000) -> Dict[str, object]:
    model.eval()
    stories, queries, answers, tasks = data
    loss, wrong = 0.0, torch.zeros(len(answers), dtype=torch.bool)
    for i in range(0, len(answers), batch):
        logits = model(trim(stories[i:i + batch]), queries[i:i + batch])
        loss += float(F.cross_entropy(logits, answers[i:i + batch], reduction="sum"))
        wrong[i:i + batch] = logits.argmax(-1).ne(answers[i:i + batch])
    per_task = {int(t): 100.0 * float(wrong[tasks == t].float().mean()) for t in TASKS}
    model.train()
    return {"loss": loss / len(answers), "error": 100.0 * float(wrong.float().mean()), "per_task": per_task}


def run_seed(seed: int, args) -> Dict[str, object]:
    torch.manual_seed(seed)
    np.random.seed(seed)
    t_start = time.perf_counter()
    vocab, train, val, test = prepare(args.data, seed, args.max_memory)
    cfg = MemN2NConfig(vocab_size=len(vocab), embedding_dim=args.dim, hops=args.hops, max_memory=args.max_memory,
                       position_encoding=True, temporal_encoding=True, linear_start=args.ls_epochs > 0,
                       random_noise=args.random_noise)
    model = MemN2N(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    stories, queries, answers, _ = train
    n = len(answers)
    gen = torch.Generator().manual_seed(seed)
    history: List[Dict[str, float]] = []
    ls_best, ls_ended = math.inf, None
    print(f"[seed {seed}] vocab {len(vocab)}, train {n}, val {len(val[2])}, test {len(test[2])}, "
          f"memory slots {stories.shape[1]} x {stories.shape[2]} words", flush=True)
    for epoch in range(args.epochs):
        lr = args.lr * 0.5 ** (epoch // args.decay_every)
        for group in opt.param_groups:
            group["lr"] = lr
        t0, total = time.perf_counter(), 0.0
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, args.batch):
            idx = order[i:i + args.batch]
            logits = model(trim(stories[idx]), queries[idx])
            loss = F.cross_entropy(logits, answers[idx], reduction="sum")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            opt.step()
            total += loss.item()
        v = evaluate(model, val)
        phase = "LS" if model.linear_start else "softmax"
        history.append({"epoch": epoch + 1, "lr": lr, "phase": phase, "train_loss": total / n,
                        "val_loss": v["loss"], "val_error": v["error"], "seconds": time.perf_counter() - t0})
        print(f"[seed {seed}] epoch {epoch + 1}/{args.epochs} {phase} lr {lr:.5f} train loss {total / n:.3f} "
              f"val loss {v['loss']:.3f} val error {v['error']:.2f}% ({time.perf_counter() - t0:.0f}s)", flush=True)
        if model.linear_start:
            stalled = v["loss"] >= ls_best
            ls_best = min(ls_best, v["loss"])
            if stalled or epoch + 1 >= args.ls_epochs:
                model.end_linear_start()
                ls_ended = epoch + 1
                print(f"[seed {seed}] linear start ended after epoch {epoch + 1} "
                      f"({'validation loss stopped falling' if stalled else 'LS epoch limit'})", flush=True)
    final_val, final_test = evaluate(model, val), evaluate(model, test)
    wall = time.perf_counter() - t_start
    failed = [t for t, e in final_test["per_task"].items() if e > 5.0]
    print(f"[seed {seed}] test mean error {statistics.mean(final_test['per_task'].values()):.2f}%, "
          f"failed {len(failed)}, val error {final_val['error']:.2f}%, wall {wall:.0f}s", flush=True)
    return {"seed": seed, "epochs": args.epochs, "linear_start_ended_after_epoch": ls_ended,
            "val_error": final_val["error"], "val_loss": final_val["loss"],
            "test_error_per_task": final_test["per_task"],
            "test_mean_error": statistics.mean(final_test["per_task"].values()),
            "failed_tasks": len(failed), "failed_task_ids": failed, "wall_seconds": wall, "history": history}


def summarise(runs: List[Dict[str, object]], config: Dict[str, object]) -> Dict[str, object]:
    def stat(values):
        values = list(values)
        return {"mean": statistics.mean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}

    best = min(runs, key=lambda r: r["val_error"])
    summary = {
        "seeds": [r["seed"] for r in runs],
        "test_mean_error": stat(r["test_mean_error"] for r in runs),
        "failed_tasks": stat(r["failed_tasks"] for r in runs),
        "wall_seconds": stat(r["wall_seconds"] for r in runs),
        "per_task": {t: stat(r["test_error_per_task"][t] for r in runs) for t in TASKS},
        "best_seed": best["seed"],
        "best": {"test_mean_error": best["test_mean_error"], "failed_tasks": best["failed_tasks"],
                 "val_error": best["val_error"], "wall_seconds": best["wall_seconds"]},
    }
    epochs = {r["epochs"] for r in runs}
    full = epochs == {60}
    summary["targets"] = {
        "best_mean_error_le_12.4": best["test_mean_error"] <= PAPER["mean_error"],
        "best_failed_le_11": best["failed_tasks"] <= PAPER["failed"],
        "every_seed_under_1h": all(r["wall_seconds"] < 3600 for r in runs),
        "paper_schedule_60_epochs": full,
    }
    return summary


def markdown(payload: Dict[str, object]) -> str:
    runs, s, c = payload["runs"], payload["summary"], payload["config"]
    lines = ["# MemN2N on bAbI en (1k), joint training over 20 tasks", "",
             f"d={c['dim']}, {c['hops']} hops, PE + LS + RN({c['random_noise']}), temporal encoding, adjacent tying, "
             f"SGD lr {c['lr']} halved every {c['decay_every']} epochs, summed loss, clip {c['clip']}, batch "
             f"{c['batch']}, memory {c['max_memory']}, LS up to {c['ls_epochs']} epochs; epochs per seed: "
             f"{sorted({r['epochs'] for r in runs})}. Host: {payload['environment']['host']}, torch threads 1. "
             "Test error (%) per task; failed = error > 5%; best seed picked by validation error.", ""]
    head = "| task | " + " | ".join(f"seed {r['seed']}" for r in runs) + " | mean ± sd |"
    lines += [head, "|" + "---|" * (len(runs) + 2)]
    for t in TASKS:
        cells = " | ".join(f"{r['test_error_per_task'][t]:.1f}" for r in runs)
        p = s["per_task"][t]
        lines.append(f"| {t} | {cells} | {p['mean']:.1f} ± {p['sd']:.1f} |")
    lines.append("| **mean error** | " + " | ".join(f"**{r['test_mean_error']:.2f}**" for r in runs)
                 + f" | **{s['test_mean_error']['mean']:.2f} ± {s['test_mean_error']['sd']:.2f}** |")
    lines.append("| failed (> 5%) | " + " | ".join(str(r["failed_tasks"]) for r in runs)
                 + f" | {s['failed_tasks']['mean']:.1f} ± {s['failed_tasks']['sd']:.1f} |")
    lines.append("| validation error | " + " | ".join(f"{r['val_error']:.2f}" for r in runs) + " | |")
    lines.append("| LS ended after epoch | " + " | ".join(str(r["linear_start_ended_after_epoch"]) for r in runs)
                 + " | |")
    lines.append("| epochs | " + " | ".join(str(r["epochs"]) for r in runs) + " | |")
    lines.append("| wall time (min) | " + " | ".join(f"{r['wall_seconds'] / 60:.1f}" for r in runs)
                 + f" | {s['wall_seconds']['mean'] / 60:.1f} ± {s['wall_seconds']['sd'] / 60:.1f} |")
    b = s["best"]
    lines += ["", f"**Best seed (by validation error): seed {s['best_seed']}: mean test error "
              f"{b['test_mean_error']:.2f}%, {b['failed_tasks']} failed tasks** (paper: {PAPER['mean_error']}%, "
              f"{PAPER['failed']} failed, best of 10 runs).", ""]
    tg = s["targets"]
    lines.append(f"Targets: best mean error ≤ 12.4%: {'met' if tg['best_mean_error_le_12.4'] else 'NOT met'}; "
                 f"best ≤ 11 failed: {'met' if tg['best_failed_le_11'] else 'NOT met'}; every seed < 1 h: "
                 f"{'met' if tg['every_seed_under_1h'] else 'NOT met'}"
                 + ("" if tg["paper_schedule_60_epochs"] else "; NOTE: not the paper's 60-epoch schedule"
                    " (shortened to fit the time available)") + ".")
    if payload.get("note"):
        lines += ["", payload["note"]]
    return "\n".join(lines) + "\n"


def environment() -> Dict[str, object]:
    return {"host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "loadavg_end": os.getloadavg()}


def write(name: str, payload: Dict[str, object]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(payload))
    print(f"wrote {RESULTS / name}.json and .md", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--ls-epochs", type=int, default=None, help="max LS epochs (default: epochs / 3; 0 = no LS)")
    p.add_argument("--decay-every", type=int, default=None, help="halve lr every N epochs (default: epochs / 4)")
    p.add_argument("--dim", type=int, default=50)
    p.add_argument("--hops", type=int, default=3)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--clip", type=float, default=40.0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--max-memory", type=int, default=50)
    p.add_argument("--random-noise", type=float, default=0.1)
    p.add_argument("--data", type=Path, default=default_data())
    p.add_argument("--quick", action="store_true", help="smoke run: 2 epochs, first seed only")
    p.add_argument("--tag", default=None, help="write results/memn2n_babi_<tag>.{json,md} (for parallel seeds)")
    p.add_argument("--merge", nargs="+", default=None, help="merge the JSON of these tags into memn2n_babi")
    p.add_argument("--note", default="", help="a sentence added under the table")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.merge:
        parts = [json.loads((RESULTS / f"memn2n_babi_{tag}.json").read_text()) for tag in args.merge]
        runs = [r for part in parts for r in part["runs"]]
        for r in runs:
            r["test_error_per_task"] = {int(k): v for k, v in r["test_error_per_task"].items()}
        payload = {"config": parts[0]["config"], "runs": runs, "summary": summarise(runs, parts[0]["config"]),
                   "environment": environment(), "merged_from": args.merge, "note": args.note}
        write("memn2n_babi", payload)
        return
    if args.quick:
        args.epochs, args.seeds = 2, args.seeds[:1]
    if args.ls_epochs is None:
        args.ls_epochs = max(1, round(args.epochs / 3))
    if args.decay_every is None:
        args.decay_every = max(1, round(args.epochs / 4))
    if not (args.data / "en").is_dir():
        sys.exit(f"bAbI data not found: expected {args.data}/en (pass --data or set CLMEM_DATA)")
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("merge",)}
    runs = []
    name = "memn2n_babi" + (f"_{args.tag}" if args.tag else "") + ("_quick" if args.quick else "")
    for seed in args.seeds:
        runs.append(run_seed(seed, args))
        payload = {"config": config, "runs": runs, "summary": summarise(runs, config),
                   "environment": environment(), "note": args.note}
        write(name, payload)


if __name__ == "__main__":
    main()
