"""DMN+, the key-value memory network, the story transformer and MemN2N on real bAbI, trained jointly on the same
tasks and the same data in one run (issue 18, item 4).

Every learner is built through the model registry (:data:`clmem.models.MODELS`) on the bAbI memory-network layout
of the ``babi_joint`` stream (:func:`clmem.tasks.streams.babi_experiences`: ``x [M + 1, S]`` word ids, the ``M``
most recent sentences then the question; one vocabulary over every task and split). 10% of each task's training
stories (chosen by the seed; ``--split questions``: questions, as the runs before issue 19's sentence_dnc ones) are
held out for validation. Each learner trains with its own recipe (``RECIPES``:
MemN2N with the paper's SGD + linear start schedule of ``benchmarks/memn2n_babi.py``, the others with Adam) for
at most its epochs or its wall budget (``minutes`` in its recipe, or ``--minutes``), whichever ends first, in
length-bucketed random batches (``--bucket``); the test error is that of the epoch with the lowest validation
error (MemN2N: among its softmax epochs). Results are written after each learner to
``benchmarks/results/qa_learners_babi[_<tag>].{json,md}``.

    nice -n 15 .venv/bin/python benchmarks/qa_learners_babi.py                  # en 1k, tasks 1 2 6 7 15
    nice -n 15 .venv/bin/python benchmarks/qa_learners_babi.py --models dmn_plus --layout en-10k --tasks 1 \\
        --tag dmn_en10k_task1
    .venv/bin/python benchmarks/qa_learners_babi.py --quick                     # smoke run: 1 epoch each

Data: ``--data`` (default ``$CLMEM_DATA/babi`` or ``../shared/data/babi`` beside the checkout).
"""
from __future__ import annotations

import argparse
import copy
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
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
import _harness as H  # noqa: E402

from clmem.models import MODELS, build_model  # noqa: E402
from clmem.options import ConfigError  # noqa: E402
from clmem.tasks.babi import load_babi, load_babi_task, questions_of  # noqa: E402
from clmem.tasks.streams import babi_experiences  # noqa: E402

TASKS = [1, 2, 6, 7, 15]
#: Per learner: registry options, optimiser and schedule. ``epochs`` is an upper bound (the wall budget
#: ``minutes``, or ``--minutes``, may end training earlier); MemN2N's is the linear-start phase (``ls_epochs``
#: at ``ls_lr``) plus ``epochs`` softmax epochs with ``lr`` halved every ``decay_every``, SGD with the loss
#: summed over the batch, as memn2n_babi.py.
RECIPES: Dict[str, Dict[str, object]] = {
    "dmn_plus": {"options": {"embedding_dim": 80, "passes": 3, "dropout": 0.1}, "optimizer": "adam",
                 "lr": 0.003, "epochs": 60, "batch": 64, "clip": 10.0, "loss": "mean", "minutes": 15},
    "kv_memnn": {"options": {"embedding_dim": 50, "hops": 3, "dropout": 0.0}, "optimizer": "adam",
                 "lr": 0.005, "epochs": 80, "batch": 32, "clip": 10.0, "loss": "mean", "minutes": 5},
    "story_transformer": {"options": {"embedding_dim": 64, "num_layers": 2, "num_heads": 4, "ff_size": 128,
                                      "dropout": 0.1}, "optimizer": "adam", "lr": 0.001, "epochs": 80,
                          "batch": 64, "clip": 5.0, "loss": "mean", "minutes": 9},
    "memn2n": {"options": {"embedding_dim": 50, "hops": 3, "position_formula": "reference", "linear_start": True,
                           "random_noise": 0.1}, "optimizer": "sgd", "lr": 0.01, "ls_epochs": 30, "ls_lr": 0.005,
               "epochs": 60, "decay_every": 15, "batch": 32, "clip": 40.0, "loss": "sum", "minutes": 7},
    # the DNC reading one position-encoded sentence per step (issue 19: the word-stream DNC did not leave chance
    # in the CPU budget); layer-normalised controller, the improvement measured to help on bAbI
    "sentence_dnc": {"options": {"embedding_dim": 50, "hidden_size": 128, "memory_size": 32, "word_size": 32,
                                 "num_reads": 4, "layer_norm": True}, "optimizer": "adam", "lr": 0.003,
                     "epochs": 40, "batch": 32, "clip": 10.0, "loss": "mean", "minutes": 60},
}


def default_data() -> Path:
    if os.environ.get("CLMEM_DATA"):
        return Path(os.environ["CLMEM_DATA"]) / "babi"
    return REPO.parent / "shared" / "data" / "babi"


def prepare(args) -> Dict[str, object]:
    """``{"train", "val", "test": (x [N, M + 1, S], y [N], task [N]), "shape", "vocab"}``: 10% of each task's
    training stories (``--split questions``: questions), chosen by ``args.seed``, are validation; one vocabulary
    and layout over all splits."""
    test = load_babi(args.tasks, "test", args.data, args.layout)
    rng = np.random.default_rng(args.seed)
    fit, val = {}, {}
    for task in args.tasks:
        fit[task], val[task] = validation_split(load_babi_task(task, "train", args.data, args.layout), args.split, rng)
    data, shape, vocab = babi_experiences([list(args.tasks)], {"train": fit, "val": val, "test": test}, "memnet",
                                          args.max_memory)
    out = {split: (d[0].x, d[0].y, d[0].info[:, 0]) for split, d in data.items()}
    return {**out, "shape": shape, "vocab": vocab}


def validation_split(stories, split: str, rng: np.random.Generator) -> tuple:
    """``(training questions, validation questions)`` of one task's stories: 10% of the stories (``split ==
    "stories"``: a held-out story shares no sentence with training) or of the questions (``"questions"``: a
    held-out question shares its story's earlier sentences with the training questions of that story)."""
    units = [s.questions for s in stories] if split == "stories" else [[q] for q in questions_of(stories)]
    order = rng.permutation(len(units))
    cut = len(units) // 10
    return [q for i in order[cut:] for q in units[i]], [q for i in order[:cut] for q in units[i]]


def trim(x: torch.Tensor) -> torch.Tensor:
    """Drop the memory rows empty for the whole batch past the last used one (the question row stays); every
    learner here gives the same output without them."""
    used = x[:, :-1].ne(0).any(dim=-1).any(dim=0).nonzero()
    keep = int(used.max()) + 1 if len(used) else 1
    return torch.cat([x[:, :keep], x[:, -1:]], dim=1)


@torch.no_grad()
def evaluate(model, split, tasks: List[int], batch: int = 500) -> Dict[str, object]:
    """Loss, error (%) and per-task error (%) of ``model`` on ``split = (x, y, task)``."""
    model.eval()
    x, y, task = split
    loss, wrong = 0.0, torch.zeros(len(y), dtype=torch.bool)
    for i in range(0, len(y), batch):
        logits = model(trim(x[i:i + batch]))
        loss += float(F.cross_entropy(logits, y[i:i + batch], reduction="sum"))
        wrong[i:i + batch] = logits.argmax(-1).ne(y[i:i + batch])
    model.train()
    per_task = {t: 100.0 * float(wrong[task == t].float().mean()) for t in tasks}
    return {"loss": loss / len(y), "error": 100.0 * float(wrong.float().mean()), "per_task": per_task}


def schedule(recipe: Dict[str, object], epoch: int) -> tuple:
    """``(lr, linear_start)`` of 0-based ``epoch``."""
    ls = int(recipe.get("ls_epochs", 0))
    if epoch < ls:
        return float(recipe["ls_lr"]), True
    decay = recipe.get("decay_every")
    return float(recipe["lr"]) * (0.5 ** ((epoch - ls) // int(decay)) if decay else 1.0), False


def batches(lengths: torch.Tensor, batch: int, bucket: int, gen: torch.Generator) -> List[torch.Tensor]:
    """Index batches of one epoch, ``lengths [N]`` the stories' sentence counts: a random permutation cut into
    chunks of ``bucket`` batches, each chunk sorted by story length and cut into batches, the batches shuffled
    (``bucket <= 1``: plain random batches). Bucketing keeps a batch's longest story near its typical one:
    the recurrent learners' cost grows with the longest story of the batch."""
    order = torch.randperm(len(lengths), generator=gen)
    if bucket > 1:
        order = torch.cat([c[lengths[c].argsort(stable=True)] for c in order.split(batch * bucket)])
    groups = order.split(batch)
    return [groups[i] for i in torch.randperm(len(groups), generator=gen).tolist()]


def train_epoch(model, opt, train, recipe, lr: float, bucket: int, gen: torch.Generator) -> float:
    """One pass in random (length-bucketed) batches, gradient norm clipped; returns the mean training loss per
    question."""
    for group in opt.param_groups:
        group["lr"] = lr
    x, y, _ = train
    total, reduction = 0.0, str(recipe["loss"])
    for idx in batches(x[:, :-1].ne(0).any(dim=-1).sum(dim=1), int(recipe["batch"]), bucket, gen):
        loss = F.cross_entropy(model(trim(x[idx])), y[idx], reduction=reduction)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), float(recipe["clip"]))
        opt.step()
        total += loss.item() * (1 if reduction == "sum" else len(idx))
    if not math.isfinite(total):
        raise FloatingPointError(f"training loss is not finite ({total})")
    return total / len(y)


def make_optimizer(model, recipe):
    if recipe["optimizer"] == "sgd":
        return torch.optim.SGD(model.parameters(), lr=float(recipe["lr"]))
    return torch.optim.Adam(model.parameters(), lr=float(recipe["lr"]))


def run_learner(name: str, data, args) -> Dict[str, object]:
    """Train ``name`` with its recipe within its wall budget; returns its record (test error of the epoch with
    the lowest validation error)."""
    recipe = {**RECIPES[name], "options": {**RECIPES[name]["options"], **dict(args.set)}}
    if getattr(args, "lr", None) is not None:
        recipe["lr"] = args.lr
    torch.manual_seed(args.seed)
    model = build_model(name, data["shape"], data["vocab"], **recipe["options"])
    opt, gen = make_optimizer(model, recipe), torch.Generator().manual_seed(args.seed)
    epochs = int(recipe["epochs"]) if getattr(args, "epochs", None) is None else args.epochs
    max_epochs = 1 if args.quick else int(recipe.get("ls_epochs", 0)) + epochs
    budget = float(args.minutes if args.minutes is not None else recipe["minutes"])
    best, history, t0 = None, [], time.perf_counter()
    for epoch in range(max_epochs):
        lr, linear = schedule(recipe, epoch)
        if not linear and getattr(getattr(model, "memn2n", None), "linear_start", False):
            model.memn2n.end_linear_start()
        started = time.perf_counter()
        train_loss = train_epoch(model, opt, data["train"], recipe, lr, args.bucket, gen)
        seconds = time.perf_counter() - started
        v = evaluate(model, data["val"], args.tasks)
        history.append({"epoch": epoch + 1, "lr": lr, "linear_start": linear, "train_loss": train_loss,
                        "val_loss": v["loss"], "val_error": v["error"], "train_seconds": seconds})
        print(f"[{name}] epoch {epoch + 1} lr {lr:.4g}{' LS' if linear else ''} train loss {train_loss:.3f} "
              f"val error {v['error']:.2f}% ({seconds:.1f}s)", flush=True)
        if not linear and (best is None or v["error"] < best[0]):
            best = (v["error"], epoch + 1, copy.deepcopy(model.state_dict()))
        if time.perf_counter() - t0 > 60 * budget:
            break
    if best is None:  # still in linear start when the budget ran out: use the last epoch
        best = (history[-1]["val_error"], len(history), model.state_dict())
    model.load_state_dict(best[2])
    test = evaluate(model, data["test"], args.tasks)
    per_task = test["per_task"]
    return {"learner": name, "seed": args.seed, "recipe": recipe, "parameters": sum(p.numel() for p in model.parameters()),
            "epochs_run": len(history), "epochs_planned": max_epochs, "best_epoch": best[1],
            "stopped_by_budget": len(history) < max_epochs, "val_error": best[0],
            "test_error_per_task": per_task, "test_mean_error": statistics.mean(per_task.values()),
            "failed_tasks": [t for t, e in per_task.items() if e > 5.0],
            "seconds_per_epoch": statistics.mean(h["train_seconds"] for h in history),
            "wall_seconds": time.perf_counter() - t0, "history": history}


def bucket_text(bucket: int) -> str:
    if bucket <= 1:
        return "plain random batches"
    return (f"random batches bucketed by story length (random chunks of {bucket} batches, sorted by length "
            "within the chunk, batches shuffled)")


def _options(options: Dict[str, object]) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items())


def option_override(text: str) -> tuple:
    """``OPTION=VALUE`` of ``--set``: the value parsed as YAML (``false``, ``0.1``, ``32``)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"--set: expected OPTION=VALUE, got {text!r}")
    return key.strip(), yaml.safe_load(value)


def seed_summary(runs: List[Dict[str, object]]) -> List[str]:
    """Per learner over its seeds: mean (and sd) of the mean test error, and the best seed's failed tasks."""
    lines = []
    for learner in dict.fromkeys(r["learner"] for r in runs):
        mine = [r for r in runs if r["learner"] == learner]
        if len(mine) < 2:
            continue
        means = [r["test_mean_error"] for r in mine]
        best = min(mine, key=lambda r: r["test_mean_error"])
        lines.append(f"- {learner} over {len(mine)} seeds: mean error {statistics.mean(means):.2f} ± "
                     f"{statistics.stdev(means):.2f}%; best seed {best['seed']}: {best['test_mean_error']:.2f}%, "
                     f"{len(best['failed_tasks'])} failed; seeds with every task ≤ 5%: "
                     f"{sum(not r['failed_tasks'] for r in mine)}/{len(mine)}.")
    return ["", *lines] if lines else []


def markdown(payload: Dict[str, object]) -> str:
    c, runs = payload["config"], payload["runs"]
    tasks = c["tasks"]
    budgets = c["minutes"] if c["minutes"] is not None else ", ".join(dict.fromkeys(
        f"{r['learner']} {r['recipe']['minutes']}" for r in runs))
    learners = list(dict.fromkeys(r["learner"] for r in runs))
    lines = [f"# bAbI {c['layout']}: {', '.join(learners)}, joint training on tasks "
             f"{', '.join(map(str, tasks))}", "",
             f"Same data for every learner: {payload['data']['train']} training / {payload['data']['val']} "
             f"validation (10% of each task's training {c.get('split', 'questions')}, chosen by the run's seed) / "
             f"{payload['data']['test']} "
             f"test questions, memnet layout of the babi_joint stream with the {c['max_memory']} most recent "
             f"sentences ({payload['data']['shape']}), vocabulary {payload['data']['vocab']}; "
             f"{bucket_text(c['bucket'])}. Test error (%) at the "
             f"epoch with the lowest validation error; failed = error > 5%. Wall budget per "
             f"learner: {budgets} min, at nice -n 15 on a shared 2-core machine (torch threads {c['threads']}). "
             f"Host: {payload['environment']['host']}.", "",
             "| task | " + " | ".join(f"{r['learner']} (seed {r.get('seed', 0)})" for r in runs) + " |",
             "|---|" + "---|" * len(runs)]
    for t in tasks:
        lines.append(f"| {t} | " + " | ".join(f"{r['test_error_per_task'][t]:.1f}" for r in runs) + " |")
    rows = [("**mean error**", lambda r: f"**{r['test_mean_error']:.2f}**"),
            ("failed (> 5%)", lambda r: str(len(r["failed_tasks"]))),
            ("validation error", lambda r: f"{r['val_error']:.2f}"),
            ("epochs run / planned", lambda r: f"{r['epochs_run']} / {r['epochs_planned']}"),
            ("best epoch (by validation)", lambda r: str(r["best_epoch"])),
            ("s / epoch (train)", lambda r: f"{r['seconds_per_epoch']:.1f}"),
            ("wall (min)", lambda r: f"{r['wall_seconds'] / 60:.1f}"),
            ("parameters", lambda r: f"{r['parameters']:,}")]
    lines += [f"| {label} | " + " | ".join(cell(r) for r in runs) + " |" for label, cell in rows]
    lines += ["", "Recipes:"]
    for r in {r["learner"]: r for r in runs}.values():
        rc = r["recipe"]
        schedule_text = (f"SGD, loss summed over batch {rc['batch']}, linear start {rc['ls_epochs']} epochs at lr "
                         f"{rc['ls_lr']}, then lr {rc['lr']} halved every {rc['decay_every']} epochs"
                         if rc["optimizer"] == "sgd" else f"Adam lr {rc['lr']}, mean loss over batch {rc['batch']}")
        lines.append(f"- {r['learner']}: {_options(rc['options'])}; {schedule_text}; gradient-norm clip "
                     f"{rc['clip']}" + ("; stopped by the wall budget" if r["stopped_by_budget"] else "") + ".")
    lines += seed_summary(runs)
    if c.get("note"):
        lines += ["", c["note"]]
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--tasks", type=int, nargs="+", default=TASKS, choices=range(1, 21), metavar="TASK")
    p.add_argument("--layout", choices=("en", "en-10k"), default="en")
    p.add_argument("--max-memory", type=int, default=30, help="most recent story sentences kept (30 holds every "
                                                              "supporting fact of tasks 1 2 6 7 15 in en 1k)")
    p.add_argument("--minutes", type=float, default=None, help="wall budget per learner, overriding the recipes' "
                                                               "(training stops after the epoch that passes it)")
    p.add_argument("--bucket", type=int, default=20, help="batches per length-sorted chunk (1: plain random "
                                                          "batches)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per learner, overriding the recipes' (MemN2N: "
                                                            "its softmax epochs)")
    p.add_argument("--seeds", "--seed", type=int, nargs="+", default=[0], dest="seeds",
                   help="one run per learner and seed (the seed also picks the validation stories)")
    p.add_argument("--lr", type=float, default=None, help="learning rate, overriding the recipes' (MemN2N: its "
                                                          "softmax-phase rate)")
    p.add_argument("--split", choices=("stories", "questions"), default="stories",
                   help="validation: 10%% of each task's training stories (default) or of its questions (runs "
                        "before issue 19's sentence_dnc ones: a held-out question shares its story's earlier "
                        "sentences with training questions)")
    p.add_argument("--set", action="append", default=[], type=option_override, metavar="OPTION=VALUE",
                   help="override a registry option of every learner run (YAML value), e.g. layer_norm=false")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data", type=Path, default=default_data())
    p.add_argument("--tag", default=None, help="write results/qa_learners_babi_<tag>.{json,md}")
    p.add_argument("--note", default="", help="a sentence added under the table")
    p.add_argument("--quick", action="store_true", help="smoke run: one epoch per learner")
    args = p.parse_args()
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        p.error(f"--lr: expected a finite number > 0, got {args.lr}")
    for learner in args.models:  # the registry's own checks, before anything runs
        options = MODELS.get(learner).options
        for key, value in args.set:
            if key not in options:
                p.error(f"--set: {learner} has no option {key!r}")
            try:
                options[key].check(f"--set {learner}.{key}", value)
            except ConfigError as exc:
                p.error(str(exc))
    return args


def main() -> None:
    args = parse_args()
    args.tasks = sorted(set(args.tasks))
    torch.set_num_threads(args.threads)
    if not (args.data / args.layout).is_dir():
        sys.exit(f"bAbI data not found: expected {args.data}/{args.layout} (pass --data or set CLMEM_DATA)")
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    name = "qa_learners_babi" + (f"_{args.tag}" if args.tag else "") + ("_quick" if args.quick else "")
    runs = []
    for seed in args.seeds:
        args.seed = seed
        data = prepare(args)
        sizes = {"train": len(data["train"][1]), "val": len(data["val"][1]), "test": len(data["test"][1]),
                 "shape": list(data["shape"]), "vocab": data["vocab"]}
        for learner in args.models:
            runs.append(run_learner(learner, data, args))
            payload = {"config": config, "data": sizes, "runs": runs, "environment": H.environment()}
            H.write_results(name, payload, markdown(payload))


if __name__ == "__main__":
    main()
