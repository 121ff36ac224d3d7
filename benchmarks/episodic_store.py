"""Benchmark: EpisodicStore and ShardedEpisodicStore (local, Ray) against bare FAISS.

For every index type the same random vectors (float32, N(0, 1)) are inserted in batches and the
same queries are searched (k nearest) by: bare FAISS on the same index type, the store, and the
sharded store with 2 and 4 shards (in-process and Ray actors).  Embeddings only (no payloads).
Reports insert and query throughput, the ratio of each to bare FAISS, and the fraction of the
store's top-k ids that equal bare FAISS's (1.0 expected for flat).

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
QUERY_REPEATS = 3


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

    def __post_init__(self) -> None:
        """Validate sizes."""
        for name in ("n", "dim", "queries", "k", "batch", "hnsw_n", "nlist", "nprobe"):
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
    p.add_argument("--hnsw-n", type=int, default=100_000, help="HNSW builds are slow: cap its N")
    p.add_argument("--nlist", type=int, default=0, help="IVF lists (default ~sqrt(n))")
    p.add_argument("--nprobe", type=int, default=16)
    p.add_argument("--quick", action="store_true", help="n=20000, 200 queries")
    a = p.parse_args()
    n, queries = (20_000, 200) if a.quick else (a.n, a.queries)
    nlist = a.nlist or max(16, int(np.sqrt(n)))
    return BenchConfig(n=n, dim=a.dim, queries=queries, k=a.k, batch=a.batch,
                       indexes=tuple(a.index.split(",")), shards=tuple(int(s) for s in a.shards.split(",") if s),
                       ray=not a.no_ray, hnsw_n=min(a.hnsw_n, n), nlist=nlist, nprobe=min(a.nprobe, nlist))


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


def make_variant(variant: str, index: str, cfg: BenchConfig, n: int) -> tuple[Callable, Callable, Callable]:
    """(add, search, close) of one variant: 'faiss', 'store', 'local-S' or 'ray-S'."""
    if variant == "faiss":
        add, search = bare_faiss(index, cfg, n)
        return add, search, lambda: None
    config = store_config(index, cfg, n)
    if variant == "store":
        store: Any = EpisodicStore(config)
    else:
        backend, shards = variant.split("-")
        store = ShardedEpisodicStore(config, num_shards=int(shards), backend=backend)
    close = (lambda: store.close(kill=True)) if variant.startswith("ray") else (lambda: None)
    return (lambda b: store.add(b)), (lambda q, k: tuple(t.numpy() for t in store.search(q, k))), close


def run_variant(variant: str, index: str, cfg: BenchConfig, data: np.ndarray, queries: np.ndarray) -> dict[str, Any]:
    """Time inserting ``data`` batch by batch, then one search of all ``queries``."""
    n = len(data)
    add, search, close = make_variant(variant, index, cfg, n)
    start = time.perf_counter()
    for lo in range(0, n, cfg.batch):
        add(data[lo:lo + cfg.batch])
    insert_s = time.perf_counter() - start
    search(queries[:2], cfg.k)  # warm-up (IVF flush, GPU clone, Ray paths)
    query_s = float("inf")
    for _ in range(QUERY_REPEATS):  # best of a few: the machine is shared
        start = time.perf_counter()
        _, ids = search(queries, cfg.k)
        query_s = min(query_s, time.perf_counter() - start)
    close()
    return {"index": index, "variant": variant, "n": n, "insert_s": insert_s, "insert_per_s": n / insert_s,
            "query_s": query_s, "queries_per_s": len(queries) / query_s, "ids": ids}


def bench_index(index: str, cfg: BenchConfig, data: np.ndarray, queries: np.ndarray) -> list[dict[str, Any]]:
    """All variants for one index type; ratios and id agreement relative to bare FAISS."""
    n = cfg.hnsw_n if index == "hnsw" else cfg.n
    variants = ["faiss", "store"] + [f"local-{s}" for s in cfg.shards] + ([f"ray-{s}" for s in cfg.shards] if cfg.ray else [])
    rows = []
    for variant in variants:
        row = run_variant(variant, index, cfg, data[:n], queries)
        print(f"{index:5s} {variant:8s} n={n:>9,d} insert {row['insert_per_s']:>12,.0f}/s "
              f"query {row['queries_per_s']:>10,.1f}/s", flush=True)
        rows.append(row)
        gc.collect()
    base = rows[0]
    _, exact = faiss.knn(queries, data[:n], cfg.k)  # ground truth for recall
    for row in rows:
        row["recall_at_k"] = float(np.mean([len(set(a) & set(b)) / cfg.k for a, b in zip(row["ids"], exact)]))
        row["insert_time_ratio"] = row["insert_s"] / base["insert_s"]
        row["query_time_ratio"] = row["query_s"] / base["query_s"]
        row["topk_agreement"] = float(np.mean([len(set(a) & set(b)) / cfg.k for a, b in zip(row["ids"], base["ids"])]))
    for row in rows:
        del row["ids"]
    return rows


def write_reports(cfg: BenchConfig, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """Write the JSON and Markdown reports."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "episodic_store.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    lines = [
        "# Episodic store benchmark", "",
        f"{cfg.n:,} x {cfg.dim} float32 vectors (HNSW: {cfg.hnsw_n:,}), inserted in batches of {cfg.batch:,}; "
        f"{cfg.queries:,} queries, k={cfg.k}; IVF nlist={cfg.nlist}, nprobe={cfg.nprobe}; HNSW M=32, efSearch=64. "
        f"Machine: {meta['cpus']} CPUs (shared), faiss {meta['faiss']}, {meta['date']}.", "",
        "Inserts timed once (IVF: includes training once 39*nlist vectors are held); queries: best of "
        f"{QUERY_REPEATS}. Time ratio = variant time / bare FAISS time (1.10 = 10% overhead). "
        "Agreement = fraction of top-k ids equal to bare FAISS's; recall = vs exact search.", "",
        "| index | variant | N | insert/s | insert time ratio | queries/s | query time ratio | top-k agreement | recall@k |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['index']} | {r['variant']} | {r['n']:,} | {r['insert_per_s']:,.0f} | "
                     f"{r['insert_time_ratio']:.2f} | {r['queries_per_s']:,.1f} | {r['query_time_ratio']:.2f} | "
                     f"{r['topk_agreement']:.3f} | {r['recall_at_k']:.3f} |")
    (RESULTS / "episodic_store.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    """Run every index type and variant, then write the reports."""
    cfg = parse_args()
    if cfg.ray:
        import ray

        ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False,
                 object_store_memory=2 * 1024**3)
    rng = np.random.default_rng(0)
    data = rng.standard_normal((cfg.n, cfg.dim), dtype=np.float32)
    queries = rng.standard_normal((cfg.queries, cfg.dim), dtype=np.float32)
    rows = [row for index in cfg.indexes for row in bench_index(index, cfg, data, queries)]
    meta = {"config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items()},
            "cpus": os.cpu_count(), "faiss": faiss.__version__, "torch": torch.__version__,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M")}
    write_reports(cfg, rows, meta)
    print((RESULTS / "episodic_store.md").read_text())


if __name__ == "__main__":
    main()
