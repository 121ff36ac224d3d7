"""MANN (LSTM + LRUA) one-shot Omniglot benchmark (issue 5, 19; Santoro et al. 2016): accuracy by instance.

The paper's setup (Santoro et al. 2016, Sec. 4): 5-way episodes of 5 characters x 10 drawings = 50 steps in
random order; step t sees (x_t, one-hot y_{t-1}) (zeros at t = 0) and predicts y_t; labels shuffled per
episode. Images area-downsampled to 20x20 and flattened; each character of an episode is rotated by a random
multiple of 90 degrees (new classes) and each presentation by a small random rotation and translation
(instance-level augmentation, also on test episodes: "the rest of the 423 classes (plus augmentations) being
used for test"). Training characters: Vinyals et al.'s ``trainval`` split (1200 characters), evaluation its
``test`` split (423). MANN: LSTM controller 200, memory 128 x 40, 4 read heads, each also a write head (the
h-th least-used slot); the LSTM-only baseline (200 units) sees the same inputs. Adam 1e-3, batches of 16
episodes. Counting: an "episode" of the paper's 10^5 is one update on a batch of 16 episodes in the public
reference implementations (their curves' x axis: batches), so the table reports both updates and episodes.

Training stops at a wall-clock budget (the whole training loop, evaluations included; the final evaluation
follows). A learning curve evaluates accuracy by instance every ``--curve-every`` episodes and the results file
is rewritten at every curve point. ``--model both`` trains the MANN and the LSTM side by side on the same
batches; ``--model mann`` (e.g. with ``--no-jitter``) may run as a second process on the same ``--out``: each
process updates only its own entries of the one results file (under a lock).

``--checkpoint FILE`` saves the whole training state (models, optimisers, the episode sampler, the results
entries) at every curve point; ``--resume`` continues from it in a later process with a fresh ``--budget-min``, so
the paper's 10^5 updates can be reached over several sessions (a checkpoint of another setup is refused).

Usage: python benchmarks/mann_omniglot.py [--budget-min 60] [--model both|mann|lstm] [--out mann_omniglot_x]
Writes benchmarks/results/<out>.{json,md}. Accuracy-only: run under ``nice``.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from strategies.mann_fewshot import (LSTMFewShot, MANNFewShot, evaluate_by_instance,  # noqa: E402
                                     load_omniglot_split, sample_episodes, train_step)

RESULTS = ROOT / "benchmarks" / "results"
INSTANCES = (1, 2, 3, 4, 5, 10)
#: Santoro et al. 2016, Table 1, MANN (LRUA), 5 classes, one-hot labels, after 10^5 training "episodes".
PUBLISHED_MANN = {1: 0.364, 2: 0.828, 3: 0.910, 4: 0.926, 5: 0.949, 10: 0.981}
PUBLISHED_UPDATES = 100_000


def load_cached(data: Path, size: int, cache: Path) -> dict[str, torch.Tensor]:
    """``{"train": [1200, 20, S, S], "test": [423, 20, S, S]}``, preprocessed once into ``cache``."""
    if cache.is_file():
        return torch.load(cache, weights_only=True)
    images = {"train": load_omniglot_split(data, "trainval", size), "test": load_omniglot_split(data, "test", size)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(images, cache)
    return images


def _curve_point(model, images, steps, losses, args) -> dict:
    """Accuracy by instance on ``--curve-episodes`` test episodes, jittered (the paper's test) and not (the
    same characters, drawers and labels: ``sample_episodes`` draws the jitter after the plan)."""
    t0 = time.perf_counter()
    kw = dict(seed=args.seed + 1, instances=INSTANCES)
    acc = evaluate_by_instance(model, images["test"], args.curve_episodes, jitter=True, **kw)
    plain = evaluate_by_instance(model, images["test"], args.curve_episodes, jitter=False, **kw)
    recent = losses[-50:]
    point = {"updates": steps, "episodes": steps * args.batch, "train_loss": sum(recent) / max(len(recent), 1),
             "test_accuracy": {str(k): v for k, v in acc.items()},
             "test_accuracy_no_jitter": {str(k): v for k, v in plain.items()}, "eval_s": time.perf_counter() - t0}
    print(f"  {type(model).__name__} {steps:>6} updates {point['episodes']:>8} episodes  loss "
          f"{point['train_loss']:.3f}  " + "  ".join(f"{k}:{v:.3f}" for k, v in acc.items()), flush=True)
    return point


def make_optimizer(model, args) -> torch.optim.Optimizer:
    if args.optimizer == "rmsprop":  # the NTM/DNC papers' RMSProp: decay 0.95, momentum 0.9
        return torch.optim.RMSprop(model.parameters(), lr=args.lr, alpha=0.95, momentum=0.9, eps=1e-6)
    return torch.optim.Adam(model.parameters(), lr=args.lr)


class Run:
    """One model's training state and its results entry (``entry``: steps, times, curve)."""

    def __init__(self, name: str, model, args):
        self.name, self.model, self.opt, self.losses = name, model, make_optimizer(model, args), []
        self.entry = {"steps": 0, "episodes_trained": 0, "train_wall_s": 0.0, "train_cpu_s": 0.0, "curve": [],
                      "loads": [], "parameters": sum(p.numel() for p in model.parameters()), "status": "running",
                      "jitter": args.jitter, "optimizer": args.optimizer, "lr": args.lr}

    def step(self, x, y, batch: int) -> None:
        t0, c0 = time.perf_counter(), time.process_time()
        self.losses.append(train_step(self.model, self.opt, x, y))
        if not math.isfinite(self.losses[-1]):
            raise FloatingPointError(f"{self.name}: training loss is {self.losses[-1]} at update "
                                     f"{self.entry['steps'] + 1}")
        e = self.entry
        e["train_wall_s"] += time.perf_counter() - t0
        e["train_cpu_s"] += time.process_time() - c0
        e["steps"] += 1
        e["episodes_trained"] = e["steps"] * batch


#: what a checkpoint must share with the run that resumes it
RESUME_FIELDS = ("model", "optimizer", "lr", "batch", "writes", "jitter", "seed", "curve_every")


def save_checkpoint(args, runs: list[Run], steps: int, g: torch.Generator) -> None:
    """Models, optimisers, results entries and the episode sampler's state after ``steps`` updates, written to
    ``--checkpoint`` (a temporary file renamed over it, so a crash leaves the previous one whole)."""
    state = {"steps": steps, "generator": g.get_state(), "torch_rng": torch.get_rng_state(),
             "config": {k: getattr(args, k) for k in RESUME_FIELDS},
             "runs": {r.name: {"model": r.model.state_dict(), "optimizer": r.opt.state_dict(), "entry": r.entry,
                               "losses": r.losses[-50:]} for r in runs}}
    tmp = args.checkpoint.with_suffix(args.checkpoint.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, args.checkpoint)


def load_checkpoint(args, runs: list[Run], g: torch.Generator) -> int:
    """Restore ``runs`` and ``g`` from ``--checkpoint`` (tensors and plain data only: ``weights_only``); returns
    the updates already made. A checkpoint of another setup is refused in one line naming the field."""
    if not args.checkpoint.is_file():
        sys.exit(f"--resume: checkpoint {args.checkpoint} not found")
    state = torch.load(args.checkpoint, weights_only=True)
    for field in RESUME_FIELDS:
        if state["config"].get(field) != getattr(args, field):
            sys.exit(f"--resume: checkpoint {args.checkpoint} has {field}={state['config'].get(field)!r}, this "
                     f"run {field}={getattr(args, field)!r}")
    for run in runs:
        saved = state["runs"][run.name]
        run.model.load_state_dict(saved["model"])
        run.opt.load_state_dict(saved["optimizer"])
        run.entry, run.losses = saved["entry"], list(saved["losses"])
        run.entry["status"] = "running"
    g.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["steps"])


def train(runs: list[Run], images, args, budget_s: float) -> None:
    """Train every run on the same batches until ``budget_s`` seconds of wall clock have passed (evaluations
    included); after every curve point each run's partial entry is written to the results file (and, with
    ``--checkpoint``, the whole training state; ``--resume`` continues from it)."""
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    every, start = max(1, args.curve_every // args.batch), time.perf_counter()
    resumed = load_checkpoint(args, runs, g) if args.resume else None
    steps = resumed or 0
    while True:
        done = time.perf_counter() - start >= budget_s
        if (steps % every == 0 and steps != resumed) or done:
            for run in runs:
                run.entry["curve"].append(_curve_point(run.model, images, steps, run.losses, args))
                run.entry["loads"].append(os.getloadavg()[0])
                update_results(args, run.name, run.entry)
            if args.checkpoint is not None:
                save_checkpoint(args, runs, steps, g)
        if done:
            return
        x, y = sample_episodes(images["train"], args.batch, 5, 10, g, jitter=args.jitter)
        for run in runs:
            run.step(x, y, args.batch)
        steps += 1


def final_eval(model, images, args) -> dict:
    """The paper's test (jittered episodes of the 423 test characters), the same without jitter, and training
    characters (jittered)."""
    kw = dict(instances=INSTANCES, seed=args.seed + 2)
    test = evaluate_by_instance(model, images["test"], args.eval_episodes, jitter=True, **kw)
    plain = evaluate_by_instance(model, images["test"], args.eval_episodes, jitter=False, **kw)
    seen = evaluate_by_instance(model, images["train"], args.curve_episodes, seed=args.seed + 3, instances=INSTANCES)
    return {"test_accuracy": {str(k): v for k, v in test.items()}, "eval_episodes": args.eval_episodes,
            "test_accuracy_no_jitter": {str(k): v for k, v in plain.items()},
            "train_chars_accuracy": {str(k): v for k, v in seen.items()}, "train_chars_episodes": args.curve_episodes}


def build(kind: str, args) -> Run:
    extra = "" if args.jitter else ", no jitter"
    if kind == "mann":
        model = MANNFewShot(20, 5, 200, 128, 40, 4, num_writes=args.writes)
        writes = model.core.config.num_writes
        return Run(f"MANN (LSTM 200 + LRUA 128x40, 4 reads, {writes} write{'s' if writes > 1 else ''}{extra})",
                   model, args)
    return Run(f"LSTM 200 (no memory{extra})", LSTMFewShot(20, 5, 200), args)


def run_models(kinds: list[str], images, args) -> None:
    """Train ``kinds`` side by side on the same batches for ``--budget-min`` minutes, then evaluate each."""
    runs = [build(kind, args) for kind in kinds]
    for run in runs:
        print(f"{run.name}: {run.entry['parameters']} parameters", flush=True)
    train(runs, images, args, 60 * args.budget_min)
    for run in runs:
        run.entry.update(final_eval(run.model, images, args), status="done")
        update_results(args, run.name, run.entry)
        print(f"{run.name}: {run.entry['steps']} updates, test " + "  ".join(
            f"{k}:{v:.3f}" for k, v in run.entry["test_accuracy"].items()), flush=True)


def update_results(args, name: str, entry: dict) -> None:
    """Read-modify-write ``<out>.json`` under a lock (two processes may share it), then re-render the Markdown."""
    path = args.results / f"{args.out}.json"
    args.results.mkdir(parents=True, exist_ok=True)
    with open(Path("/tmp") / f"clmem-{args.out}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = json.loads(path.read_text()) if path.is_file() else {}
        if result.get("config", {}).get("run_id") != args.run_id:
            result = {}  # a results file of an earlier run under this name: start afresh
        result.setdefault("config", config(args))
        result["published_mann"] = {str(k): v for k, v in PUBLISHED_MANN.items()}
        result.setdefault("models", {})[name] = entry
        result["notes"] = notes(result["models"], result["config"])
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, path)
        path.with_suffix(".md").write_text(markdown(result))


def config(args) -> dict:
    return {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "results"},
            "n_way": 5, "shots": 10, "image_size": 20, "train_characters": 1200, "test_characters": 423,
            "torch_threads": 1, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared)"}


def _pct(v) -> str:
    return f"{100 * v:.1f}%"


def _ord(k: int) -> str:
    return f"{k}" + {1: "st", 2: "nd", 3: "rd"}.get(k, "th")


def markdown(result: dict) -> str:
    cfg, models = result["config"], result["models"]
    lines = ["| model | updates (batches of 16) | episodes | train wall (s) | "
             + " | ".join(_ord(k) for k in INSTANCES) + " |", "|---|---|---|---|" + "---|" * len(INSTANCES)]
    for name, m in models.items():
        acc = m.get("test_accuracy") or m["curve"][-1]["test_accuracy"]
        where = (f"{m['eval_episodes']} test episodes" if "test_accuracy" in m
                 else f"still running: last curve point, {cfg['curve_episodes']} test episodes")
        lines.append(f"| {name} (this run, {where}) | {m['steps']} | {m['episodes_trained']} | "
                     f"{m['train_wall_s']:.0f} | " + " | ".join(_pct(acc[str(k)]) for k in INSTANCES) + " |")
    lines.append(f"| MANN, Santoro et al. 2016 (published) | {PUBLISHED_UPDATES} | {PUBLISHED_UPDATES * 16} | - | "
                 + " | ".join(_pct(PUBLISHED_MANN[k]) for k in INSTANCES) + " |")
    lines += ["", f"Learning curve (test characters, accuracy by instance, {cfg['curve_episodes']} episodes per "
              "point; last two columns: the same episodes without the per-presentation jitter):", "",
              "| model | updates | episodes | train loss | " + " | ".join(str(k) for k in INSTANCES)
              + " | 2 (no jitter) | 5 (no jitter) |", "|---|---|---|---|" + "---|" * (len(INSTANCES) + 2)]
    for name, m in models.items():
        for p in m["curve"]:
            lines.append(f"| {name} | {p['updates']} | {p['episodes']} | {p['train_loss']:.3f} | "
                         + " | ".join(_pct(p["test_accuracy"][str(k)]) for k in INSTANCES) + " | "
                         + " | ".join(_pct(p["test_accuracy_no_jitter"][k]) for k in ("2", "5")) + " |")
    return "\n".join(lines) + "\n" + result["notes"] + "\n"


def updates_to_reach(curve: list[dict], instance: int, target: float) -> tuple[float, float] | None:
    """From the curve's second half: the update count at which ``instance``'s accuracy reaches ``target`` if it
    kept rising (a) linearly in updates (an optimistic bound) and (b) linearly in log(updates)."""
    pts = [(p["updates"], p["test_accuracy"][str(instance)]) for p in curve if p["updates"] > 0]
    pts = pts[len(pts) // 2:]
    if len(pts) < 3 or pts[-1][0] <= pts[0][0]:
        return None
    (u0, a0), (u1, a1) = pts[0], pts[-1]
    if a1 >= target:
        return float(u1), float(u1)
    if a1 <= a0:
        return None
    linear = u1 + (target - a1) * (u1 - u0) / (a1 - a0)
    slope = (a1 - a0) / (math.log(u1) - math.log(u0))
    return linear, u1 * math.exp((target - a1) / slope)


def notes(models: dict, cfg: dict) -> str:
    lines = ["", "Notes:",
             f"- Setup: {cfg['optimizer']} lr {cfg['lr']:g}, batches of {cfg['batch']} episodes, gradient norm "
             f"clipped at 10, cross-entropy on all 50 steps; one seed ({cfg['seed']}); wall budget "
             f"{cfg['budget_min']:g} min per process (training loop and curve points); per-presentation jitter "
             "on (training and test) unless the model's name says 'no jitter'.",
             "- Counting: the published row's 100,000 is the paper's number of training 'episodes'; the public "
             "reference implementations take it as 100,000 updates on batches of 16 episodes (their learning "
             "curves' x axis is batches), i.e. 1.6M episodes, so compare updates with updates.",
             "- Accuracy at instance k pools the k-th presentation of all 5 classes of every evaluation episode "
             "(about +-1.5 points of sampling error for 1000 episodes, +-3 for a 200-episode curve point); test "
             "characters: the 423 of Vinyals et al.'s test split, never trained on; test episodes jittered as in "
             "training (the paper's 'plus augmentations'), 'no jitter' columns: the same episodes unjittered."]
    for name, m in models.items():
        if not name.startswith("MANN"):
            continue
        for k in (2, 5):
            est = updates_to_reach(m["curve"], k, PUBLISHED_MANN[k])
            if est:
                lines.append(f"- {name}: {_ord(k)} instance reaches the published {_pct(PUBLISHED_MANN[k])} at about "
                             f"{est[0]:.0f} updates if it kept its recent rise per update, {est[1]:.0f} if it kept "
                             f"its rise per doubling of updates (second half of the curve).")
    for name, m in models.items():
        loads = m.get("loads") or [float("nan")]
        lines.append(f"- {name}: {m['train_cpu_s']:.0f} s of CPU in {m['train_wall_s']:.0f} s of its own training "
                     f"steps' wall clock (2 shared cores, torch threads 1, mean 1-min load average "
                     f"{sum(loads) / len(loads):.1f}).")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "omniglot")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/clmem-omniglot/vinyals_trainval_test_20px.pt"))
    parser.add_argument("--budget-min", type=float, default=30.0,
                        help="wall clock of the training loop, curve points included (minutes)")
    parser.add_argument("--model", choices=("both", "mann", "lstm"), default="both",
                        help="both: the MANN and the LSTM side by side on the same batches; mann/lstm: one alone")
    parser.add_argument("--optimizer", choices=("adam", "rmsprop"), default="adam")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--writes", type=int, default=None, help="MANN write heads (default: one per read head)")
    parser.add_argument("--no-jitter", dest="jitter", action="store_false",
                        help="no per-presentation rotation/translation (the quarter turns stay)")
    parser.add_argument("--curve-every", type=int, default=8000, help="episodes between learning-curve points")
    parser.add_argument("--curve-episodes", type=int, default=200)
    parser.add_argument("--eval-episodes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="write the training state here at every curve point (for --resume)")
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint (same setup)")
    parser.add_argument("--run-id", default=None, help="processes of one run share it (default: --out and seed)")
    parser.add_argument("--out", default="mann_omniglot")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of <out>.{json,md}")
    parser.add_argument("--render", action="store_true", help="only re-render results/<out>.md from its JSON")
    args = parser.parse_args(argv)
    for field in ("budget_min", "lr"):
        value = getattr(args, field)
        if not (math.isfinite(value) and value > 0):
            parser.error(f"--{field.replace('_', '-')}: expected a finite number > 0, got {value}")
    for field in ("batch", "curve_every", "curve_episodes", "eval_episodes"):
        if getattr(args, field) < 1:
            parser.error(f"--{field.replace('_', '-')}: expected an int >= 1, got {getattr(args, field)}")
    if args.resume and args.checkpoint is None:
        parser.error("--resume: expected --checkpoint FILE")
    args.run_id = args.run_id or f"{args.out}-seed{args.seed}"
    return args


def main() -> None:
    args = parse_args()
    if args.render:
        path = args.results / f"{args.out}.json"
        result = json.loads(path.read_text())
        result["notes"] = notes(result["models"], result["config"])
        path.write_text(json.dumps(result, indent=1))
        path.with_suffix(".md").write_text(markdown(result))
        return print(markdown(result))
    torch.set_num_threads(1)
    images = load_cached(args.data, 20, args.cache)
    run_models(["mann", "lstm"] if args.model == "both" else [args.model], images, args)
    print((args.results / f"{args.out}.md").read_text())


if __name__ == "__main__":
    main()
