"""Convergence *and* stability of the NTM / DNC on the algorithmic tasks over seeds (``copy_ntm_dnc.py --seeds``).

One run = one (model, configuration, seed): train with the length curriculum until the mean bits-per-sequence of the
last 100 training sequences at the full length range is below 0.1 (``converged_at``), then keep training for
``--extra-sequences`` more and score a fixed held-out set (``--eval-count`` sequences over the full length range,
its own seed) every ``--eval-every`` training sequences from the start. Reported: sequences to < 0.1 bit, the
maximum held-out bits and the maximum last-100 training mean over the extra window (at every step:
``max_last100_bits_after_any_step``; at the curve points: ``max_last100_bits_after``) (``stayed`` = that held-out
maximum < 0.1), the pre-clipping gradient norm (max per curve point), and for the NTM the smallest head-weight mass
``min sum_n w`` on the held-out set (below 1: sharpening lost the head's focus). Per-seed learning curves go to
the JSON; the files are rewritten after each run. ``--spike-factor k`` trains with the ``sequence`` strategy's
gradient-spike guard (``strategies.sequence.GradSpikeGuard``: a gradient above k times the running average norm is
scaled down to that bound, before the fixed ``--clip``); ``spikes_scaled`` counts the updates it scaled.
"""
from __future__ import annotations

import fcntl
import json
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

import _harness as H
from clmem.tasks.algorithmic import Curriculum, CurriculumConfig, make_task, masked_bce_loss
from strategies.sequence import GradSpikeGuard

TARGET_BITS, TARGET_BEFORE = 0.1, 8000


def _wrong_bits(logits, targets, mask) -> torch.Tensor:
    """Wrong bits per sequence ``[B]`` over the masked outputs."""
    wrong = ((logits > 0).to(targets.dtype) != targets).float() * mask.float().unsqueeze(-1)
    return wrong.sum(dim=(1, 2))


@torch.no_grad()
def heldout_score(model, batches) -> Dict[str, Optional[float]]:
    """Mean bits per sequence over fixed held-out ``batches``; for a core with traces, the smallest
    read / write weight mass ``min_{b,t,k} sum_n w`` seen."""
    bits, masses = [], []
    for b in batches:
        logits, trace = model.forward_trace(b.inputs)
        bits.append(_wrong_bits(logits, b.targets, b.mask))
        if trace is not None:
            masses.append(min(float(trace.read_weights.sum(-1).min()), float(trace.write_weights.sum(-1).min())))
    return {"bits": float(torch.cat(bits).mean()), "min_weight_mass": min(masses) if masses else None}


def _optimizer(model, args):
    if args.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=args.lr)
    return torch.optim.RMSprop(model.parameters(), lr=args.lr, momentum=0.9)


class _Tracker:
    """Last-100 window at the full length range, convergence point, curve and held-out points."""

    def __init__(self) -> None:
        self.window: deque = deque(maxlen=100)
        self.converged_at: Optional[int] = None
        self.curve: List[dict] = []
        self.heldout: List[dict] = []
        self.grad_max = 0.0
        self.after_max: Optional[float] = None  # max last-100 mean over every step after converged_at

    @property
    def avg(self) -> Optional[float]:
        return float(np.mean(self.window)) if len(self.window) == 100 else None

    def observe(self, errs: List[float], full_length: bool, seen: int, grad: float) -> bool:
        """Record one batch's per-sequence bits; returns True at the batch that first gets below the target."""
        self.grad_max = max(self.grad_max, grad if np.isfinite(grad) else float("inf"))
        if full_length:
            self.window.extend(errs)
        if self.converged_at is None:
            if self.avg is not None and self.avg < TARGET_BITS:
                self.converged_at = seen
                return True
        elif self.avg is not None:
            self.after_max = max(self.after_max or 0.0, self.avg)
        return False


def _train_step(model, opt, task, args, max_length: int, guard: Optional[GradSpikeGuard] = None):
    """One update on a fresh batch: ``(per-sequence wrong bits, loss, gradient norm before guard and clipping)``."""
    b = task.sample(args.batch, max_length=max_length)
    logits = model(b.inputs)
    loss = masked_bce_loss(logits, b.targets, b.mask)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    raw = guard(model.parameters())[0] if guard is not None else None
    grad = float(torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip))
    grad = grad if raw is None else raw
    opt.step()
    return _wrong_bits(logits.detach(), b.targets, b.mask).tolist(), loss.item(), grad


def train_one(make_model, kind: str, seed: int, args) -> Dict[str, object]:
    """Train ``make_model(task)`` on ``args.task`` with ``seed``; returns the run record (curves included)."""
    torch.manual_seed(seed)
    task, eval_task = make_task(args.task, seed=seed), make_task(args.task, seed=seed + 1000)
    lo, hi = task.length_range
    batches = [eval_task.sample(min(50, args.eval_count)) for _ in range(max(1, args.eval_count // 50))]
    model = make_model(task)
    opt = _optimizer(model, args)
    start = hi if args.no_curriculum else min(max(args.curriculum_start, lo), hi)
    cur = Curriculum(CurriculumConfig(start=start, maximum=hi,
                                      step=args.curriculum_step, threshold=args.curriculum_threshold,
                                      window=args.curriculum_window))
    tr, seen, t_train, next_eval, next_point = _Tracker(), 0, 0.0, 0, 0
    guard = GradSpikeGuard(args.spike_factor, args.spike_decay) if args.spike_factor is not None else None
    while True:
        t0, current = time.perf_counter(), cur.current
        errs, loss, grad = _train_step(model, opt, task, args, current, guard)
        t_train += time.perf_counter() - t0
        seen += len(errs)
        cur.update(float(np.mean(errs)))
        if tr.observe(errs, current >= hi, seen, grad):
            print(f"[{kind} s{seed}] < {TARGET_BITS} bit at {seen} sequences ({t_train:.0f}s)", flush=True)
            for group in opt.param_groups:  # --lr-after-convergence: 1 keeps the rate
                group["lr"] *= args.lr_after_convergence
        if seen >= next_point:
            tr.curve.append({"sequences": seen, "max_length": current, "loss": round(loss, 6),
                             "last100_bits": tr.avg, "grad_norm_max": round(tr.grad_max, 3)})
            tr.grad_max, next_point = 0.0, seen + args.curve_every
        if seen >= next_eval:
            model.eval()
            tr.heldout.append({"sequences": seen, **heldout_score(model, batches)})
            model.train()
            next_eval = seen + args.eval_every
            print(f"[{kind} s{seed}] {seen} seq {t_train:.0f}s L<={current} last-100 {tr.avg} held-out "
                  f"{tr.heldout[-1]['bits']:.3f}", flush=True)
        done = tr.converged_at is not None and seen - tr.converged_at >= args.extra_sequences
        if done or seen >= args.max_sequences or t_train > args.max_seconds:
            break
    model.eval()
    tr.heldout.append({"sequences": seen, **heldout_score(model, batches)})
    record = _record(kind, seed, args, model, tr, seen, t_train)
    if guard is not None:
        record.update(spike_factor=guard.factor, spike_decay=guard.decay, spikes_scaled=guard.scaled)
    return record


def _record(kind, seed, args, model, tr: _Tracker, seen: int, t_train: float) -> Dict[str, object]:
    conv = tr.converged_at
    after = [h for h in tr.heldout if conv is not None and h["sequences"] > conv]
    after_train = [c["last100_bits"] for c in tr.curve if conv is not None and c["sequences"] > conv
                   and c["last100_bits"] is not None]
    masses = [h["min_weight_mass"] for h in tr.heldout if h["min_weight_mass"] is not None]
    max_after = max(h["bits"] for h in after) if after else None
    return {"model": kind, "seed": seed, "task": args.task, "config": model.describe(),
            "optimizer": args.optimizer, "lr": args.lr, "clip": args.clip, "batch": args.batch,
            "lr_after_convergence": args.lr_after_convergence, "curriculum": not args.no_curriculum,
            "parameters": sum(p.numel() for p in model.parameters()),
            "converged_at": conv, "sequences_trained": seen, "train_seconds": t_train,
            "extra_sequences": seen - conv if conv is not None else 0,
            "max_heldout_bits_after": max_after, "max_last100_bits_after": max(after_train) if after_train else None,
            "max_last100_bits_after_any_step": tr.after_max,
            "final_heldout_bits": tr.heldout[-1]["bits"], "min_weight_mass": min(masses) if masses else None,
            "stayed_below": None if max_after is None else max_after < TARGET_BITS,
            "meets_target": conv is not None and conv < TARGET_BEFORE and max_after is not None
            and max_after < TARGET_BITS and seen - conv >= args.extra_sequences,
            "curve": tr.curve, "heldout": tr.heldout}


def _group_key(r) -> str:
    c = ", ".join(f"{k}={v}" for k, v in r["config"].items() if k in ("memory_init", "weight_init"))
    decay = r.get("lr_after_convergence", 1.0)
    spike = (f", spike guard x{r['spike_factor']} (decay {r['spike_decay']})" if r.get("spike_factor") is not None
             else "")
    return (f"{r['model'].upper()} {r['task']} {r['optimizer']} lr {r['lr']}"
            + (f" (x{decay} once < 0.1 bit)" if decay != 1.0 else "") + f" clip {r['clip']}" + spike
            + ("" if r.get("curriculum", True) else ", no curriculum") + (f", {c}" if c else ""))


def markdown(payload) -> str:
    runs = payload["runs"]
    lines = [f"# Convergence and stability over seeds: {', '.join(sorted({r['task'] for r in runs}))}", "",
             "Converged = mean bits-per-sequence of the last 100 training sequences at the full length range < 0.1; "
             "then training goes on for the extra window, scoring a fixed held-out set (own seed) every "
             f"{payload['args']['eval_every']} sequences. Target: < 0.1 bit before {TARGET_BEFORE:,} sequences and "
             "the held-out maximum over the extra window < 0.1. Weight mass = smallest sum of a head's weights "
             "(NTM; 1 = focused distribution intact). Host: "
             f"{payload['environment']['host']} (2 shared, heavily loaded cores), torch threads 1.", "",
             "| configuration | seeds | converged | sequences to < 0.1 bit (per seed) | worst | max held-out bits after "
             "(per seed) | worst | meets target |", "|---|---|---|---|---|---|---|---|"]
    groups: Dict[str, list] = {}
    for r in runs:
        groups.setdefault(_group_key(r), []).append(r)
    for key, rs in groups.items():
        conv = [r["converged_at"] for r in rs]
        after = [r["max_heldout_bits_after"] for r in rs]
        worst_conv = "—" if None in conv else max(conv)
        worst_after = "—" if None in after else f"{max(after):.3f}"
        per = lambda xs, f: ", ".join("—" if x is None else f(x) for x in xs)  # noqa: E731
        lines.append(f"| {key} | {', '.join(str(r['seed']) for r in rs)} | {sum(c is not None for c in conv)}/"
                     f"{len(rs)} | {per(conv, str)} | {worst_conv} | {per(after, lambda x: f'{x:.3f}')} | "
                     f"{worst_after} | {sum(r['meets_target'] for r in rs)}/{len(rs)} |")
    lines += ["", "Per run:", "", "| configuration | seed | sequences to < 0.1 | trained | extra after | max held-out "
              "after | max last-100 after | final held-out | min weight mass | train s |", "|" + "---|" * 10]
    for r in runs:
        f3 = lambda x: "—" if x is None else f"{x:.3f}"  # noqa: E731
        lines.append(f"| {_group_key(r)} | {r['seed']} | {r['converged_at'] or 'not within ' + str(r['sequences_trained'])} "
                     f"| {r['sequences_trained']} | {r['extra_sequences']} | {f3(r['max_heldout_bits_after'])} | "
                     f"{f3(r.get('max_last100_bits_after_any_step', r['max_last100_bits_after']))} | {f3(r['final_heldout_bits'])} | {f3(r['min_weight_mass'])} "
                     f"| {r['train_seconds']:.0f} |")
    if payload.get("note"):
        lines += ["", payload["note"]]
    return "\n".join(lines) + "\n"


def write(name: str, runs: list, args, merge: List[str]) -> None:
    """Write ``results/<name>.{json,md}``; with ``merge`` also (re)build ``results/<args.merge_name>.{json,md}``
    from the listed part names."""
    payload = {"runs": runs, "environment": H.environment(), "args": vars(args), "note": args.note}
    H.write_results(name, payload, markdown(payload))
    if merge:
        merge_parts(merge, args)


def merge_parts(merge: List[str], args) -> None:
    """(Re)build ``results/<args.merge_name>.{json,md}`` from the part files ``results/<part>.json`` that exist
    (under a lock: parts run in parallel processes)."""
    with open(Path(tempfile.gettempdir()) / "clmem_copy_stability.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        parts = [json.loads((H.RESULTS / f"{m}.json").read_text()) for m in merge
                 if (H.RESULTS / f"{m}.json").exists()]
        merged = {"runs": [r for p in parts for r in p["runs"]], "environment": H.environment(),
                  "args": vars(args), "merged_from": merge, "note": args.note}
        H.write_results(args.merge_name, merged, markdown(merged))


def run_seeds(make_model, args) -> None:
    """All ``args.models`` x ``args.seeds`` one after the other, results rewritten after each run."""
    name = args.tag or "copy_stability"
    path = H.RESULTS / f"{name}.json"
    runs = json.loads(path.read_text())["runs"] if args.resume and path.exists() else []
    done = {(r["model"], r["seed"]) for r in runs}
    for kind in args.models:
        for seed in args.seeds:
            if (kind, seed) in done:
                continue
            runs.append(train_one(lambda task: make_model(kind, task), kind, seed, args))
            write(name, runs, args, args.merge_parts)
