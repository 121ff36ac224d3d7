"""Copy task (Graves et al. 2014) with clmem's ``NTMCore`` and ``DNCCore``: sequences to converge, generalisation, speed.

Task: ``clmem.tasks.algorithmic.CopyTask`` with 8-bit vectors; training lengths drawn uniformly in 1..L where L is
grown by ``clmem.tasks.algorithmic.Curriculum`` from ``--curriculum-start`` to 20 (``--no-curriculum``: L = 20 from
the start). Loss: ``masked_bce_loss``; error: ``bits_per_sequence`` per sequence.

**Convergence**: the first training sequence count at which the mean bits-per-sequence error of the last 100 training
sequences, all drawn at lengths 1–20 (i.e. after the curriculum reached 20), is below 0.1. Training then continues
for ``--confirm`` more sequences to check that the running average *stays* below 0.1 (its maximum over that window is
reported), and a held-out set of fresh sequences at lengths 1–20 is scored. If it never gets there within the budget
(``--max-seconds`` of training or ``--max-sequences``), the model is reported "not converged within N sequences".
Then bits per sequence at lengths 40 and 80 (``evaluate_generalisation``). Throughput: training sequences per second
of wall time (forward + backward + optimiser, data generation included, evaluations excluded).

NTM initial state: ``NTMCore.initial_state`` with ``--memory-init`` (default ``constant``: every cell 1e-6) and
``--weight-init`` (default ``onehot``: heads focused on slot 0), see ``clmem.memory.ntm``. The DNC starts from
``initial_state`` (its allocation breaks the symmetry). Memory size does not change the parameters, so lengths beyond
N are also scored with a larger memory (``--eval-memory``) and the same weights.

Stability over seeds (``--extra-sequences K``, see ``benchmarks/_stability.py``): every model x ``--seeds`` trains to
< 0.1 bit, then K more sequences while a fixed held-out set is scored every ``--eval-every`` sequences; results go to
``results/<--tag or copy_stability>.{json,md}`` after each run (``--merge-parts`` also rebuilds
``results/copy_stability.{json,md}`` from several such parts). ``--task`` also takes ``repeat_copy`` and
``associative_recall`` there. ``--spike-factor 3`` adds the ``sequence`` strategy's gradient-spike guard
(``strategies.sequence.GradSpikeGuard``, option ``spike_factor`` in experiment files): without it a converged NTM
falls back to chance after one large gradient (one sequence whose read head lands one slot off), which Adam turns into
a step of several learning rates on every parameter.

    .venv/bin/python benchmarks/copy_ntm_dnc.py                      # both models, one after the other
    .venv/bin/python benchmarks/copy_ntm_dnc.py --models ntm --tag ntm   # one model per process ...
    .venv/bin/python benchmarks/copy_ntm_dnc.py --merge ntm dnc      # ... merged into results/copy_ntm_dnc.{json,md}
    .venv/bin/python benchmarks/copy_ntm_dnc.py --quick
    nice -n 15 .venv/bin/python benchmarks/copy_ntm_dnc.py --models ntm --seeds 0 1 2 3 4 --extra-sequences 5000
    nice -n 15 .venv/bin/python benchmarks/copy_ntm_dnc.py --models ntm --seeds 0 1 2 3 4 --spike-factor 3 \
        --tag copy_stability_ntm_guard
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
import _harness as H  # noqa: E402
import _stability  # noqa: E402

from clmem.memory import DNCCore, NTMCore  # noqa: E402
from clmem.memory.ntm import MEMORY_INITS, WEIGHT_INITS  # noqa: E402
from clmem.tasks.algorithmic import (CopyTask, Curriculum, CurriculumConfig, bits_per_sequence,  # noqa: E402
                                     masked_bce_loss)

RESULTS = REPO / "benchmarks" / "results"
MODELS = {
    "ntm": dict(cls=NTMCore, hidden_size=100, memory_size=128, word_size=20, num_reads=1, num_writes=1),
    "dnc": dict(cls=DNCCore, hidden_size=64, memory_size=64, word_size=20, num_reads=2, num_writes=1),
}
PEER = {"name": "pytorch-ntm (batch 1, RMSprop 1e-4)", "sequences_to_1_bit": [8000, 15000], "sequences_per_s": 25}


class Model(torch.nn.Module):
    """A core for the task's channel sizes; ``forward(x) -> logits`` from the core's initial state."""

    def __init__(self, kind: str, ntm: Dict[str, str], memory_size: int = 0, input_size: int = 9,
                 output_size: int = 8) -> None:
        super().__init__()
        spec = dict(MODELS[kind])
        cls = spec.pop("cls")
        if memory_size:
            spec["memory_size"] = memory_size
        if kind == "ntm":
            spec.update(ntm)
        self.kind, self.spec = kind, spec
        self.core = cls(input_size=input_size, output_size=output_size, **spec)

    def describe(self) -> Dict[str, object]:
        return dict(self.spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.core(x)[0]

    def forward_trace(self, x: torch.Tensor):
        """``(logits, CoreTrace)``: the trace gives the per-step head weights."""
        y, _, trace = self.core(x, return_trace=True)
        return y, trace


def per_sequence_bits(logits, targets, mask) -> List[float]:
    wrong = ((logits > 0).to(targets.dtype) != targets).float() * mask.float().unsqueeze(-1)
    return wrong.sum(dim=(1, 2)).tolist()


@torch.no_grad()
def score(model, task, length=None, count=200, batch=50, max_length=None) -> float:
    errors, batch = [], min(batch, count)
    for _ in range(max(1, count // batch)):
        b = task.sample(batch, length=length, max_length=max_length)
        errors.append(bits_per_sequence(model(b.inputs), b.targets, b.mask))
    return float(np.mean(errors))


def run_model(kind: str, args) -> Dict[str, object]:
    torch.manual_seed(args.seed)
    model = Model(kind, ntm_options(args), memory_size=args.memory_size)
    task = CopyTask(num_bits=8, min_length=1, max_length=20, seed=args.seed)
    params = sum(p.numel() for p in model.parameters())
    opt = (torch.optim.Adam(model.parameters(), lr=args.lr) if args.optimizer == "adam"
           else torch.optim.RMSprop(model.parameters(), lr=args.lr, momentum=0.9))
    curriculum = None if args.no_curriculum else Curriculum(CurriculumConfig(
        start=args.curriculum_start, maximum=20, step=args.curriculum_step, threshold=args.curriculum_threshold,
        window=args.curriculum_window))
    window: deque = deque(maxlen=100)   # per-sequence bits of the last 100 training sequences at lengths 1-20
    seen, full_from = 0, 0 if curriculum is None else None
    converged_at, below_max, first_below_1bit, last_above, confirm_steps, confirm_below = None, None, None, 0, 0, 0
    log, train_time, t_print = [], 0.0, time.perf_counter()
    cpu0 = time.process_time()
    print(f"[{kind}] {params} parameters, batch {args.batch}, {args.optimizer} lr {args.lr}", flush=True)
    while True:
        t0 = time.perf_counter()
        current = 20 if curriculum is None else curriculum.current
        b = task.sample(args.batch, max_length=current)
        logits = model(b.inputs)
        loss = masked_bce_loss(logits, b.targets, b.mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        train_time += time.perf_counter() - t0
        errs = per_sequence_bits(logits.detach(), b.targets, b.mask)
        seen += len(errs)
        if curriculum is not None:
            if curriculum.update(float(np.mean(errs))) and curriculum.current >= 20:
                full_from = seen
        if full_from is not None and current >= 20:
            window.extend(errs)
        avg = float(np.mean(window)) if len(window) == 100 else None
        if avg is not None and avg < 1.0 and first_below_1bit is None:
            first_below_1bit = seen
        if avg is not None and avg < 0.1 and converged_at is None:
            converged_at = seen
            print(f"[{kind}] converged: last-100 mean {avg:.3f} bits after {seen} sequences "
                  f"({train_time:.0f}s)", flush=True)
        if avg is not None and avg >= 0.1:
            last_above = seen
        if converged_at is not None:
            below_max = max(below_max or 0.0, avg)
            confirm_steps, confirm_below = confirm_steps + 1, confirm_below + (avg < 0.1)
        if time.perf_counter() - t_print > 15:
            t_print = time.perf_counter()
            log.append({"sequences": seen, "seconds": train_time, "max_length": current, "loss": loss.item(),
                        "last100_bits": avg})
            print(f"[{kind}] {seen} seq, {train_time:.0f}s, {seen / train_time:.1f} seq/s, L<={current}, "
                  f"loss {loss.item():.4f}, last-100 bits {avg if avg is None else round(avg, 3)}", flush=True)
        done = converged_at is not None and seen - converged_at >= args.confirm
        if done or train_time > args.max_seconds or seen >= args.max_sequences:
            break
    cpu = time.process_time() - cpu0
    model.eval()
    task_eval = CopyTask(num_bits=8, min_length=1, max_length=20, seed=args.seed + 1000)
    heldout = score(model, task_eval, count=args.eval_count)
    gen = {str(n): score(model, task_eval, length=n, count=args.eval_count // 2) for n in (40, 80)}
    gen_big = {"40": float("nan"), "80": float("nan")}  # an initial state learned (or drawn) per slot fixes N
    if kind != "ntm" or ntm_options(args) == {"memory_init": "constant", "weight_init": "onehot"}:
        big = Model(kind, ntm_options(args), memory_size=args.eval_memory)
        big.load_state_dict(model.state_dict())
        big.eval()
        gen_big = {str(n): score(big, task_eval, length=n, count=args.eval_count // 2) for n in (40, 80)}
    config = {k: v for k, v in MODELS[kind].items() if k != "cls"}
    config["memory_size"] = args.memory_size or config["memory_size"]
    out = {"model": kind, "config": config, "parameters": params,
           "batch": args.batch, "optimizer": args.optimizer, "lr": args.lr, "clip": args.clip,
           "curriculum": None if curriculum is None else vars(curriculum.config),
           "ntm_init": f"{args.memory_init}/{args.weight_init}" if kind == "ntm" else None,
           "sequences_trained": seen, "updates": seen // args.batch, "train_seconds": train_time,
           "train_cpu_seconds": cpu, "sequences_per_s": seen / train_time,
           "curriculum_reached_20_at": full_from, "first_below_1_bit_at": first_below_1bit,
           "converged_at": converged_at, "confirm_window": args.confirm,
           "max_last100_after_convergence": below_max,
           "stayed_below_0.1": None if converged_at is None else (below_max < 0.1),
           "fraction_of_confirm_updates_below_0.1": confirm_below / confirm_steps if confirm_steps else None,
           "below_0.1_for_good_from": last_above if converged_at is not None and window
           and float(np.mean(window)) < 0.1 else None,
           "final_last100_bits": float(np.mean(window)) if window else None,
           "heldout_bits_1_20": heldout, "bits_at_length": gen, "eval_memory_size": args.eval_memory,
           "bits_at_length_eval_memory": gen_big, "log": log}
    print(f"[{kind}] done: converged_at={converged_at}, held-out 1-20 {heldout:.3f}, {gen} (N trained), "
          f"{gen_big} (N={args.eval_memory}), {out['sequences_per_s']:.1f} seq/s", flush=True)
    return out


def markdown(payload) -> str:
    rows = payload["runs"]
    lines = ["# Copy task: NTM and DNC (clmem cores)", "",
             "Bits-per-sequence error; convergence = the mean over the last 100 training sequences at lengths 1–20 "
             "below 0.1 (then training continues for the confirm window to check it stays below). "
             f"Host: {payload['environment']['host']} (2 shared cores), torch threads 1.", "",
             "| model | config | batch | optimiser | sequences to < 1 bit | sequences to < 0.1 bit | stayed < 0.1 "
             "(max last-100 over confirm window; share of updates < 0.1) | below 0.1 for good from | trained sequences (s) | held-out bits, L 1–20 | bits L=40 "
             "| bits L=80 | bits L=40 / 80 with larger N | sequences/s (wall) | sequences per CPU-second |",
             "|" + "---|" * 15]
    for r in rows:
        c = r["config"]
        cfg = (f"LSTM {c['hidden_size']}, N={c['memory_size']}, W={c['word_size']}, R={c['num_reads']}"
               + (f", init {r['ntm_init']}" if r["ntm_init"] else ""))
        conv = (str(r["converged_at"]) if r["converged_at"] is not None
                else f"not converged within {r['sequences_trained']}")
        stayed = ("—" if r["converged_at"] is None else
                  f"{'yes' if r['stayed_below_0.1'] else 'no'} ({r['max_last100_after_convergence']:.3f} over the "
                  f"{r['sequences_trained'] - r['converged_at']} sequences after"
                  + (f"; {100 * r['fraction_of_confirm_updates_below_0.1']:.0f}%)"
                     if r.get("fraction_of_confirm_updates_below_0.1") is not None else ")"))
        good = r.get("below_0.1_for_good_from") or "—"
        big = r["bits_at_length_eval_memory"]
        lines.append(f"| {r['model'].upper()} | {cfg} | {r['batch']} | {r['optimizer']} lr {r['lr']}, clip "
                     f"{r['clip']} | {r['first_below_1_bit_at'] or '—'} | {conv} | {stayed} | {good} | {r['sequences_trained']} "
                     f"({r['train_seconds']:.0f}) | {r['heldout_bits_1_20']:.3f} | {r['bits_at_length']['40']:.2f} | "
                     f"{r['bits_at_length']['80']:.2f} | {big['40']:.2f} / {big['80']:.2f} (N={r['eval_memory_size']}) "
                     f"| {r['sequences_per_s']:.1f} | {r['sequences_trained'] / r['train_cpu_seconds']:.1f} |")
    lines += ["", f"Peer reference ({PEER['name']}, from the issue): {PEER['sequences_to_1_bit'][0]:,}–"
              f"{PEER['sequences_to_1_bit'][1]:,} sequences to a cost under 1 bit, ~{PEER['sequences_per_s']} "
              "sequences/s on this machine. Wall-clock throughput depends on the load from other jobs on the 2 shared "
              "cores; sequences per CPU-second of the (single-threaded) training process is the load-independent "
              "figure (training loop incl. data generation; evaluation excluded).", "", "Targets per model:"]
    for r in rows:
        conv = r["converged_at"]
        t1 = conv is not None and conv < PEER["sequences_to_1_bit"][0]
        t2 = r["sequences_per_s"] >= 3 * PEER["sequences_per_s"]
        t2cpu = r["sequences_trained"] / r["train_cpu_seconds"] >= 3 * PEER["sequences_per_s"]
        t3 = r["bits_at_length"]["40"] < 1.0
        lines.append(f"- {r['model'].upper()}: converges (< 0.1 bit) in fewer than {PEER['sequences_to_1_bit'][0]:,} "
                     f"sequences: {'met' if t1 else 'NOT met'}; ≥ {3 * PEER['sequences_per_s']} sequences/s: "
                     f"{'met' if t2 else 'NOT met'} by wall clock, {'met' if t2cpu else 'NOT met'} per CPU-second; "
                     f"< 1 bit at length 40: {'met' if t3 else 'NOT met'} with the trained "
                     f"N={r['config']['memory_size']}, {'met' if r['bits_at_length_eval_memory']['40'] < 1.0 else 'NOT met'}"
                     f" with N={r['eval_memory_size']} (same weights).")
    if payload.get("note"):
        lines += ["", payload["note"]]
    return "\n".join(lines) + "\n"


def ntm_options(args) -> Dict[str, str]:
    """The NTM's initial-state options from the command line."""
    return {"memory_init": args.memory_init, "weight_init": args.weight_init}


def write(name: str, payload: Dict[str, object]) -> None:
    H.write_results(name, payload, markdown(payload))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["ntm", "dnc"], choices=sorted(MODELS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--optimizer", choices=["adam", "rmsprop"], default="adam")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--clip", type=float, default=10.0)
    p.add_argument("--no-curriculum", action="store_true")
    p.add_argument("--curriculum-start", type=int, default=4)
    p.add_argument("--curriculum-step", type=int, default=2)
    p.add_argument("--curriculum-threshold", type=float, default=1.0, help="mean bits per sequence to grow L")
    p.add_argument("--curriculum-window", type=int, default=10)
    p.add_argument("--memory-init", choices=MEMORY_INITS, default="constant", help="NTM initial memory")
    p.add_argument("--weight-init", choices=WEIGHT_INITS, default="onehot", help="NTM initial head weights")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="stability mode: one run per seed")
    p.add_argument("--extra-sequences", type=int, default=5000,
                   help="stability mode: sequences trained after first < 0.1 bit")
    p.add_argument("--task", choices=["copy", "repeat_copy", "associative_recall"], default="copy",
                   help="stability mode only")
    p.add_argument("--lr-after-convergence", type=float, default=1.0,
                   help="stability mode: multiply the learning rate by this once the run is first < 0.1 bit")
    p.add_argument("--spike-factor", type=float, default=None,
                   help="stability mode: gradient-spike guard factor (strategies.sequence.GradSpikeGuard; off)")
    p.add_argument("--spike-decay", type=float, default=0.99, help="stability mode: the guard's running-average decay")
    p.add_argument("--eval-every", type=int, default=500, help="stability mode: held-out scoring interval")
    p.add_argument("--curve-every", type=int, default=200, help="stability mode: learning-curve interval")
    p.add_argument("--merge-parts", nargs="+", default=[], help="stability mode: part names merged after each run")
    p.add_argument("--merge-name", default="copy_stability")
    p.add_argument("--resume", action="store_true", help="stability mode: skip (model, seed) runs already in --tag")
    p.add_argument("--confirm", type=int, default=1000, help="sequences trained after convergence to check it")
    p.add_argument("--max-seconds", type=float, default=900.0, help="training-time budget per model")
    p.add_argument("--max-sequences", type=int, default=500_000)
    p.add_argument("--eval-count", type=int, default=200)
    p.add_argument("--eval-memory", type=int, default=160)
    p.add_argument("--memory-size", type=int, default=0, help="memory slots N for training (0: the model's default)")
    p.add_argument("--quick", action="store_true", help="smoke run: 30 s per model")
    p.add_argument("--tag", default=None)
    p.add_argument("--merge", nargs="+", default=None)
    p.add_argument("--note", default="")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.merge:
        parts = [json.loads((RESULTS / f"copy_ntm_dnc_{t}.json").read_text()) for t in args.merge]
        payload = {"runs": [r for part in parts for r in part["runs"]], "environment": H.environment(),
                   "merged_from": args.merge, "peer": PEER, "note": args.note}
        write("copy_ntm_dnc", payload)
        return
    if args.seeds is None and args.merge_parts:  # stability mode, merge only
        _stability.merge_parts(args.merge_parts, args)
        return
    if args.seeds is not None:
        _stability.run_seeds(lambda kind, task: Model(kind, ntm_options(args), args.memory_size, task.input_size,
                                                      task.output_size), args)
        return
    if args.quick:
        args.max_seconds, args.eval_count, args.confirm = 30.0, 50, 200
    name = "copy_ntm_dnc" + (f"_{args.tag}" if args.tag else "") + ("_quick" if args.quick else "")
    runs = []
    for kind in args.models:
        runs.append(run_model(kind, args))
        write(name, {"runs": runs, "environment": H.environment(), "args": vars(args), "peer": PEER,
                     "note": args.note})


if __name__ == "__main__":
    main()
