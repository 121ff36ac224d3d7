"""FAISS indexes keyed by slot id: the FAISS id of a vector is the store slot that holds its payload.

* ``flat``: ``IndexIDMap(IndexFlat)``; removal with ``remove_ids``.
* ``ivf``: exact ``IndexIDMap(IndexFlat)`` until the store holds ``config.ivf_train_size`` items,
  then an ``IndexIVFFlat`` is trained once (seeded k-means) on everything held and replaces it.
  Searches before that point are exact.  The trained quantizer is kept even if the store shrinks.
* ``hnsw``: ``IndexHNSWFlat`` cannot remove vectors, so removed vectors become tombstones that
  searches skip with an ``IDSelectorBitmap``; the graph is rebuilt from the live vectors when
  tombstones outnumber live vectors.

On ``device="cuda"`` (flat, ivf) the CPU index stays the index of record and a GPU clone serves
searches: additions are mirrored to it, a removal drops it and the next search clones it again.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from clmem.episodic._faiss import import_faiss
from clmem.episodic.config import EpisodicStoreConfig


def _metric(config: EpisodicStoreConfig) -> int:
    """FAISS metric constant for the configured metric."""
    faiss = import_faiss()
    return faiss.METRIC_INNER_PRODUCT if config.metric == "ip" else faiss.METRIC_L2


def _flat(config: EpisodicStoreConfig) -> Any:
    """A bare exact index of the configured metric."""
    faiss = import_faiss()
    return faiss.IndexFlatIP(config.dim) if config.metric == "ip" else faiss.IndexFlatL2(config.dim)


def _to_bytes(index: Any) -> torch.Tensor:
    """Serialise a CPU FAISS index into a uint8 tensor."""
    return torch.from_numpy(import_faiss().serialize_index(index).copy())


def _from_bytes(blob: torch.Tensor) -> Any:
    """Inverse of :func:`_to_bytes`."""
    return import_faiss().deserialize_index(np.ascontiguousarray(blob.numpy()))


def empty_result(n_queries: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """FAISS-shaped result with no hits (distances are fixed up by the store)."""
    return np.zeros((n_queries, k), dtype=np.float32), np.full((n_queries, k), -1, dtype=np.int64)


class IdMapIndex:
    """Exact index whose FAISS ids are slot ids, with an optional GPU search mirror."""

    def __init__(self, config: EpisodicStoreConfig, device: str = "cpu") -> None:
        self.config = config
        self.device = device
        self.cpu = import_faiss().IndexIDMap(_flat(config))
        self._gpu: Any = None
        self._gpu_resources: Any = None

    @property
    def ntotal(self) -> int:
        """Number of vectors held."""
        return int(self.cpu.ntotal)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add ``vectors`` under FAISS ids ``ids`` (mirrored to the GPU clone if there is one)."""
        self.cpu.add_with_ids(vectors, ids)
        if self._gpu is not None:
            self._gpu.add_with_ids(vectors, ids)

    def remove(self, ids: np.ndarray) -> None:
        """Remove the vectors stored under ``ids``; the GPU clone is rebuilt lazily."""
        self.cpu.remove_ids(np.ascontiguousarray(ids, dtype=np.int64))
        self._gpu = None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw FAISS search: ``(distances, ids)`` with ``-1`` where fewer than ``k`` hits exist."""
        if self.ntotal == 0:
            return empty_result(len(queries), k)
        return self._searcher().search(queries, k)

    def _searcher(self) -> Any:
        """The index that answers searches: the CPU index, or its GPU clone on ``cuda``."""
        if self.device != "cuda":
            return self.cpu
        if self._gpu is None:
            faiss = import_faiss()
            if self._gpu_resources is None:
                self._gpu_resources = faiss.StandardGpuResources()
            self._gpu = faiss.index_cpu_to_gpu(self._gpu_resources, 0, self.cpu)
        return self._gpu

    def state(self) -> dict[str, Any]:
        """Checkpointable state."""
        return {"index": _to_bytes(self.cpu)}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state`."""
        self.cpu = _from_bytes(state["index"])
        self._gpu = None


class IvfIndex(IdMapIndex):
    """IVFFlat index that searches exactly until it has been trained (see module docstring)."""

    def __init__(self, config: EpisodicStoreConfig, device: str = "cpu") -> None:
        super().__init__(config, device)
        self.trained = False

    def needs_training(self, n_live: int) -> bool:
        """True once the store holds enough items to train the coarse quantizer."""
        return not self.trained and n_live >= self.config.ivf_train_size

    def train(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Train an ``IndexIVFFlat`` on ``vectors`` (all items held), fill it and switch to it."""
        faiss = import_faiss()
        cfg = self.config
        ivf = faiss.IndexIVFFlat(_flat(cfg), cfg.dim, cfg.nlist, _metric(cfg))
        ivf.cp.seed = cfg.seed
        ivf.train(vectors)
        ivf.nprobe = cfg.nprobe
        ivf.add_with_ids(vectors, ids)
        self.cpu = ivf
        self.trained = True
        self._gpu = None

    def state(self) -> dict[str, Any]:
        """Checkpointable state."""
        return {"index": _to_bytes(self.cpu), "trained": self.trained}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state`."""
        super().load_state(state)
        self.trained = bool(state["trained"])


class HnswIndex:
    """HNSW index over slot ids with tombstoned removal (see module docstring)."""

    def __init__(self, config: EpisodicStoreConfig, device: str = "cpu") -> None:
        self.config = config
        self.device = "cpu"
        self._reset()

    def _reset(self) -> None:
        """Start from an empty graph."""
        cfg = self.config
        self.index = import_faiss().IndexHNSWFlat(cfg.dim, cfg.hnsw_m, _metric(cfg))
        self.index.hnsw.efConstruction = cfg.hnsw_ef_construction
        self.index.hnsw.efSearch = cfg.hnsw_ef_search
        self._pos_slot = np.full(16, -1, dtype=np.int64)
        self._slot_pos = np.full(cfg.capacity, -1, dtype=np.int64)
        self.stale = 0

    @property
    def ntotal(self) -> int:
        """Number of live (non-tombstoned) vectors."""
        return int(self.index.ntotal) - self.stale

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Append ``vectors`` to the graph under slot ids ``ids``."""
        start = int(self.index.ntotal)
        end = start + len(ids)
        if end > len(self._pos_slot):
            grown = np.full(max(end, 2 * len(self._pos_slot)), -1, dtype=np.int64)
            grown[:start] = self._pos_slot[:start]
            self._pos_slot = grown
        self.index.add(vectors)
        self._pos_slot[start:end] = ids
        self._slot_pos[ids] = np.arange(start, end)

    def remove(self, ids: np.ndarray) -> None:
        """Tombstone the vectors of slots ``ids``; rebuild when tombstones outnumber live vectors."""
        pos = self._slot_pos[ids]
        pos = pos[pos >= 0]
        self._pos_slot[pos] = -1
        self._slot_pos[ids] = -1
        self.stale += len(pos)
        if self.stale > max(self.ntotal, 64):
            self._rebuild()

    def _rebuild(self) -> None:
        """Rebuild the graph from the live vectors, dropping all tombstones."""
        total = int(self.index.ntotal)
        live = np.flatnonzero(self._pos_slot[:total] >= 0)
        slots = self._pos_slot[live].copy()
        vectors = self.index.reconstruct_n(0, total)[live] if total else np.empty((0, self.config.dim), np.float32)
        self._reset()
        if len(slots):
            self.add(np.ascontiguousarray(vectors), slots)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Search the graph, skipping tombstones; returns slot ids (``-1`` where no hit)."""
        if self.ntotal == 0:
            return empty_result(len(queries), k)
        if self.stale == 0:
            dist, pos = self.index.search(queries, k)
        else:
            faiss = import_faiss()
            total = int(self.index.ntotal)
            bitmap = np.packbits(self._pos_slot[:total] >= 0, bitorder="little")
            selector = faiss.IDSelectorBitmap(total, faiss.swig_ptr(bitmap))
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=max(self.config.hnsw_ef_search, k))
            dist, pos = self.index.search(queries, k, params=params)
        return dist, np.where(pos >= 0, self._pos_slot[np.maximum(pos, 0)], -1)

    def state(self) -> dict[str, Any]:
        """Checkpointable state."""
        total = int(self.index.ntotal)
        return {"index": _to_bytes(self.index), "pos_slot": torch.from_numpy(self._pos_slot[:total].copy())}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state`."""
        self._reset()
        self.index = _from_bytes(state["index"])
        self.index.hnsw.efSearch = self.config.hnsw_ef_search
        pos_slot = state["pos_slot"].numpy().astype(np.int64)
        self._pos_slot = np.concatenate([pos_slot, np.full(16, -1, dtype=np.int64)])
        live = np.flatnonzero(pos_slot >= 0)
        self._slot_pos[pos_slot[live]] = live
        self.stale = int(len(pos_slot) - len(live))


def make_index(config: EpisodicStoreConfig, device: str) -> IdMapIndex | IvfIndex | HnswIndex:
    """Build the empty index for ``config`` on the resolved ``device``."""
    kinds = {"flat": IdMapIndex, "ivf": IvfIndex, "hnsw": HnswIndex}
    return kinds[config.index](config, device)
