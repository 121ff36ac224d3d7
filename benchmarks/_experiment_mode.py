"""``continual_babi.py --experiment FILE``: every trial of an experiment file's grid through ``clmem.runner.run_trial``
in ``--jobs`` worker processes (torch threads 1 each), the results file rewritten after each finished trial.

Written to ``benchmarks/results/<file stem>[_<tag>][_quick].{json,md}``: per trial the accuracy (here: error) matrix
``R``, ``b``, clmem's summary (ACC, BWT, Forgetting, AIA), Avalanche's own values and the wall time; the refused
model x strategy pairs and why (``clmem.compat.check_pair``, the check ``clmem validate`` runs); the target check of
issue 19 (best memory-learner strategy vs MemN2N's best on the same data).
"""
from __future__ import annotations

import copy
import json
import multiprocessing
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

#: learners and strategies whose refusal on this stream the results file lists (checked, not assumed)
REFUSAL_PROBES = {"model": ["igor", "dnc", "sparse_dnc"], "strategy": ["hopfield_kv", "ncm", "der"]}
MEMORY_LEARNERS = ("sentence_dnc", "dnc", "sparse_dnc")


def _filtered(raw: dict, args) -> dict:
    """The file's raw mapping with ``--models`` / ``--strategies`` / ``--seeds`` / ``--quick`` applied."""
    raw = copy.deepcopy(raw)
    for section, keep in (("model", args.models), ("strategy", args.strategies)):
        if keep:
            names = raw[section]["name"] if isinstance(raw[section]["name"], list) else [raw[section]["name"]]
            missing = [k for k in keep if k not in names]
            if missing:
                sys.exit(f"--{section}s: {', '.join(missing)} not in {section}.name of the file ({', '.join(names)})")
            raw[section]["name"] = list(keep)
            for name in names:
                if name not in keep:
                    raw[section].pop(name, None)
    if args.seeds_given:
        raw["seeds"] = list(args.seeds)
    if args.quick:
        raw["strategy"]["train_epochs"] = 1
        raw["benchmark"].update(train_questions=100, test_questions=100)
    return raw


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def _run_one(trial: dict) -> dict:
    """One trial in a worker: ``{"model", "strategy", "seed", "R", "b", "summary", "avalanche", "wall_seconds"}``."""
    from clmem.runner import run_trial

    label = f"[{trial['model']['name']} {trial['strategy']['name']} seed {trial['seed']}]"
    print(f"{label} start", flush=True)
    t0 = time.perf_counter()
    result = run_trial(trial, on_experience=lambda i, rep: print(
        f"{label} after experience {i}: errors {[round(x, 3) for x in rep['R'][-1]]}", flush=True))
    row = {"model": trial["model"]["name"], "strategy": trial["strategy"]["name"], "seed": trial["seed"],
           "R": result.R, "b": result.b,
           "summary": {k: v for k, v in result.summary.items() if isinstance(v, (int, float))},
           "avalanche": {k: v for k, v in result.avalanche.items() if isinstance(v, (int, float))},
           "wall_seconds": time.perf_counter() - t0}
    print(f"{label} done in {row['wall_seconds']:.0f} s: {row['summary']}", flush=True)
    return row


def refusals(trial: dict) -> list:
    """``[{"model", "strategy", "reason"}]``: the probe learners / strategies on this trial's stream that
    ``clmem validate`` refuses, with its one-line reason (pairs it accepts are not listed)."""
    from clmem.compat import check_pair
    from clmem.config import _resolve_section
    from clmem.options import ConfigError

    out = []
    pairs = [(m, trial["strategy"]["name"]) for m in REFUSAL_PROBES["model"]]
    pairs += [(trial["model"]["name"], s) for s in REFUSAL_PROBES["strategy"]]
    for model, strategy in pairs:
        probe = {"benchmark": trial["benchmark"], "model": _resolve_section("model", {"name": model}),
                 "strategy": _resolve_section("strategy", {"name": strategy})}
        try:
            check_pair(probe)
        except ConfigError as err:
            out.append({"model": model if model != trial["model"]["name"] else "every model",
                        "strategy": strategy if strategy != trial["strategy"]["name"] else "every strategy",
                        "reason": str(err)})
    return out


def _absolute_data(trials: list, repo: Path) -> None:
    for trial in trials:  # relative data_root: relative to the repository root (as clmem grid run from there)
        root = trial["benchmark"].get("data_root")
        if root is not None and not Path(root).is_absolute():
            trial["benchmark"]["data_root"] = str((repo / root).resolve())


def run_experiment(args, repo: Path, results: Path) -> None:
    """Run every trial of ``args.experiment`` (``args.jobs`` at once), rewriting the results after each."""
    from clmem.config import Experiment, load_file
    import _harness as H

    args.seeds_given = "--seeds" in sys.argv
    raw = _filtered(load_file(args.experiment), args)
    trials = Experiment.from_dict(raw, source=str(args.experiment)).trials
    _absolute_data(trials, repo)
    name = args.experiment.stem + (f"_{args.tag}" if args.tag else "") + ("_quick" if args.quick else "")
    payload = {"experiment_file": str(args.experiment), "experiment": raw, "jobs": args.jobs,
               "budget_min": args.budget_min, "refused": refusals(trials[0]), "runs": [], "not_run": [],
               "environment": H.environment()}
    if getattr(args, "update", False):
        payload = _updated(results / f"{name}.json", load_file(args.experiment), trials, payload)
    start = time.perf_counter()

    def write() -> None:
        payload["wall_seconds_total"] = time.perf_counter() - start
        results.mkdir(parents=True, exist_ok=True)
        (results / f"{name}.json").write_text(json.dumps(payload, indent=1) + "\n")
        (results / f"{name}.md").write_text(markdown(payload))

    _pool_run(trials, args, start, payload, write)
    write()
    print(f"wrote {results / name}.json and .md ({payload['wall_seconds_total'] / 60:.1f} min)", flush=True)


def _key(row: dict) -> tuple:
    return row["model"], row["strategy"], row["seed"]


def _updated(path: Path, full_raw: dict, trials: list, payload: dict) -> dict:
    """``--update``: the earlier results file at ``path`` with the runs of ``trials`` taken out (they run again) and
    the whole file's grid as its experiment; every other run it holds is kept as it was."""
    if not path.is_file():
        sys.exit(f"--update: no earlier results file {path} (run without --update first)")
    earlier = json.loads(path.read_text())
    again = {_key({"model": t["model"]["name"], "strategy": t["strategy"]["name"], "seed": t["seed"]})
             for t in trials}
    kept = [r for r in earlier["runs"] if _key(r) not in again]
    print(f"--update: keeping {len(kept)} runs of {path.name}, running {len(again)}", flush=True)
    return {**payload, "experiment": full_raw, "runs": kept,
            "wall_seconds_earlier": earlier.get("wall_seconds_total", 0) + earlier.get("wall_seconds_earlier", 0)}


def _pool_run(trials: list, args, start: float, payload: dict, write) -> None:
    """Submit trials in file order, at most ``args.jobs`` running; none starts after the budget."""
    budget = float("inf") if args.budget_min is None else 60.0 * args.budget_min
    queue, running = list(trials), {}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context, initializer=_worker_init) as pool:
        while queue or running:
            while queue and len(running) < args.jobs and time.perf_counter() - start < budget:
                trial = queue.pop(0)
                running[pool.submit(_run_one, trial)] = trial
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                trial = running.pop(future)
                try:
                    payload["runs"].append(future.result())
                except Exception as err:  # a crashed pair is a result to report, not a reason to stop the grid
                    payload["runs"].append({"model": trial["model"]["name"], "strategy": trial["strategy"]["name"],
                                            "seed": trial["seed"], "error": f"{type(err).__name__}: {err}"})
                write()
    payload["not_run"] = [{"model": t["model"]["name"], "strategy": t["strategy"]["name"], "seed": t["seed"]}
                          for t in queue]


# ----------------------------------------------------------------------------------------------------- report
def _options(section: dict) -> str:
    """``name: k=v, ...`` of a section's per-name blocks (or its flat options)."""
    names = section["name"] if isinstance(section["name"], list) else [section["name"]]
    flat = ", ".join(f"{k}={v}" for k, v in section.items() if k != "name" and k not in names)
    blocks = [f"{n}: " + (", ".join(f"{k}={v}" for k, v in section[n].items()) or "defaults")
              for n in names if isinstance(section.get(n), dict)]
    return "; ".join(([flat] if flat else []) + blocks)


def _target(runs: list) -> list:
    """Issue 19's target line: best memory-learner ACC (mean final error) vs MemN2N's best, same data."""
    best = {}
    for r in runs:
        if "summary" in r and (r["model"] not in best or r["summary"]["ACC"] < best[r["model"]][0]):
            best[r["model"]] = (r["summary"]["ACC"], r["strategy"])
    memory = [(v, m) for m, v in best.items() if m in MEMORY_LEARNERS]
    if "memn2n" not in best or not memory:
        return ["Target (issue 19): not decided yet (needs a memory learner and memn2n finished)."]
    (acc, strategy), model = min(memory)
    ref, ref_strategy = best["memn2n"]
    verdict = "met" if acc <= ref else "not met"
    return [f"Target (issue 19: a memory learner with some strategy reaches mean final error <= MemN2N's best "
            f"strategy on the same data): **{verdict}** — best {model} {acc:.3f} ({strategy}) vs memn2n "
            f"{ref:.3f} ({ref_strategy}): {acc - ref:+.3f}."]


def _run_rows(payload: dict) -> list:
    tasks = str(payload["experiment"]["benchmark"].get("tasks", "")).split(",")
    lines = ["| model | strategy | seed | final error per task (" + ", ".join(tasks) + ") | ACC (mean final error) "
             "| BWT | forgetting | wall (s) |", "|---|---|---|---|---|---|---|---|"]
    for r in payload["runs"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['strategy']} | {r['seed']} | crashed: {r['error'][:200]} | | | | |")
            continue
        s = r["summary"]
        lines.append(f"| {r['model']} | {r['strategy']} | {r['seed']} | {', '.join(f'{x:.3f}' for x in r['R'][-1])} "
                     f"| {s['ACC']:.3f} | {s['BWT']:.3f} | {s['Forgetting']:.3f} | {r['wall_seconds']:.0f} |")
    return lines


def _acc_grid(payload: dict) -> list:
    runs = [r for r in payload["runs"] if "summary" in r]
    models = list(dict.fromkeys(r["model"] for r in runs))
    strategies = list(dict.fromkeys(r["strategy"] for r in runs))
    lines = ["| model | " + " | ".join(strategies) + " |", "|---|" + "---|" * len(strategies)]
    for m in models:
        cells = []
        for s in strategies:
            sel = [r["summary"] for r in runs if r["model"] == m and r["strategy"] == s]
            cells.append(" / ".join(f"{x['ACC']:.3f}, {x['BWT']:+.3f}, {x['Forgetting']:+.3f}" for x in sel) or "—")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def markdown(payload: dict) -> str:
    """The results file's Markdown: settings, one row per trial, the ACC grid, refused pairs, the target."""
    raw = payload["experiment"]
    bench = {k: v for k, v in raw["benchmark"].items() if k not in ("name", "data_root")}
    done = len(payload["runs"])
    lines = [f"# {raw['name']}: {raw.get('description', '')}", "",
             f"From `{payload['experiment_file']}` via `benchmarks/continual_babi.py --experiment` "
             f"(clmem.runner.run_trial, {payload['jobs']} worker processes, torch threads 1), seeds {raw['seeds']}; "
             f"{done} trials finished, {len(payload['not_run'])} not started (budget), "
             f"{(payload.get('wall_seconds_total', 0) + payload.get('wall_seconds_earlier', 0)) / 60:.1f} min wall "
             f"in all" + (" (over several runs of the script, `--update`)" if payload.get("wall_seconds_earlier") else "")
             + ".", "",
             f"Benchmark {raw['benchmark']['name']}: " + ", ".join(f"{k}={v}" for k, v in bench.items()) + ".",
             f"Models: {_options(raw['model'])}.", f"Strategy: {_options(raw['strategy'])}.", "",
             "Score: test error (1 - accuracy, lower is better). ACC = mean final error; BWT = Lopez-Paz & Ranzato "
             "(2017), mean over earlier tasks of final minus just-trained error; forgetting = Chaudhry et al. (2018), "
             "mean over earlier tasks of the final error minus the best (lowest) earlier error. Both are clmem's "
             "(`clmem.metrics`, on the error matrix: > 0 means earlier tasks got worse), not Avalanche's "
             "first-vs-last forgetting (that one is in the JSON as `avalanche`).", ""]
    lines += _run_rows(payload) + ["", "ACC, BWT, forgetting per model x strategy:", ""] + _acc_grid(payload)
    lines += ["", *_target(payload["runs"]), "", "Refused on this stream by `clmem validate` (one line each):", ""]
    lines += [f"- {r['model']} x {r['strategy']}: {r['reason']}" for r in payload["refused"]]
    if payload["not_run"]:
        lines += ["", "Not started (wall budget): " + ", ".join(f"{r['model']} {r['strategy']}"
                                                              for r in payload["not_run"])]
    return "\n".join(lines) + "\n"
