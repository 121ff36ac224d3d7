"""DNC trained jointly on bAbI tasks (default 1, 2, 6, 7, 15) with early stopping on a validation split.

Data: the ``babi_joint`` stream's datasets (``clmem.tasks.streams.babi_splits``, encoding ``sequence``: the word
stream ``sentence <sep> ... <query> question <answer>``, one one-hot word per step, answer read at the ``<answer>``
step); the validation split is the last ``--validation-fraction`` of each task's training questions (whole stories).
Training is a plain loop (no Avalanche, to keep the per-step overhead small on a CPU): batches of questions of
similar length (``--pad batch``: each batch cut to its longest question; ``--pad global``: every question padded to
the longest of the stream, as the Avalanche stream does), Adam or RMSProp, global gradient-norm clipping. Every
``--eval-every`` updates the validation error per task is measured; the best model (lowest mean validation error) is
kept, training stops after ``--patience`` evaluations without improvement, at ``--max-epochs`` or at the wall budget,
and the best model is scored on the test split: per-task error, mean and failed tasks (> 5% error).

Results are written as the run goes to ``benchmarks/results/dnc_babi[_<tag>].{json,md}`` (learning curve included).

    nice -n 15 .venv/bin/python benchmarks/dnc_babi.py --layout en-10k --wall-budget 3600 --tag en10k
    nice -n 15 .venv/bin/python benchmarks/dnc_babi.py --tasks 1 --max-epochs 5 --tag t1   # a quick check
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
import _harness as H  # noqa: E402

from clmem.learners.sequence import make_sequence_learner  # noqa: E402
from clmem.tasks.stream_metrics import FAIL_THRESHOLD  # noqa: E402
from clmem.tasks.streams import babi_splits, parse_groups  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
IMPROVEMENTS = ("masked_content", "dealloc_erase", "link_sharpness", "layer_norm")


def default_data() -> Path:
    if os.environ.get("CLMEM_DATA"):
        return Path(os.environ["CLMEM_DATA"]) / "babi"
    return REPO.parent / "shared" / "data" / "babi"


def load(args):
    """``({split: (ids [N, T], answers [N], tasks [N], lengths [N])}, vocabulary size)``."""
    tasks = [t for g in parse_groups(args.tasks, None) for t in g]
    data, _, vocab = babi_splits([tasks], str(args.data), args.layout, None, "sequence", args.max_memory,
                                 args.train_questions, args.test_questions, args.validation_fraction)
    out = {}
    for split, (ds,) in data.items():
        out[split] = (ds.x, ds.y, ds.info[:, 0], (ds.x != 0).sum(1))
    return out, vocab


def batches(lengths: torch.Tensor, size: int, rng: np.random.Generator | None):
    """Index batches of questions of similar length (sorted by length, then chunked); shuffled when ``rng``."""
    order = np.argsort(lengths.numpy() + (rng.random(len(lengths)) * 0.5 if rng is not None else 0), kind="stable")
    chunks = [order[i:i + size] for i in range(0, len(order), size)]
    if rng is not None:
        rng.shuffle(chunks)
    return chunks


def inputs(ids: torch.Tensor, lengths: torch.Tensor, vocab: int, pad: str) -> torch.Tensor:
    """One-hot ``[B, T', V]`` of left-padded ``ids [B, T]`` (``pad == "batch"``: cut to the longest in the batch)."""
    if pad == "batch":
        ids = ids[:, ids.shape[1] - int(lengths.max()):]
    hot = F.one_hot(ids, vocab).float()
    hot[..., 0] = 0.0
    return hot


def build(args, vocab: int) -> torch.nn.Module:
    if args.model == "lstm":
        return make_sequence_learner("lstm", vocab, vocab, hidden_size=args.hidden)
    extra = {k: True for k in IMPROVEMENTS if getattr(args, k)}
    if args.bypass_dropout:
        extra["bypass_dropout"] = args.bypass_dropout
    return make_sequence_learner("dnc", vocab, vocab, hidden_size=args.hidden, memory_size=args.memory_size,
                                 word_size=args.word_size, num_reads=args.num_reads, controller=args.controller,
                                 clip_value=args.clip_value, **extra)


@torch.no_grad()
def evaluate(model, split, vocab: int, pad: str, size: int = 256) -> dict:
    """Per-task error, mean over tasks and failed tasks (> 5%) of ``split``."""
    ids, answers, tasks, lengths = split
    model.eval()
    wrong = torch.zeros(len(ids))
    for index in batches(lengths, size, None):
        index = torch.from_numpy(index)
        logits = model(inputs(ids[index], lengths[index], vocab, pad))[:, -1]
        wrong[index] = (logits.argmax(-1) != answers[index]).float()
    model.train()
    per_task = {int(t): float(wrong[tasks == t].mean()) for t in torch.unique(tasks).tolist()}
    return {"per_task": per_task, "mean": float(np.mean(list(per_task.values()))),
            "failed": int(sum(e > FAIL_THRESHOLD for e in per_task.values()))}


def optimiser(args, model):
    if args.optimizer == "rmsprop":
        return torch.optim.RMSprop(model.parameters(), lr=args.lr, momentum=0.9, eps=1e-10)
    return torch.optim.Adam(model.parameters(), lr=args.lr)


def train(args, seed: int, data, vocab: int, record) -> dict:
    """One seed: the run record (curve, best validation, test of the best model)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build(args, vocab)
    opt = optimiser(args, model)
    run = {"seed": seed, "parameters": sum(p.numel() for p in model.parameters()), "curve": [], "status": "running"}
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        step = _epochs(args, seed, model, opt, data, vocab, rng, run, record, t0, c0)
    except KeyboardInterrupt:  # SIGTERM / Ctrl-C: score the best model so far
        run["status"] = "cut"
        step = run["curve"][-1]["update"] if run["curve"] else 0
    best_state = run.pop("_best_state", None)
    if best_state is not None:
        model.load_state_dict(best_state)
    valid = [c["valid"]["mean"] for c in run["curve"]]
    run.update(best_valid=min(valid, default=math.nan), test=evaluate(model, data["test"], vocab, args.pad),
               updates=step, wall_s=round(time.perf_counter() - t0, 1), cpu_s=round(time.process_time() - c0, 1))
    record(run)
    return run


def _epochs(args, seed, model, opt, data, vocab, rng, run, record, t0, c0) -> int:
    """The training loop of :func:`train`; keeps the best state in ``run["_best_state"]``; returns the updates."""
    ids, answers, _, lengths = data["train"]
    best, stale, step, losses = math.inf, 0, 0, []
    for epoch in range(args.max_epochs):
        for index in batches(lengths, args.batch, rng):
            index = torch.from_numpy(index)
            logits = model(inputs(ids[index], lengths[index], vocab, args.pad))[:, -1]
            loss = F.cross_entropy(logits, answers[index])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"seed {seed}: non-finite loss at update {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if args.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
            opt.step()
            step, losses = step + 1, losses + [float(loss)]
            out_of_time = (time.perf_counter() - t0 > args.wall_budget or time.process_time() - c0 > args.cpu_budget
                           or step >= args.max_updates)
            if step % args.eval_every and not out_of_time:
                continue
            valid = evaluate(model, data["valid"], vocab, args.pad)
            run["curve"].append({"update": step, "epoch": epoch + 1, "questions": step * args.batch,
                                 "wall_s": round(time.perf_counter() - t0, 1),
                                 "cpu_s": round(time.process_time() - c0, 1),
                                 "train_loss": float(np.mean(losses)), "valid": valid})
            losses = []
            print(f"[seed {seed}] update {step} epoch {epoch + 1} loss {run['curve'][-1]['train_loss']:.3f} valid "
                  f"{valid['mean']:.3f} {valid['per_task']}", flush=True)
            if valid["mean"] < best:
                best, run["_best_state"], stale = valid["mean"], copy.deepcopy(model.state_dict()), 0
            else:
                stale += 1
            record(run)
            if stale >= args.patience or out_of_time:
                run["status"] = "early stop" if stale >= args.patience else "budget"
                break
        if run["status"] != "running":
            break
    else:
        run["status"] = "max epochs"
    return step


def markdown(args, runs: list) -> str:
    tasks = [t for g in parse_groups(args.tasks, None) for t in g]
    model = ("LSTM" if args.model == "lstm" else
             f"DNC (controller {args.controller} {args.hidden}, N={args.memory_size}, W={args.word_size}, "
             f"R={args.num_reads}, clip_value {args.clip_value}; improvements: "
             f"{', '.join(k for k in IMPROVEMENTS if getattr(args, k)) or 'none'}"
             f"{f', bypass dropout {args.bypass_dropout}' if args.bypass_dropout else ''})")
    lines = [f"# bAbI joint training ({args.layout}), tasks {args.tasks}: {model}", "",
             f"{args.optimizer} lr {args.lr}, batch {args.batch}, gradient-norm clip {args.clip_grad}, word stream of "
             f"the last {args.max_memory} sentences, pad {args.pad}; validation: last {args.validation_fraction} of "
             f"each task's training questions; early stopping patience {args.patience} evaluations every "
             f"{args.eval_every} updates; budget per seed {args.wall_budget} s wall, {args.cpu_budget} s CPU, "
             f"{args.max_updates} updates; {args.threads} thread(s), "
             "CPU. Test error of the best-validation model; a task fails above 5%.", "",
             "| seed | status | updates | epochs | wall (s) | CPU (s) | best valid mean | "
             + " | ".join(f"qa{t}" for t in tasks) + " | test mean | failed |",
             "|---" * (9 + len(tasks)) + "|"]
    for r in runs:
        test = r.get("test")
        cells = [f"{test['per_task'][t]:.3f}" for t in tasks] if test else ["…"] * len(tasks)
        epoch = r["curve"][-1]["epoch"] if r["curve"] else 0
        best = min((c["valid"]["mean"] for c in r["curve"]), default=math.nan)
        lines.append(f"| {r['seed']} | {r['status']} | {r.get('updates', '…')} | {epoch} | {r.get('wall_s', '…')} "
                     f"| {r.get('cpu_s', '…')} | {best:.3f} | " + " | ".join(cells)
                     + (f" | {test['mean']:.3f} | {test['failed']} |" if test else " | … | … |"))
        if r["curve"] and not test:  # still running: the latest validation errors per task
            last = r["curve"][-1]["valid"]["per_task"]
            lines.append(f"| {r['seed']} | latest valid | | | | | | " + " | ".join(f"{last[t]:.3f}" for t in tasks)
                         + " | | |")
    done = [r for r in runs if r.get("test")]
    if len(done) > 1:
        means = [r["test"]["mean"] for r in done]
        lines += ["", f"Mean test error over {len(done)} seeds: {np.mean(means):.3f} ± {np.std(means, ddof=1):.3f}; "
                      f"best seed {min(means):.3f}."]
    lines += ["", "Learning curve (validation mean error by update):", ""]
    for r in runs:
        pts = ", ".join(f"{c['update']}: {c['valid']['mean']:.3f}" for c in r["curve"])
        lines.append(f"- seed {r['seed']}: {pts}")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="1,2,6,7,15")
    p.add_argument("--layout", default="en", choices=("en", "en-10k"))
    p.add_argument("--data", type=Path, default=default_data())
    p.add_argument("--train-questions", type=int, default=None, help="per task (default: all)")
    p.add_argument("--test-questions", type=int, default=None)
    p.add_argument("--validation-fraction", type=float, default=0.1)
    p.add_argument("--max-memory", type=int, default=20, help="most recent story sentences in the word stream")
    p.add_argument("--pad", default="batch", choices=("batch", "global"))
    p.add_argument("--model", default="dnc", choices=("dnc", "lstm"))
    p.add_argument("--controller", default="lstm", choices=("lstm", "feedforward"))
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--memory-size", type=int, default=64)
    p.add_argument("--word-size", type=int, default=32)
    p.add_argument("--num-reads", type=int, default=2)
    p.add_argument("--clip-value", type=float, default=20.0)
    for name in IMPROVEMENTS:
        p.add_argument("--" + name.replace("_", "-"), action="store_true")
    p.add_argument("--bypass-dropout", type=float, default=0.0)
    p.add_argument("--optimizer", default="adam", choices=("adam", "rmsprop"))
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--clip-grad", type=float, default=10.0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--max-epochs", type=int, default=100)
    p.add_argument("--wall-budget", type=float, default=3600.0, help="wall seconds per seed")
    p.add_argument("--cpu-budget", type=float, default=math.inf,
                   help="CPU seconds of this process per seed (fair across runs on a shared machine)")
    p.add_argument("--max-updates", type=int, default=10 ** 9)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tag", default=None)
    return p.parse_args(argv)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if not (args.data / args.layout).is_dir():
        sys.exit(f"bAbI data not found: expected {args.data}/{args.layout} (pass --data or set CLMEM_DATA)")
    data, vocab = load(args)
    name = "dnc_babi" + (f"_{args.tag}" if args.tag else "")
    RESULTS.mkdir(parents=True, exist_ok=True)
    runs: list = []

    def record(run):
        current = [r for r in runs if r["seed"] != run["seed"]] + [{k: v for k, v in run.items() if k[0] != "_"}]
        payload = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                   "vocabulary": vocab, "sizes": {k: len(v[0]) for k, v in data.items()}, "runs": current,
                   "environment": H.environment()}
        (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=1) + "\n")
        (RESULTS / f"{name}.md").write_text(markdown(args, current))

    signal.signal(signal.SIGTERM, _interrupt)
    for seed in args.seeds:
        runs.append(train(args, seed, data, vocab, record))
    print(f"wrote {RESULTS / name}.json and .md", flush=True)


if __name__ == "__main__":
    main()
