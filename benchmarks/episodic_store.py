"""Benchmark: EpisodicStore and ShardedEpisodicStore (local, Ray) against bare FAISS.

For every index type the same random vectors (float32, N(0, 1)) are inserted in batches and the
same queries are searched (k nearest, same metric) by: bare FAISS on the same index type, the
store (embeddings only, then with a label payload per item), and the sharded store with 2 and 4
shards (in-process and Ray actors).  Every variant is built ``--repeats`` times, variants
interleaved within each repeat so that they see the same machine load; the best insert time and
the best query time of each are kept.  FAISS runs ``--threads`` OpenMP threads in this process
(Ray shard actors run single-threaded).  Reports insert and query throughput, the ratio of each
to bare FAISS, and the fraction of the top-k ids that equal bare FAISS's (1.0 expected for flat).

    python benchmarks/episodic_store.py                  # 1,000,000 x 128 (HNSW: --hnsw-n)
    python benchmarks/episodic_store.py --quick          # 20,000 x 128, a smoke run
Writes benchmarks/results/episodic_store.json and .md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import faiss
import numpy as np
import torch

from clmem.episodic import EpisodicStore, EpisodicStoreConfig
from clmem.episodic.sharded import ShardedEpisodicStore

RESULTS = Path(__file__).resolve().parent / "results"
QUERY_REPEATS = 2  # searches per build at least; the reported query time is the best over all builds
QUERY_MIN_S, QUERY_MAX_REPEATS = 2.0, 10  # fast searches are repeated until 2 s were spent (at most 10)
TIMES = ("insert_s", "query_s", "insert_cpu_s", "query_cpu_s")


@dataclass(frozen=True)
class BenchConfig:
    """Sizes of one benchmark run."""

    n: int
    dim: int
    queries: int
    k: int
    batch: int
    indexes: tuple[str, ...]
    shards: tuple[int, ...]
    ray: bool
    hnsw_n: int
    nlist: int
    nprobe: int
    repeats: int
    threads: int

    def __post_init__(self) -> None:
        """Validate sizes."""
        for name in ("n", "dim", "queries", "k", "batch", "hnsw_n", "nlist", "nprobe", "repeats", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"BenchConfig.{name}: expected a positive int, got {getattr(self, name)}")
        bad = set(self.indexes) - {"flat", "ivf", "hnsw"}
        if bad:
            raise ValueError(f"BenchConfig.indexes: expected flat/ivf/hnsw, got {sorted(bad)}")


def parse_args() -> BenchConfig:
    """Command line to :class:`BenchConfig`."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--batch", type=int, default=10_000)
    p.add_argument("--index", default="flat,ivf,hnsw")
    p.add_argument("--shards", default="2,4")
    p.add_argument("--no-ray", action="store_true")
    p.add_argument("--hnsw-n", type=int, default=50_000, help="HNSW builds are slow: cap its N")
    p.add_argument("--nlist", type=int, default=0, help="IVF lists (default ~sqrt(n))")
    p.add_argument("--nprobe", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3, help="builds of every variant (best time kept)")
    p.add_argument("--threads", type=int, default=1, help="FAISS OpenMP threads in this process")
    p.add_argument("--quick", action="store_true", help="n=20000, 200 queries")
    a = p.parse_args()
    n, queries = (20_000, 200) if a.quick else (a.n, a.queries)
    nlist = a.nlist or max(16, int(np.sqrt(n)))
    return BenchConfig(n=n, dim=a.dim, queries=queries, k=a.k, batch=a.batch,
                       indexes=tuple(a.index.split(",")), shards=tuple(int(s) for s in a.shards.split(",") if s),
                       ray=not a.no_ray, hnsw_n=min(a.hnsw_n, n), nlist=nlist, nprobe=min(a.nprobe, nlist),
                       repeats=a.repeats, threads=a.threads)


def bare_faiss(index: str, cfg: BenchConfig, n: int) -> tuple[Callable[[np.ndarray], None], Callable[..., Any]]:
    """Bare FAISS index of the given type: (add(batch), search(queries, k)); IVF trains on the first batches."""
    if index == "flat":
        idx = faiss.IndexFlatL2(cfg.dim)
    elif index == "hnsw":
        idx = faiss.IndexHNSWFlat(cfg.dim, 32)
        idx.hnsw.efConstruction, idx.hnsw.efSearch = 40, 64
    else:
        idx = faiss.IndexIVFFlat(faiss.IndexFlatL2(cfg.dim), cfg.dim, cfg.nlist)
        idx.nprobe = cfg.nprobe
        idx.cp.seed = 0  # same k-means seed as the store (EpisodicStoreConfig.seed=0)
    pending: list[np.ndarray] = []
    train_size = 39 * cfg.nlist

    def add(batch: np.ndarray) -> None:
        """Add (IVF: buffer until train_size vectors exist, train, then add)."""
        if index != "ivf" or idx.is_trained:
            idx.add(batch)
            return
        pending.append(batch)
        if sum(len(b) for b in pending) >= min(train_size, n):
            held = np.concatenate(pending)
            idx.train(held)
            idx.add(held)
            pending.clear()

    def search(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Flush a never-trained IVF buffer, then search."""
        if pending:
            held = np.concatenate(pending)
            idx.train(held)
            idx.add(held)
            pending.clear()
        return idx.search(queries, k)

    return add, search


def store_config(index: str, cfg: BenchConfig, n: int) -> EpisodicStoreConfig:
    """Store configuration matching :func:`bare_faiss`."""
    return EpisodicStoreConfig(dim=cfg.dim, capacity=n, index=index, metric="l2", nlist=cfg.nlist,
                               nprobe=cfg.nprobe, hnsw_m=32, hnsw_ef_search=64, hnsw_ef_construction=40)


def make_variant(variant: str, index: str, cfg: BenchConfig, n: int, kept: list) -> tuple[Callable, Callable, Callable]:
    """(add(data, lo, hi), search, close) of one variant: 'faiss', 'store', 'store+labels', 'local-S' or 'ray-S'.

    Store variants append the ids each ``add`` returns to ``kept`` (bare FAISS ids are row numbers).
    """
    if variant == "faiss":
        add, search = bare_faiss(index, cfg, n)
        return (lambda data, lo, hi: add(data[lo:hi])), search, lambda: None
    config = store_config(index, cfg, n)
    if variant.startswith("store"):
        store: Any = EpisodicStore(config)
    else:
        backend, shards = variant.split("-")
        store = ShardedEpisodicStore(config, num_shards=int(shards), backend=backend)
    close = (lambda: store.close(kill=True)) if variant.startswith("ray") else (lambda: None)
    if variant == "store+labels":
        def insert(data: np.ndarray, lo: int, hi: int) -> None:
            kept.append(store.add(data[lo:hi], labels=np.arange(lo, hi)))
    else:
        def insert(data: np.ndarray, lo: int, hi: int) -> None:
            kept.append(store.add(data[lo:hi]))
    return insert, (lambda q, k: tuple(t.numpy() for t in store.search(q, k))), close


def as_rows(ids: np.ndarray, kept: list) -> np.ndarray:
    """Search ids mapped to the row numbers of the inserted data (``kept``: ids returned by each add)."""
    if not kept:
        return ids
    gids = np.concatenate([t.numpy() for t in kept])
    row_of = np.full(int(gids.max()) + 1, -1, dtype=np.int64)
    row_of[gids[gids >= 0]] = np.flatnonzero(gids >= 0)
    return np.where(ids >= 0, row_of[np.maximum(ids, 0)], -1)


def run_variant(variant: str, index: str, cfg: BenchConfig, data: np.ndarray, queries: np.ndarray) -> dict[str, Any]:
    """Build one variant: time inserting ``data`` batch by batch, then the best of a few searches of ``queries``."""
    n = len(data)
    kept: list = []
    add, search, close = make_variant(variant, index, cfg, n, kept)
    start, cpu = time.perf_counter(), time.process_time()
    for lo in range(0, n, cfg.batch):
        add(data, lo, min(lo + cfg.batch, n))
    insert_s, insert_cpu_s = time.perf_counter() - start, time.process_time() - cpu
    search(queries[:2], cfg.k)  # warm-up (IVF flush, GPU clone, Ray paths)
    query_s = query_cpu_s = float("inf")
    spent, searches = 0.0, 0
    while searches < QUERY_REPEATS or (spent < QUERY_MIN_S and searches < QUERY_MAX_REPEATS):
        start, cpu = time.perf_counter(), time.process_time()
        _, ids = search(queries, cfg.k)
        elapsed = time.perf_counter() - start
        query_s, query_cpu_s = min(query_s, elapsed), min(query_cpu_s, time.process_time() - cpu)
        spent, searches = spent + elapsed, searches + 1
    close()
    return {"index": index, "variant": variant, "n": n, "insert_s": insert_s, "query_s": query_s,
            "insert_cpu_s": insert_cpu_s, "query_cpu_s": query_cpu_s, "ids": as_rows(ids, kept)}


def bench_index(index: str, cfg: BenchConfig, data: np.ndarray, queries: np.ndarray) -> list[dict[str, Any]]:
    """All variants for one index type, ``cfg.repeats`` interleaved builds each; ratios relative to bare FAISS."""
    n = cfg.hnsw_n if index == "hnsw" else cfg.n
    variants = ["faiss", "store", "store+labels"] + [f"local-{s}" for s in cfg.shards]
    variants += [f"ray-{s}" for s in cfg.shards] if cfg.ray else []
    best: dict[str, dict[str, Any]] = {}
    for rep in range(cfg.repeats):
        for variant in variants:
            row = run_variant(variant, index, cfg, data[:n], queries)
            print(f"{index:5s} {variant:12s} build {rep + 1}/{cfg.repeats} n={n:>9,d} insert {row['insert_s']:8.2f} s "
                  f"(cpu {row['insert_cpu_s']:7.2f}) query {row['query_s']:8.3f} s (cpu {row['query_cpu_s']:7.3f})",
                  flush=True)
            kept = best.setdefault(variant, {**row, **{f"{key}_runs": [] for key in TIMES}})
            for key in TIMES:
                kept[f"{key}_runs"].append(row[key])
                kept[key] = min(kept[f"{key}_runs"])
            gc.collect()
    rows = [best[v] for v in variants]
    _, exact = faiss.knn(queries, data[:n], cfg.k)  # ground truth for recall
    for row in rows:
        row["insert_per_s"], row["queries_per_s"] = n / row["insert_s"], len(queries) / row["query_s"]
        row["recall_at_k"] = float(np.mean([len(set(a) & set(b)) / cfg.k for a, b in zip(row["ids"], exact)]))
        row["insert_time_ratio"] = row["insert_s"] / rows[0]["insert_s"]
        row["query_time_ratio"] = row["query_s"] / rows[0]["query_s"]
        in_process = not row["variant"].startswith("ray")  # Ray actors' CPU time is not this process's
        for key in ("insert", "query"):
            ratio = row[f"{key}_cpu_s"] / rows[0][f"{key}_cpu_s"]
            row[f"{key}_cpu_ratio"] = ratio if in_process else None
        row["topk_agreement"] = float(np.mean([len(set(a) & set(b)) / cfg.k for a, b in zip(row["ids"], rows[0]["ids"])]))
    for row in rows:
        del row["ids"]
    return rows


NOTES = [
    "What the store does per insert batch that bare FAISS does not: validate and convert the batch, run the "
    "insertion policy (reservoir: free-slot lookup, or random replacement draws once full), write the payload "
    "arrays (experience ids always; labels in the `store+labels` rows) and the occupancy mask, keep the "
    "position<->slot maps (flat, HNSW) or FAISS ids = slots (IVF, with a hash-table direct map so that slots "
    "can be replaced, removed and read back); per search: validate the queries, map FAISS positions to slots "
    "and pad missing hits. The FAISS index holds the only copy of each embedding (`get` reads it back).",
    "Bare FAISS: `IndexFlatL2`, `IndexIVFFlat` (trained on the first 39*nlist vectors, k-means seed 0, as the "
    "store does) and `IndexHNSWFlat` (M=32, efConstruction=40) with plain `add`; same data, batches, queries, "
    "k and metric (squared L2) as the store.",
    "Sharded rows: each shard is a full store over its slice of every batch; searches fan out and the per-shard "
    "top-k lists are merged (exact for flat). Sharded IVF/HNSW train/build one index per shard, so their "
    "results differ from one index (agreement < 1) and their recall can be higher. Ray shard actors run "
    "single-threaded FAISS in their own processes (2 or 4 processes on this machine's cores), so Ray rows are "
    "not a like-for-like CPU comparison with the in-process rows. A batch is split into one contiguous slice "
    "per shard (no per-item gather); the merge of the S per-shard top-k lists (a row-wise lexsort of S*k "
    "candidates) took 3-10 ms for 1,000 queries, k=10, S=2-4, well under 1% of a flat or IVF search here. "
    "Sharded HNSW searches S graphs with the full efSearch each, so its query time grows with S by design.",
]


def _ratio(value: float | None) -> str:
    """A ratio for the table ("–" where none applies)."""
    return "–" if value is None else f"{value:.2f}"


def write_reports(cfg: BenchConfig, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """Write the JSON and Markdown reports."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "episodic_store.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    lines = [
        "# Episodic store benchmark", "",
        f"{cfg.n:,} x {cfg.dim} float32 vectors (HNSW: {cfg.hnsw_n:,}), inserted in batches of {cfg.batch:,}; "
        f"{cfg.queries:,} queries, k={cfg.k}; IVF nlist={cfg.nlist}, nprobe={cfg.nprobe}; HNSW M=32, efSearch=64. "
        f"FAISS threads in-process: {cfg.threads}. Machine: {meta['cpus']} CPUs shared with other jobs (load "
        f"average {meta['load_start']:.1f} at the start, {meta['load_end']:.1f} at the end), faiss {meta['faiss']}, "
        f"{meta['date']}.", "",
        f"Every variant was built {cfg.repeats} times (variants interleaved within each round); insert = best "
        f"build time (IVF: includes training once 39*nlist vectors are held), query = best of {QUERY_REPEATS} "
        f"to {QUERY_MAX_REPEATS} searches per build (repeated until {QUERY_MIN_S:.0f} s were spent) over all builds (all times in the JSON). Time ratio = variant time / bare FAISS "
        "time (1.10 = 10% overhead); CPU ratio = the same with this process's CPU time (less sensitive to other "
        "jobs taking the cores; not given for Ray rows, whose work runs in other processes). Agreement = fraction of top-k ids equal to bare FAISS's; recall = vs exact "
        "search.", "",
        "| index | variant | N | insert/s | insert time ratio | insert CPU ratio | queries/s | query time ratio "
        "| query CPU ratio | top-k agreement | recall@k |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['index']} | {r['variant']} | {r['n']:,} | {r['insert_per_s']:,.0f} | "
                     f"{r['insert_time_ratio']:.2f} | {_ratio(r['insert_cpu_ratio'])} | {r['queries_per_s']:,.1f} | "
                     f"{r['query_time_ratio']:.2f} | {_ratio(r['query_cpu_ratio'])} | "
                     f"{r['topk_agreement']:.3f} | {r['recall_at_k']:.3f} |")
    lines += ["", "## Notes", ""] + [f"- {note}" for note in NOTES]
    (RESULTS / "episodic_store.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    """Run every index type and variant, then write the reports."""
    cfg = parse_args()
    faiss.omp_set_num_threads(cfg.threads)
    if cfg.ray:
        import ray

        ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False,
                 object_store_memory=2 * 1024**3)
    load_start = os.getloadavg()[0]
    rng = np.random.default_rng(0)
    data = rng.standard_normal((cfg.n, cfg.dim), dtype=np.float32)
    queries = rng.standard_normal((cfg.queries, cfg.dim), dtype=np.float32)
    rows = [row for index in cfg.indexes for row in bench_index(index, cfg, data, queries)]
    meta = {"config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items()},
            "cpus": os.cpu_count(), "faiss": faiss.__version__, "torch": torch.__version__,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M"),
            "load_start": load_start, "load_end": os.getloadavg()[0]}
    write_reports(cfg, rows, meta)
    print((RESULTS / "episodic_store.md").read_text())


if __name__ == "__main__":
    main()
