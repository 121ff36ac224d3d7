"""FAISS indexes over slot ids; the index is the only copy of the store's embeddings.

Every index answers ``put(vectors, slots, held)`` (store or replace), ``remove(slots)``,
``search(queries, k)`` (slot ids, ``-1`` for missing hits) and ``vectors(slots)``.

* ``flat``: a bare ``IndexFlat`` (no ``IndexIDMap``) plus position<->slot arrays.  Appends are
  plain ``add`` calls, a replaced slot is overwritten in place in FAISS's own vector array, and
  ``remove`` moves live tail vectors into the freed positions and truncates, so the index never
  holds a dead vector and searches never need an ID selector.  Without removals position == slot.
* ``ivf``: the flat index above until the store holds ``config.ivf_train_size`` items, then an
  ``IndexIVFFlat`` (FAISS ids = slots, hash-table direct map for removal and reconstruction) is
  trained once (seeded k-means) on everything held and replaces it.  Searches before that point
  are exact.  The trained quantizer is kept even if the store shrinks.
* ``hnsw``: ``IndexHNSWFlat`` cannot remove vectors, so removed (and replaced) vectors become
  tombstones that searches skip with an ``IDSelectorBitmap``; the graph is rebuilt from the live
  vectors when tombstones outnumber live vectors.

On ``device="cuda"`` (flat, ivf) the CPU index stays the index of record and a GPU clone serves
searches: appends are mirrored to it; an overwrite or removal drops it and the next search clones
it again.
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


def codes_view(flat: Any, dim: int) -> np.ndarray:
    """Writable ``[ntotal, dim]`` numpy view of an ``IndexFlat``'s vectors (valid until its next add)."""
    n = int(flat.ntotal)
    if n == 0:
        return np.empty((0, dim), dtype=np.float32)
    return import_faiss().rev_swig_ptr(flat.get_xb(), n * dim).reshape(n, dim)


def empty_result(n_queries: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """FAISS-shaped result with no hits (distances are fixed up by the store)."""
    return np.zeros((n_queries, k), dtype=np.float32), np.full((n_queries, k), -1, dtype=np.int64)


def grown(array: np.ndarray, size: int) -> np.ndarray:
    """``array`` with room for at least ``size`` rows (amortised doubling, new rows ``-1``)."""
    if size <= len(array):
        return array
    out = np.full(max(size, 2 * len(array), 16), -1, dtype=array.dtype)
    out[:len(array)] = array
    return out


class _GpuMirror:
    """Optional GPU clone of a CPU index that serves searches on ``device="cuda"``."""

    device = "cpu"
    cpu: Any = None
    _gpu: Any = None
    _gpu_resources: Any = None

    def _searcher(self) -> Any:
        """The index that answers searches: the CPU index, or its (lazily made) GPU clone."""
        if self.device != "cuda":
            return self.cpu
        if self._gpu is None:
            faiss = import_faiss()
            if self._gpu_resources is None:
                self._gpu_resources = faiss.StandardGpuResources()
            self._gpu = faiss.index_cpu_to_gpu(self._gpu_resources, 0, self.cpu)
        return self._gpu


class FlatIndex(_GpuMirror):
    """Exact index holding each live vector once; ``_pos_slot``/``_slot_pos`` map positions and slots."""

    def __init__(self, config: EpisodicStoreConfig, device: str = "cpu") -> None:
        self.config = config
        self.device = device
        self.cpu = _flat(config)
        # a sparse set: entries are only trusted where _pos_slot[_slot_pos[s]] == s (see _positions),
        # so both arrays can stay uninitialised (large np.empty arrays are mapped lazily, no memset)
        self._pos_slot = np.empty(config.capacity, dtype=np.int64)
        self._slot_pos = np.empty(config.capacity, dtype=np.int64)
        self._view: np.ndarray | None = None  # cached codes view; dropped whenever ntotal changes

    @property
    def ntotal(self) -> int:
        """Number of vectors held."""
        return int(self.cpu.ntotal)

    def put(self, vectors: np.ndarray, slots: np.ndarray, held: np.ndarray) -> None:
        """Store ``vectors [m, D]`` under distinct ``slots``; ``held[i]``: slot i already holds one (overwritten)."""
        if held.any():
            self.codes()[self._slot_pos[slots[held]]] = vectors[held]
            self._gpu = None
            if held.all():
                return
            vectors, slots = np.ascontiguousarray(vectors[~held]), slots[~held]
        start = self.ntotal
        end = start + len(slots)
        self.cpu.add(vectors)
        self._view = None
        if self._gpu is not None:
            self._gpu.add(vectors)
        self._pos_slot[start:end] = slots
        self._slot_pos[slots] = np.arange(start, end)

    def _positions(self, slots: np.ndarray) -> np.ndarray:
        """Distinct positions of those ``slots`` that are held (others are ignored)."""
        pos = self._slot_pos[slots]
        ok = (pos >= 0) & (pos < self.ntotal)
        ok[ok] = self._pos_slot[pos[ok]] == slots[ok]
        return np.unique(pos[ok])

    def remove(self, slots: np.ndarray) -> None:
        """Drop held ``slots``: live vectors from the tail move into the freed positions, then truncate."""
        pos = self._positions(slots)
        if len(pos) == 0:
            return
        n = self.ntotal
        keep = n - len(pos)
        tail_dead = np.zeros(n - keep, dtype=bool)
        tail_dead[pos[pos >= keep] - keep] = True
        movers, holes = keep + np.flatnonzero(~tail_dead), pos[pos < keep]
        if len(holes):
            view = self.codes()
            view[holes] = view[movers]
            self._pos_slot[holes] = self._pos_slot[movers]
            self._slot_pos[self._pos_slot[holes]] = holes
        self.cpu.remove_ids(import_faiss().IDSelectorRange(keep, n))
        self._gpu, self._view = None, None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact search: ``(distances, slot ids)`` with ``-1`` where fewer than ``k`` hits exist."""
        if self.ntotal == 0:
            return empty_result(len(queries), k)
        distances, pos = self._searcher().search(queries, k)
        return distances, np.where(pos >= 0, self._pos_slot[np.maximum(pos, 0)], -1)

    def codes(self) -> np.ndarray:
        """Writable view of the held vectors, by position."""
        if self._view is None:
            self._view = codes_view(self.cpu, self.config.dim)
        return self._view

    def vectors(self, slots: np.ndarray) -> np.ndarray:
        """Copies of the vectors held under (held) ``slots``."""
        return self.codes()[self._slot_pos[slots]]

    def held(self) -> tuple[np.ndarray, np.ndarray]:
        """``(vectors [n, D], slots [n])`` of everything held, by position (vectors are a view)."""
        return self.codes(), self._pos_slot[:self.ntotal]

    def state(self) -> dict[str, Any]:
        """Checkpointable state."""
        return {"index": _to_bytes(self.cpu), "pos_slot": torch.from_numpy(self._pos_slot[:self.ntotal].copy())}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state`."""
        self.cpu = _from_bytes(state["index"])
        self._gpu, self._view = None, None
        pos_slot = state["pos_slot"].numpy().astype(np.int64)
        self._pos_slot[:len(pos_slot)] = pos_slot
        self._slot_pos[pos_slot] = np.arange(len(pos_slot))


class IvfIndex(_GpuMirror):
    """A :class:`FlatIndex` until trained, then an IVFFlat over slot ids (see module docstring)."""

    def __init__(self, config: EpisodicStoreConfig, device: str = "cpu") -> None:
        self.config = config
        self.device = device
        self.flat: FlatIndex | None = FlatIndex(config, device)
        self.cpu = None

    @property
    def trained(self) -> bool:
        """Whether the IVF index has replaced the exact one."""
        return self.flat is None

    @property
    def ntotal(self) -> int:
        """Number of vectors held."""
        return self.flat.ntotal if self.flat is not None else int(self.cpu.ntotal)

    def needs_training(self, n_live: int) -> bool:
        """True once the store holds enough items to train the coarse quantizer."""
        return not self.trained and n_live >= self.config.ivf_train_size

    def train(self) -> None:
        """Train an ``IndexIVFFlat`` on everything held, fill it and switch to it."""
        assert self.flat is not None
        faiss = import_faiss()
        cfg = self.config
        view, slots = self.flat.held()
        vectors = np.ascontiguousarray(view)
        ivf = faiss.IndexIVFFlat(_flat(cfg), cfg.dim, cfg.nlist, _metric(cfg))
        ivf.cp.seed = cfg.seed
        ivf.train(vectors)
        ivf.nprobe = cfg.nprobe
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        ivf.add_with_ids(vectors, np.ascontiguousarray(slots))
        self.cpu, self.flat, self._gpu = ivf, None, None

    def put(self, vectors: np.ndarray, slots: np.ndarray, held: np.ndarray) -> None:
        """Store ``vectors`` under ``slots`` (replacing those ``held``)."""
        if self.flat is not None:
            self.flat.put(vectors, slots, held)
            return
        if held.any():
            self.remove(slots[held])
        self.cpu.add_with_ids(vectors, slots)
        if self._gpu is not None:
            self._gpu.add_with_ids(vectors, slots)

    def remove(self, slots: np.ndarray) -> None:
        """Remove the vectors of ``slots``; the GPU clone is rebuilt lazily."""
        if self.flat is not None:
            self.flat.remove(slots)
            return
        self.cpu.remove_ids(np.ascontiguousarray(slots, dtype=np.int64))
        self._gpu = None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(distances, slot ids)``: exact before training, IVF after."""
        if self.flat is not None:
            return self.flat.search(queries, k)
        if self.ntotal == 0:
            return empty_result(len(queries), k)
        return self._searcher().search(queries, k)

    def vectors(self, slots: np.ndarray) -> np.ndarray:
        """Copies of the vectors held under ``slots``."""
        if self.flat is not None:
            return self.flat.vectors(slots)
        if len(slots) == 0:
            return np.empty((0, self.config.dim), dtype=np.float32)
        return self.cpu.reconstruct_batch(np.ascontiguousarray(slots, dtype=np.int64))

    def state(self) -> dict[str, Any]:
        """Checkpointable state."""
        if self.flat is not None:
            return {**self.flat.state(), "trained": False}
        return {"index": _to_bytes(self.cpu), "trained": True}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state`."""
        self._gpu = None
        if not state["trained"]:
            self.flat = FlatIndex(self.config, self.device)
            self.flat.load_state(state)
            self.cpu = None
            return
        self.flat, self.cpu = None, _from_bytes(state["index"])
        self.cpu.set_direct_map_type(import_faiss().DirectMap.Hashtable)


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

    def put(self, vectors: np.ndarray, slots: np.ndarray, held: np.ndarray) -> None:
        """Append ``vectors`` to the graph under ``slots``; the replaced ones (``held``) become tombstones."""
        if held.any():
            self.remove(slots[held])
        start = int(self.index.ntotal)
        end = start + len(slots)
        self._pos_slot = grown(self._pos_slot, end)
        self.index.add(vectors)
        self._pos_slot[start:end] = slots
        self._slot_pos[slots] = np.arange(start, end)

    def remove(self, slots: np.ndarray) -> None:
        """Tombstone the vectors of ``slots``; rebuild when tombstones outnumber live vectors."""
        pos = self._slot_pos[slots]
        pos = pos[pos >= 0]
        self._pos_slot[pos] = -1
        self._slot_pos[slots] = -1
        self.stale += len(pos)
        if self.stale > max(self.ntotal, 64):
            self._rebuild()

    def _rebuild(self) -> None:
        """Rebuild the graph from the live vectors, dropping all tombstones."""
        total = int(self.index.ntotal)
        live = np.flatnonzero(self._pos_slot[:total] >= 0)
        slots = self._pos_slot[live].copy()
        vectors = self._codes()[live]
        self._reset()
        if len(slots):
            self.put(vectors, slots, np.zeros(len(slots), dtype=bool))

    def _codes(self) -> np.ndarray:
        """View of every vector in the graph (tombstones included), by position."""
        return codes_view(import_faiss().downcast_index(self.index.storage), self.config.dim)

    def vectors(self, slots: np.ndarray) -> np.ndarray:
        """Copies of the vectors held under ``slots``."""
        return self._codes()[self._slot_pos[slots]]

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
        self._pos_slot = grown(pos_slot.copy(), len(pos_slot) + 16)
        live = np.flatnonzero(pos_slot >= 0)
        self._slot_pos[pos_slot[live]] = live
        self.stale = int(len(pos_slot) - len(live))


def make_index(config: EpisodicStoreConfig, device: str) -> FlatIndex | IvfIndex | HnswIndex:
    """Build the empty index for ``config`` on the resolved ``device``."""
    kinds = {"flat": FlatIndex, "ivf": IvfIndex, "hnsw": HnswIndex}
    return kinds[config.index](config, device)
