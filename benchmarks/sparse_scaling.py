"""Scaling of clmem's ``SparseDNCCore`` (SAM, K = 4) with the number of memory slots N.

Same copy configuration as ``dnc_throughput.py`` (input 10, LSTM 64, W = 32, R = 4, 1 write head, batch 16,
length 20, 42 steps), N in {1024, 16384, 65536}; forward + backward + Adam step. Every N runs in its own process
(peak memory as in ``_harness``), for two memory regimes:

* ``fresh``: default config, a zero memory per batch (``initial_state``); never-written rows are implicit in the
  FAISS index, so the index holds only the <= 42 * 17 rows a sequence writes;
* ``persistent``: every slot holds a random row (all N rows indexed, so the k-NN search really runs over N rows)
  and the state is carried from batch to batch with ``detach_state`` (truncated BPTT over one batch), as when a
  memory persists across an experience; building that memory (once) is not timed.

Targets: >= 20 sequences/s at N = 65,536 and time per sequence at 65,536 <= 3x that at 1,024.

Usage: ``python benchmarks/sparse_scaling.py [--quick] [--sizes 1024 16384 65536] [--tag T]``
writes ``benchmarks/results/sparse_scaling[_T].{json,md}`` (a tag keeps another host's results apart).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as H  # noqa: E402

HIDDEN, WORD, READS, K = 64, 32, 4, 4
TARGET_SEQ_PER_S, TARGET_RATIO = 20.0, 3.0
VARIANTS = ("fresh", "persistent")  # zero memory per batch; prefilled memory carried across batches


def build_for(spec: Dict[str, Any]) -> Callable[[], Any]:
    import torch

    from clmem.memory.sparse import SparseDNCCore

    def build():
        model = SparseDNCCore(input_size=H.INPUT_SIZE, output_size=H.INPUT_SIZE, hidden_size=HIDDEN,
                              controller="lstm", memory_size=spec["N"], word_size=WORD, num_reads=READS,
                              num_writes=1, k_neighbours=K)
        spec["nlist"] = model.memory.config.resolved_nlist
        spec["nprobe"] = model.memory.config.nprobe
        if spec["memory"] == "fresh":
            return model, lambda x: model(x)[0]
        memory0 = torch.randn(H.BATCH, spec["N"], WORD, generator=torch.Generator().manual_seed(1))
        carried = [model.initial_state(H.BATCH)._replace(
            memory_state=model.memory.initial_state(H.BATCH, memory=memory0))]

        def forward(x):
            y, state = model(x, carried[0])
            carried[0] = model.detach_state(state)
            return y

        return model, forward

    return build


def _verdict(kind: str, clock: str, seq_per_s: float, ratio: float) -> str:
    met = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    return (f"- {kind} memory, {clock}: {seq_per_s:.1f} seq/s at N=65,536 (target >= {TARGET_SEQ_PER_S:.0f}: "
            f"{met(seq_per_s >= TARGET_SEQ_PER_S)}); time ratio 65,536 / 1,024 = {ratio:.2f}x "
            f"(target <= {TARGET_RATIO:.0f}x: {met(ratio <= TARGET_RATIO)})")


def markdown(records: List[Dict[str, Any]], sizes: List[int], env: Dict[str, Any]) -> str:
    lines = ["# SparseDNCCore scaling with memory size (K = 4)", "",
             f"Host: {env.get('cpu', '?')}, {env.get('cpus', '?')} CPUs, torch {env.get('torch', '?')}; "
             f"finished {env.get('date', '?')}.", "",
             f"Copy task, input 10, LSTM 64, W={WORD}, R={READS}, 1 write head, batch {H.BATCH}, {H.STEPS} steps; "
             "forward + backward + Adam; one process per row. Wall: from the median wall-clock iteration time; "
             "CPU: from the median CPU time of the process (robust to other load on a shared machine). "
             "nlist = 1 is exact k-NN, otherwise FAISS IVF with `nprobe` lists scanned. "
             "Peak = peak RSS minus RSS after imports (MiB).", "",
             "| memory | N | nlist / nprobe | seq/s (wall) | ms / seq (wall) | ratio vs 1,024 (wall) | seq/s (CPU) "
             "| ms / seq (CPU) | ratio vs 1,024 (CPU) | peak MiB | iterations |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    verdicts = []
    for kind in VARIANTS:
        rows = {r["N"]: r for r in records if r["memory"] == kind and "error" not in r}
        ref = rows.get(1024)
        for n in sizes:
            r = rows.get(n)
            if r is None:
                lines.append(f"| {kind} | {n:,} | — | — | — | — | — | — | — | — | error |")
                continue
            wall, cpu = 1e3 / r["sequences_per_second"], 1e3 / r["sequences_per_cpu_second"]
            rw = None if ref is None else wall * ref["sequences_per_second"] / 1e3
            rc = None if ref is None else cpu * ref["sequences_per_cpu_second"] / 1e3
            lines.append(f"| {kind} | {n:,} | {r['nlist']} / {r['nprobe']} | {r['sequences_per_second']:.1f} "
                         f"| {wall:.1f} | {H.fmt(rw)} | {r['sequences_per_cpu_second']:.1f} | {cpu:.1f} "
                         f"| {H.fmt(rc)} | {r['peak_minus_baseline_mib']:.0f} | {r['iterations']} |")
        big = rows.get(65536)
        if big is not None and ref is not None:
            verdicts.append(_verdict(kind, "wall", big["sequences_per_second"],
                                     ref["sequences_per_second"] / big["sequences_per_second"]))
            verdicts.append(_verdict(kind, "CPU", big["sequences_per_cpu_second"],
                                     ref["sequences_per_cpu_second"] / big["sequences_per_cpu_second"]))
    return "\n".join(lines + [""] + verdicts) + "\n"


def main() -> None:
    if H.child_main(build_for):
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="two timed iterations per configuration")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 16384, 65536])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tag", default=None, help="write results/sparse_scaling_<tag>.{json,md} (e.g. another host)")
    args = parser.parse_args()
    records = []
    for kind in VARIANTS:
        for n in args.sizes:
            iters = (2, 2) if args.quick else (5, 40)
            spec = {"impl": "clmem-sparse", "N": n, "memory": kind, "threads": args.threads,
                    "min_iters": iters[0], "max_iters": iters[1], "budget_s": 4.0 if args.quick else 20.0}
            record = H.run_child(sys.executable, __file__, spec, timeout_s=300)
            print(record, flush=True)
            records.append(record)
    env = H.environment()
    H.write_results("sparse_scaling" + (f"_{args.tag}" if args.tag else ""), {"environment": env, "records": records},
                    markdown(records, args.sizes, env))


if __name__ == "__main__":
    main()
