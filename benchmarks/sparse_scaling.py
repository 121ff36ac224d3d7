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

Usage: ``python benchmarks/sparse_scaling.py [--quick] [--sizes 1024 16384 65536]``
writes ``benchmarks/results/sparse_scaling.{json,md}``.
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


def markdown(records: List[Dict[str, Any]], sizes: List[int]) -> str:
    lines = ["# SparseDNCCore scaling with memory size (K = 4)", "",
             f"Copy task, input 10, LSTM 64, W={WORD}, R={READS}, 1 write head, batch {H.BATCH}, {H.STEPS} steps; "
             "forward + backward + Adam; one process per row; throughput from the median iteration time. "
             "nlist = 1 is exact k-NN, otherwise FAISS IVF with "
             "`nprobe` lists scanned. Peak memory = peak RSS minus RSS after imports.", "",
             "| memory | N | nlist / nprobe | seq/s | ms / sequence | time ratio vs N=1024 | peak MiB | iterations |",
             "|---|---|---|---|---|---|---|---|"]
    verdicts = []
    for kind in VARIANTS:
        rows = {r["N"]: r for r in records if r["memory"] == kind}
        ref = rows.get(1024, {}).get("seconds_per_sequence")
        for n in sizes:
            r = rows.get(n, {})
            sps, sec = r.get("sequences_per_second"), r.get("seconds_per_sequence")
            ratio = None if ref is None or sec is None else sec / ref
            lines.append(f"| {kind} | {n:,} | {r.get('nlist', '—')} / "
                         f"{r.get('nprobe', '—')} | {H.fmt(sps)} | {H.fmt(None if sec is None else 1e3 * sec, 1)} "
                         f"| {H.fmt(ratio)} | {H.fmt(r.get('peak_minus_baseline_mib'), 0)} "
                         f"| {r.get('iterations', r.get('error', '—'))} |")
        big = rows.get(65536, {})
        if "sequences_per_second" in big and ref is not None:
            ratio = big["seconds_per_sequence"] / ref
            verdicts.append(f"- {kind} memory: {big['sequences_per_second']:.1f} "
                            f"seq/s at N=65,536 (target >= {TARGET_SEQ_PER_S:.0f}: "
                            f"{'met' if big['sequences_per_second'] >= TARGET_SEQ_PER_S else 'NOT met'}); "
                            f"time ratio 65,536 / 1,024 = {ratio:.2f}x (target <= {TARGET_RATIO:.0f}x: "
                            f"{'met' if ratio <= TARGET_RATIO else 'NOT met'})")
    return "\n".join(lines + [""] + verdicts) + "\n"


def main() -> None:
    if H.child_main(build_for):
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="two timed iterations per configuration")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 16384, 65536])
    parser.add_argument("--threads", type=int, default=1)
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
    H.write_results("sparse_scaling", {"environment": H.environment(), "records": records},
                    markdown(records, args.sizes))


if __name__ == "__main__":
    main()
