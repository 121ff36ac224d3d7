"""MemN2N on real bAbI v1.2 ``en`` (1k), joint training over the 20 tasks (Sukhbaatar et al. 2015, Table 1 "joint").

Setup (the paper's joint-training recipe, section 4.2, with the authors' code -- ``MemN2N-babi-matlab`` and its
ports -- where the two differ or the paper leaves a detail open): embedding d = 50, K = 3 hops, adjacent weight
tying, position encoding (PE) with the authors' code's formula ``1 + 4(k - (d+1)/2)(j - (J+1)/2)/(dJ)`` and one
fixed J (the longest sentence or question, here 11 words; ``--pe paper`` gives the paper's formula with J = the
sentence's own length), temporal encoding, random noise (RN: 10% empty memories inserted in time, training
only), a fixed memory of the 50 most recent sentences null-padded (empty slots score 0 inside the softmax, as the
authors' code; ``--mask-empty`` leaves them out), weights N(0, 0.1), SGD with the loss *summed* over the batch of
32, gradient-norm clipping 40; 10% of each task's training questions held out for validation.
Linear start (LS): the memory softmaxes are removed and the model trains at lr 0.005 for 30 epochs (the authors'
code; ``--ls-patience N`` ends LS earlier, once the validation loss has had no new minimum for N epochs, as the
paper's text describes it), then the softmaxes are re-inserted and the 60-epoch schedule runs: lr 0.01 halved every
15 epochs.

Reported per seed: per-task test error, mean test error, failed tasks (test error > 5%), validation and training
error, epochs, seconds per epoch, wall time. Across seeds: mean ± sd, and the seed picked by validation error
(the paper picks the best of 10 runs; its text says by lowest training error, which is reported too).

    .venv/bin/python benchmarks/memn2n_babi.py --seeds 0 1 2 3 4 5 6 7 8 9   # the real run, one seed after another
    .venv/bin/python benchmarks/memn2n_babi.py --seeds 2 3 4 5 --tag a       # or seeds split over processes ...
    .venv/bin/python benchmarks/memn2n_babi.py --merge a b --note "..."     # ... merged into memn2n_babi.{json,md}
    .venv/bin/python benchmarks/memn2n_babi.py --quick                        # smoke run (2 + 2 epochs, 1 seed)
    .venv/bin/python benchmarks/memn2n_babi.py --tasks 16 --seeds 0 1 2 --pe paper --tag task16_paper  # one task

The paper's text instead of the authors' code: ``--pe paper --ls-patience 3`` (the recipe of the earlier result,
``results/memn2n_babi_paper_recipe.md``). ``--rn-blanks uniform`` draws 0..ceil(0.1 n) RN blanks per story, as the
authors' code does.

Data: ``--data`` (default ``$CLMEM_DATA/babi`` or ``../shared/data/babi`` beside the checkout), holding ``en/``.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
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
sys.path.insert(0, str(REPO / "benchmarks"))
import _harness as H  # noqa: E402

from clmem.learners.memn2n import NOISE_BLANKS, MemN2N, MemN2NConfig  # noqa: E402
from clmem.tasks.babi import Vocabulary, encode_memnet, load_babi  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
ALL_TASKS = list(range(1, 21))
TASKS = ALL_TASKS  # --tasks narrows it (a probe of single tasks); the paper's setting is all 20
PAPER = {"mean_error": 12.4, "failed": 11}


PE_TEXT = {"paper": "J = sentence length",
           "reference": "authors' code: 1 + 4(k-(d+1)/2)(j-(J+1)/2)/(dJ), J = longest sentence or question"}


RN_TEXT = {"ceil": "ceil({} n) blanks per story", "uniform": "0..ceil({} n) blanks per story, as the authors' code"}


def default_data() -> Path:
    if os.environ.get("CLMEM_DATA"):
        return Path(os.environ["CLMEM_DATA"]) / "babi"
    return REPO.parent / "shared" / "data" / "babi"


@functools.lru_cache(maxsize=2)
def encoded(root: Path, max_memory: int):
    """Load and encode every question once: ``vocab, (train stories, queries, answers, tasks), (test ...)``."""
    train, test = load_babi(TASKS, "train", root), load_babi(TASKS, "test", root)
    every = [q for t in TASKS for q in train[t] + test[t]]
    vocab = Vocabulary.build(every)
    width = max(len(s) for q in every for s in q.context[-max_memory:])
    qlen = max(len(q.question) for q in every)

    def enc(qs):
        d = encode_memnet(qs, vocab, max_memory=max_memory, max_sentence_len=width, max_query_len=qlen)
        return d.stories, d.queries, d.answers, torch.tensor([q.task for q in qs])

    return vocab, enc([q for t in TASKS for q in train[t]]), enc([q for t in TASKS for q in test[t]])


def prepare(root: Path, seed: int, max_memory: int):
    """``vocab, train, val, test``: 10% of each task's training questions (chosen by ``seed``) are validation."""
    vocab, train, test = encoded(root, max_memory)
    rng = np.random.default_rng(seed)
    tasks = train[3].numpy()
    tr, va = [], []
    for t in TASKS:
        rows = np.flatnonzero(tasks == t)[rng.permutation(int((tasks == t).sum()))]
        va.append(rows[: len(rows) // 10])
        tr.append(rows[len(rows) // 10:])
    pick = lambda rows: tuple(x[torch.from_numpy(np.concatenate(rows))] for x in train)  # noqa: E731
    return vocab, pick(tr), pick(va), test


def trim(stories: torch.Tensor) -> torch.Tensor:
    """Drop the trailing memory slots that are empty for the whole batch (slot 0 is the most recent sentence);
    the model counts dropped slots when empty slots are inside the softmax, so the result is unchanged."""
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


def train_epoch(model: MemN2N, opt, train, lr: float, args, gen: torch.Generator) -> float:
    """One pass over ``train`` in random batches (loss summed over the batch, gradient norm clipped);
    returns the mean loss per question."""
    for group in opt.param_groups:
        group["lr"] = lr
    stories, queries, answers, _ = train
    order, total = torch.randperm(len(answers), generator=gen), 0.0
    for i in range(0, len(answers), args.batch):
        idx = order[i:i + args.batch]
        loss = F.cross_entropy(model(trim(stories[idx]), queries[idx]), answers[idx], reduction="sum")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        total += loss.item()
    return total / len(answers)


def log_epoch(seed: int, model: MemN2N, opt, train, val, lr: float, args, gen, history: list) -> Dict[str, float]:
    """Train one epoch, evaluate on validation, append to ``history`` and print a line."""
    t0 = time.perf_counter()
    train_loss = train_epoch(model, opt, train, lr, args, gen)
    seconds = time.perf_counter() - t0
    v = evaluate(model, val)
    row = {"epoch": len(history) + 1, "lr": lr, "phase": "LS" if model.linear_start else "softmax",
           "train_loss": train_loss, "val_loss": v["loss"], "val_error": v["error"], "train_seconds": seconds}
    history.append(row)
    print(f"[seed {seed}] epoch {row['epoch']} {row['phase']} lr {lr:.5f} train loss {train_loss:.3f} "
          f"val loss {v['loss']:.3f} val error {v['error']:.2f}% ({seconds:.1f}s)", flush=True)
    return row


def linear_start(seed: int, model: MemN2N, opt, train, val, args, gen, history: list) -> int:
    """LS phase: lr ``ls_lr`` for ``ls_max_epochs`` epochs, or (``ls_patience`` set) until the validation loss has
    had no new minimum for ``ls_patience`` epochs; then the softmaxes go back in. Returns the number of LS epochs."""
    best, since = math.inf, 0
    for epoch in range(args.ls_max_epochs):
        row = log_epoch(seed, model, opt, train, val, args.ls_lr, args, gen, history)
        best, since = (row["val_loss"], 0) if row["val_loss"] < best else (best, since + 1)
        if args.ls_patience is not None and since >= args.ls_patience:
            break
    model.end_linear_start()
    print(f"[seed {seed}] linear start ended after {epoch + 1} epochs", flush=True)
    return epoch + 1


def run_seed(seed: int, args) -> Dict[str, object]:
    torch.manual_seed(seed)
    t_start = time.perf_counter()
    vocab, train, val, test = prepare(args.data, seed, args.max_memory)
    cfg = MemN2NConfig(vocab_size=len(vocab), embedding_dim=args.dim, hops=args.hops, max_memory=args.max_memory,
                       position_encoding=True, temporal_encoding=True, linear_start=args.ls_max_epochs > 0,
                       random_noise=args.random_noise, init_std=args.init_std, mask_empty=args.mask_empty,
                       random_noise_blanks=args.rn_blanks,
                       position_words=max(train[0].shape[2], train[1].shape[1]) if args.pe == "reference" else 0)
    model = MemN2N(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(seed)
    history: List[Dict[str, float]] = []
    print(f"[seed {seed}] vocab {len(vocab)}, train {len(train[2])}, val {len(val[2])}, test {len(test[2])}, "
          f"memory slots {train[0].shape[1]} x {train[0].shape[2]} words", flush=True)
    ls_epochs = linear_start(seed, model, opt, train, val, args, gen, history) if args.ls_max_epochs > 0 else 0
    for epoch in range(args.epochs):
        log_epoch(seed, model, opt, train, val, args.lr * 0.5 ** (epoch // args.decay_every), args, gen, history)
    final = {name: evaluate(model, data) for name, data in (("train", train), ("val", val), ("test", test))}
    wall = time.perf_counter() - t_start
    per_task = final["test"]["per_task"]
    failed = [t for t, e in per_task.items() if e > 5.0]
    print(f"[seed {seed}] test mean error {statistics.mean(per_task.values()):.2f}%, failed {len(failed)}, "
          f"val error {final['val']['error']:.2f}%, wall {wall:.0f}s", flush=True)
    return {"seed": seed, "epochs": args.epochs, "linear_start_epochs": ls_epochs,
            "val_error": final["val"]["error"], "val_loss": final["val"]["loss"],
            "train_error": final["train"]["error"], "test_error_per_task": per_task,
            "test_mean_error": statistics.mean(per_task.values()), "failed_tasks": len(failed),
            "failed_task_ids": failed, "seconds_per_epoch": statistics.mean(h["train_seconds"] for h in history),
            "wall_seconds": wall, "history": history}


def summarise(runs: List[Dict[str, object]], config: Dict[str, object]) -> Dict[str, object]:
    def stat(values):
        values = list(values)
        return {"mean": statistics.mean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}

    def brief(run):
        keys = ("seed", "test_mean_error", "failed_tasks", "val_error", "train_error", "wall_seconds")
        return {k: run[k] for k in keys}

    best = min(runs, key=lambda r: r["val_error"])
    summary = {
        "seeds": [r["seed"] for r in runs],
        "test_mean_error": stat(r["test_mean_error"] for r in runs),
        "failed_tasks": stat(r["failed_tasks"] for r in runs),
        "wall_seconds": stat(r["wall_seconds"] for r in runs),
        "seconds_per_epoch": stat(r["seconds_per_epoch"] for r in runs),
        "per_task": {t: stat(r["test_error_per_task"][t] for r in runs) for t in TASKS},
        "best_seed": best["seed"], "best": brief(best),
        "best_by_train_error": brief(min(runs, key=lambda r: r["train_error"])),
        "best_by_test_error_not_a_selection": brief(min(runs, key=lambda r: r["test_mean_error"])),
    }
    summary["targets"] = None if TASKS != ALL_TASKS else {
        "best_mean_error_le_12.4": best["test_mean_error"] <= PAPER["mean_error"],
        "best_failed_le_11": best["failed_tasks"] <= PAPER["failed"],
        "paper_schedule_60_epochs": {r["epochs"] for r in runs} == {60},
        "ten_repeats": len(runs) >= 10,
    }
    return summary


def _row(label: str, runs, cell, total: str = "") -> str:
    return f"| {label} | " + " | ".join(cell(r) for r in runs) + f" | {total} |"


def ls_text(c: Dict[str, object]) -> str:
    """How the LS phase of config ``c`` ends, in words."""
    if c["ls_max_epochs"] <= 0:
        return "No LS"
    if c["ls_patience"] is None or c["ls_patience"] >= c["ls_max_epochs"]:
        return f"LS: lr {c['ls_lr']} for {c['ls_max_epochs']} epochs (no early end, as the authors' code)"
    return (f"LS: lr {c['ls_lr']} until the validation loss has no new minimum for {c['ls_patience']} epochs "
            f"(at most {c['ls_max_epochs']})")


def markdown(payload: Dict[str, object]) -> str:
    runs, s, c = payload["runs"], payload["summary"], payload["config"]
    joint = TASKS == ALL_TASKS
    title = "joint training over 20 tasks" if joint else (
        f"task(s) {', '.join(map(str, TASKS))} only (a probe, not the paper's joint setting)")
    lines = [f"# MemN2N on bAbI en (1k), {title}", "",
             f"d={c['dim']}, {c['hops']} hops, PE ({PE_TEXT[c.get('pe', 'paper')]}) + LS + RN({c['random_noise']}, "
             f"{RN_TEXT[c.get('rn_blanks', 'ceil')].format(c['random_noise'])}), temporal "
             f"encoding, adjacent tying, memory {c['max_memory']} "
             f"({'empty slots masked' if c['mask_empty'] else 'null-padded, empty slots inside the softmax'}), "
             f"init N(0, {c['init_std']}). {ls_text(c)}; then {c['epochs']} epochs with lr {c['lr']} "
             f"halved every {c['decay_every']} epochs. SGD, loss summed over batch {c['batch']}, clip {c['clip']}. "
             f"Host: {payload['environment']['host']}, torch threads 1. Test error (%) per task; failed = error "
             "> 5%; best seed picked by validation error.", ""]
    lines += ["| task | " + " | ".join(f"seed {r['seed']}" for r in runs) + " | mean ± sd |",
              "|" + "---|" * (len(runs) + 2)]
    for t in TASKS:
        p = s["per_task"][t]
        lines.append(_row(str(t), runs, lambda r: f"{r['test_error_per_task'][t]:.1f}", f"{p['mean']:.1f} ± {p['sd']:.1f}"))
    m, f = s["test_mean_error"], s["failed_tasks"]
    lines += [_row("**mean error**", runs, lambda r: f"**{r['test_mean_error']:.2f}**", f"**{m['mean']:.2f} ± {m['sd']:.2f}**"),
              _row("failed (> 5%)", runs, lambda r: str(r["failed_tasks"]), f"{f['mean']:.1f} ± {f['sd']:.1f}"),
              _row("validation error", runs, lambda r: f"{r['val_error']:.2f}"),
              _row("training error", runs, lambda r: f"{r['train_error']:.2f}"),
              _row("LS epochs", runs, lambda r: str(r["linear_start_epochs"])),
              _row("softmax epochs", runs, lambda r: str(r["epochs"])),
              _row("s / epoch (train)", runs, lambda r: f"{r['seconds_per_epoch']:.1f}",
                   f"{s['seconds_per_epoch']['mean']:.1f} ± {s['seconds_per_epoch']['sd']:.1f}"),
              _row("wall time (min)", runs, lambda r: f"{r['wall_seconds'] / 60:.1f}",
                   f"{s['wall_seconds']['mean'] / 60:.1f} ± {s['wall_seconds']['sd'] / 60:.1f}")]
    b, bt = s["best"], s["best_by_train_error"]
    lines += ["", f"**Picked by validation error: seed {s['best_seed']}: mean test error {b['test_mean_error']:.2f}%, "
              f"{b['failed_tasks']} failed tasks**" + (f" (paper: {PAPER['mean_error']}%, {PAPER['failed']} failed, best "
              f"of 10 runs)" if joint else "") + f". Picked by training error (the paper's wording): seed {bt['seed']}: {bt['test_mean_error']:.2f}%, "
              f"{bt['failed_tasks']} failed. Repeats: {len(runs)}.", ""]
    tg = s["targets"]
    if not joint:
        lines.append("The paper's targets apply to joint training over the 20 tasks only.")
    else:
        lines.append(f"Targets (seed picked by validation): mean error ≤ 12.4%: "
                     f"{'met' if tg['best_mean_error_le_12.4'] else 'NOT met'}; ≤ 11 failed tasks: "
                     f"{'met' if tg['best_failed_le_11'] else 'NOT met'}"
                     + ("" if tg["paper_schedule_60_epochs"] else "; NOTE: not the paper's 60-epoch schedule")
                     + ("" if tg["ten_repeats"] else f"; {len(runs)} repeats, not the paper's 10") + ".")
    if payload.get("note"):
        lines += ["", payload["note"]]
    return "\n".join(lines) + "\n"


def write(name: str, payload: Dict[str, object]) -> None:
    H.write_results(name, payload, markdown(payload))


def merge(tags: List[str], note: str, into: str = "memn2n_babi") -> None:
    global TASKS
    parts = [json.loads((RESULTS / f"memn2n_babi_{tag}.json").read_text()) for tag in tags]
    TASKS = sorted(set(parts[0]["config"].get("tasks", ALL_TASKS)))
    runs = sorted((r for part in parts for r in part["runs"]), key=lambda r: r["seed"])
    for r in runs:
        r["test_error_per_task"] = {int(k): v for k, v in r["test_error_per_task"].items()}
    payload = {"config": parts[0]["config"], "runs": runs, "summary": summarise(runs, parts[0]["config"]),
               "environment": H.environment(), "merged_from": tags, "note": note}
    write(into, payload)


def load_learner(ref: str):
    """The ``MemN2N`` class of ``clmem/learners/memn2n.py`` at git revision ``ref`` (for speed comparisons)."""
    import importlib.util
    import subprocess
    import tempfile
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{ref}:clmem/learners/memn2n.py"], check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / f"memn2n_{ref}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.MemN2N


def time_training(model_class, options: Dict[str, object], train, args, batches: int) -> Dict[str, float]:
    """Wall and CPU seconds per training batch (forward, backward, clip, SGD step) over ``batches`` batches."""
    torch.manual_seed(0)
    model = model_class(**options)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    stories, queries, answers, _ = train
    order = torch.randperm(len(answers), generator=torch.Generator().manual_seed(0))
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(batches):
        idx = order[i * args.batch:(i + 1) * args.batch]
        loss = F.cross_entropy(model(trim(stories[idx]), queries[idx]), answers[idx], reduction="sum")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
    return {"wall_per_batch": (time.perf_counter() - wall) / batches, "cpu_per_batch": (time.process_time() - cpu) / batches}


def speed(args) -> None:
    """Time training batches of this learner and of the one at ``--compare-ref``, interleaved; write
    ``memn2n_babi_speed.{json,md}``."""
    vocab, train, _, _ = prepare(args.data, 0, args.max_memory)
    base = {"vocab_size": len(vocab), "embedding_dim": args.dim, "hops": args.hops, "max_memory": args.max_memory}
    peers = {"current": (MemN2N, {**base, "mask_empty": args.mask_empty}), args.compare_ref: (load_learner(args.compare_ref), base)}
    rounds = {name: [] for name in peers}
    for _ in range(3):
        for name, (cls, options) in peers.items():
            rounds[name].append(time_training(cls, options, train, args, args.time_batches))
    best = {name: {k: min(r[k] for r in rs) for k in rs[0]} for name, rs in rounds.items()}
    per_epoch = math.ceil(len(train[2]) / args.batch)
    ratio = best[args.compare_ref]["cpu_per_batch"] / best["current"]["cpu_per_batch"]
    payload = {"batches_timed": args.time_batches, "batches_per_epoch": per_epoch, "rounds": rounds, "best": best,
               "cpu_speedup": ratio, "environment": H.environment()}
    (RESULTS / "memn2n_babi_speed.json").write_text(json.dumps(payload, indent=1) + "\n")
    lines = ["# MemN2N training speed: current learner vs " + args.compare_ref, "",
             f"d={args.dim}, {args.hops} hops, batch {args.batch}, real bAbI en joint training set, {args.time_batches} "
             f"batches per round, 3 interleaved rounds, best round; torch threads 1; load average at the end "
             f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared machine: wall times are inflated).", "",
             "| learner | CPU ms / batch | wall ms / batch | CPU s / epoch (est.) |", "|---|---|---|---|"]
    for name, b in best.items():
        lines.append(f"| {name} | {1000 * b['cpu_per_batch']:.1f} | {1000 * b['wall_per_batch']:.1f} | "
                     f"{b['cpu_per_batch'] * per_epoch:.1f} |")
    lines += ["", f"CPU-time speed-up of the current learner: {ratio:.1f}x."]
    (RESULTS / "memn2n_babi_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--tasks", type=int, nargs="+", default=ALL_TASKS, choices=ALL_TASKS, metavar="TASK",
                   help="train and test on these tasks only (default: all 20, the paper's joint setting)")
    p.add_argument("--epochs", type=int, default=60, help="epochs after linear start")
    p.add_argument("--decay-every", type=int, default=15, help="halve lr every N epochs")
    p.add_argument("--ls-max-epochs", type=int, default=30, help="longest LS phase (0 = no LS)")
    p.add_argument("--ls-patience", type=int, default=None,
                   help="end LS after N epochs without a new val-loss minimum (default: run all --ls-max-epochs)")
    p.add_argument("--ls-lr", type=float, default=0.005)
    p.add_argument("--dim", type=int, default=50)
    p.add_argument("--hops", type=int, default=3)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--clip", type=float, default=40.0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--max-memory", type=int, default=50)
    p.add_argument("--random-noise", type=float, default=0.1)
    p.add_argument("--rn-blanks", choices=NOISE_BLANKS, default="ceil",
                   help="RN blanks per story: ceil(0.1 n) (paper text) or uniform 0..ceil(0.1 n) (authors' code)")
    p.add_argument("--init-std", type=float, default=0.1)
    p.add_argument("--pe", choices=sorted(PE_TEXT), default="reference",
                   help="position encoding: the paper's (J = each sentence's length) or the authors' code's")
    p.add_argument("--mask-empty", action="store_true", help="leave empty memory slots out of the softmax")
    p.add_argument("--data", type=Path, default=default_data())
    p.add_argument("--quick", action="store_true", help="smoke run: 2 LS + 2 epochs, first seed only")
    p.add_argument("--tag", default=None, help="write results/memn2n_babi_<tag>.{json,md} (for parallel seeds)")
    p.add_argument("--merge", nargs="+", default=None, help="merge the JSON of these tags into --merge-into")
    p.add_argument("--merge-into", default="memn2n_babi", help="results name that --merge writes")
    p.add_argument("--note", default="", help="a sentence added under the table")
    p.add_argument("--time-batches", type=int, default=0, help="only time N training batches (see --compare-ref)")
    p.add_argument("--compare-ref", default="cc08e2f", help="git revision of the learner to time against")
    return p.parse_args()


def main() -> None:
    global TASKS
    args = parse_args()
    TASKS = sorted(set(args.tasks))
    torch.set_num_threads(1)
    if args.merge:
        merge(args.merge, args.note, args.merge_into)
        return
    if args.time_batches:
        speed(args)
        return
    if args.quick:
        args.epochs, args.ls_max_epochs, args.seeds = 2, min(args.ls_max_epochs, 2), args.seeds[:1]
    if not (args.data / "en").is_dir():
        sys.exit(f"bAbI data not found: expected {args.data}/en (pass --data or set CLMEM_DATA)")
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "merge"}
    runs = []
    name = "memn2n_babi" + (f"_{args.tag}" if args.tag else "") + ("_quick" if args.quick else "")
    for seed in args.seeds:
        runs.append(run_seed(seed, args))
        write(name, {"config": config, "runs": runs, "summary": summarise(runs, config),
                     "environment": H.environment(), "note": args.note})


if __name__ == "__main__":
    main()
