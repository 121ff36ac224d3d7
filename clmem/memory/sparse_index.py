"""Incrementally updated FAISS k-NN index over the slots of one sparse memory (one index per batch element).

This is the only non-differentiable part of the sparse memory (``clmem.memory.sparse``): it returns the
*indices* of the K candidate slots for a query; every weight is then computed with torch on the gathered rows.

Design (Rae et al. 2016 use an approximate index updated as rows change, never rebuilt per step):

* The index is a ``faiss.IndexIVFFlat`` with inner-product metric over L2-normalised rows (so the scores are
  cosine similarities), with a ``Hashtable`` direct map so that a slot can be removed in O(1)
  (``remove_ids``) and re-inserted (``add_with_ids``) with its new contents; the slot number is the FAISS id.
* ``nlist == 1`` makes the index exact (one inverted list holding all N rows, i.e. a flat index);
  ``nlist > 1`` makes it approximate: the coarse quantizer holds ``nlist`` fixed random unit centroids (a
  random partition of the sphere, no training on data) and ``nprobe`` lists are scanned per query.
  Rows are assigned to their nearest centroid here (``add_core`` with a precomputed assignment); all-zero rows
  (the initial memory) are spread round-robin over the lists so that no list grows to O(N).
* ``build`` runs once per sequence (``initial_state``); ``update`` only touches the rows that changed.
  The counters ``n_builds`` / ``n_updated_rows`` make this observable.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Optional, Tuple

import numpy as np

FAISS_MISSING = "faiss is not installed: pip install 'clmem[cpu]' (or 'clmem[gpu]' on CUDA nodes)"


def import_faiss() -> Any:
    """Import FAISS lazily, raising ``ImportError`` with install instructions when it is absent."""
    try:
        import faiss  # noqa: PLC0415 - lazy on purpose: faiss is an optional dependency
    except ImportError as exc:  # pragma: no cover - exercised only without faiss
        raise ImportError(FAISS_MISSING) from exc
    return faiss


def swig(array: np.ndarray) -> Any:
    """Raw pointer to a C-contiguous numpy array, for FAISS calls without a numpy wrapper (``add_core``)."""
    return import_faiss().swig_ptr(array)


@lru_cache(maxsize=8)
def _zero_rows(size: int, dim: int, nlist: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cached ``(ids [N], zero rows [N, W], round-robin lists [N])`` for building an index of an all-zero memory."""
    ids = np.arange(size, dtype=np.int64)
    return ids, np.zeros((size, dim), dtype=np.float32), ids % nlist


def normalise_rows(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """``x [n, W]`` -> float32 C-contiguous rows of unit L2 norm (all-zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, eps), dtype=np.float32)


def random_centroids(nlist: int, dim: int, seed: int) -> np.ndarray:
    """``[nlist, dim]`` unit vectors drawn from a seeded Gaussian (the fixed coarse quantizer)."""
    rng = np.random.default_rng(seed)
    return normalise_rows(rng.standard_normal((nlist, dim)))


class SlotIndex:
    """k-NN index over the N slots ``[N, W]`` of one memory; ids are slot numbers ``0..N-1``.

    Args:
        dim: W, the word size.
        nlist: number of inverted lists (1 = exact search).
        nprobe: lists scanned per query (ignored when ``nlist == 1``).
        seed: seed of the random centroids.
    """

    def __init__(self, dim: int, nlist: int = 1, nprobe: int = 1, seed: int = 0) -> None:
        faiss = import_faiss()
        self._faiss = faiss
        self.dim = dim
        self._quantizer = faiss.IndexFlatIP(dim)
        self._centroids = random_centroids(nlist, dim, seed)
        self._quantizer.add(self._centroids)
        index = faiss.IndexIVFFlat(self._quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.is_trained = True  # fixed random centroids: nothing to train
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
        index.nprobe = min(nprobe, nlist)
        self._index = index
        self.n_builds = 0
        self.n_updated_rows = 0
        self._dirty: Optional[np.ndarray] = None  # [N] bool, rows changed since the last build/clear

    @property
    def ntotal(self) -> int:
        """Number of rows held by the index (N once built)."""
        return int(self._index.ntotal)

    def build(self, rows: Optional[np.ndarray] = None, size: Optional[int] = None) -> None:
        """(Re)fill the index with all rows ``[N, W]`` (or ``size`` all-zero rows); once per sequence, never per step."""
        self._index.reset()
        if rows is None:
            ids, unit_rows, lists = _zero_rows(size, self.dim, self._centroids.shape[0])
            self._index.add_core(size, swig(unit_rows), swig(ids), swig(lists))
        else:
            self._add(np.arange(rows.shape[0], dtype=np.int64), normalise_rows(rows))
        self.n_builds += 1
        self._dirty = np.zeros(self.ntotal, dtype=bool)

    def dirty_ids(self) -> np.ndarray:
        """Slots ``[n]`` updated since the last ``build``/``clear``."""
        return np.flatnonzero(self._dirty)

    def clear(self) -> None:
        """Reset the updated rows to zero in O(updated rows): the index then equals a fresh all-zero build."""
        ids = self.dirty_ids()
        if ids.size:
            self.update(ids, np.zeros((ids.size, self.dim), dtype=np.float32), normalised=True)
        self._dirty[:] = False

    def update(self, ids: np.ndarray, rows: np.ndarray, normalised: bool = False) -> None:
        """Replace the rows of slots ``ids [n]`` (distinct) by ``rows [n, W]``: remove + re-add, O(n)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        self._index.remove_ids(self._faiss.IDSelectorArray(ids.size, swig(ids)))
        self._add(ids, np.ascontiguousarray(rows, dtype=np.float32) if normalised else normalise_rows(rows))
        self.n_updated_rows += int(ids.size)
        self._dirty[ids] = True

    def _assign(self, ids: np.ndarray, unit_rows: np.ndarray) -> np.ndarray:
        """Inverted list of each row ``[n]``: nearest centroid, or ``id % nlist`` for an all-zero row."""
        nlist = self._centroids.shape[0]
        if nlist == 1:
            return np.zeros(ids.shape[0], dtype=np.int64)
        nonzero = np.any(unit_rows != 0.0, axis=1)
        lists = ids % nlist
        if nonzero.any():
            lists[nonzero] = np.argmax(unit_rows[nonzero] @ self._centroids.T, axis=1)
        return np.ascontiguousarray(lists, dtype=np.int64)

    def _add(self, ids: np.ndarray, unit_rows: np.ndarray) -> None:
        """Insert unit rows ``[n, W]`` with ids ``[n]`` into their inverted lists (no FAISS re-quantisation)."""
        lists = self._assign(ids, unit_rows)
        self._index.add_core(ids.shape[0], swig(unit_rows), swig(ids), swig(lists))

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        """Ids ``[q, k]`` of the k rows with the largest cosine similarity to ``queries [q, W]``.

        Missing neighbours (an approximate index scanning fewer than k rows) are returned as ``-1``.
        """
        _, ids = self._index.search(normalise_rows(queries), k)
        return ids
