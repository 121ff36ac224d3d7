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
  Rows are assigned to their nearest centroid here (``add_core`` with a precomputed assignment; an explicitly
  stored all-zero row goes to list ``id % nlist``).
* The rows of a zero-initialised memory are implicit until written (not stored in FAISS; ``search`` merges them
  in at cosine 0), so starting a sequence is O(1) and the index grows only with the rows actually written.
* ``build`` runs once per sequence (``initial_state``); ``update`` only touches the rows that changed.
  The counters ``n_builds`` / ``n_updated_rows`` make this observable.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

FAISS_MISSING = "faiss is not installed: pip install 'clmem[cpu]' (or 'clmem[gpu]' on CUDA nodes)"


def import_faiss() -> Any:
    """Import FAISS lazily, raising ``ImportError`` with install instructions when it is absent."""
    try:
        import faiss  # noqa: PLC0415 - lazy on purpose: faiss is an optional dependency
    except ImportError as exc:
        raise ImportError(FAISS_MISSING) from exc
    return faiss


def swig(array: np.ndarray) -> Any:
    """Raw pointer to a C-contiguous numpy array, for FAISS calls without a numpy wrapper (``add_core``)."""
    return import_faiss().swig_ptr(array)


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

    All-zero rows (the slots of a zero-initialised memory never written since) are *implicit*: they are not stored
    in FAISS, and ``search`` ranks them at cosine 0 (ties: lowest slot first). ``build(None, size)`` is therefore
    O(1), and the FAISS index holds only the rows written so far (``ntotal``), or all N rows after ``build(rows)``.

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
        self._stored = np.zeros(0, dtype=bool)  # [N] slot held by FAISS (else an implicit zero row)
        self._dirty = np.zeros(0, dtype=bool)  # [N] slot updated since the last build/clear
        self._first_implicit = 0  # no implicit slot below this one

    @property
    def ntotal(self) -> int:
        """Number of rows held by FAISS (N after ``build(rows)``; the rows written so far after ``build(None)``)."""
        return int(self._index.ntotal)

    @property
    def size(self) -> int:
        """N, the number of slots covered (stored or implicit zero rows)."""
        return int(self._stored.shape[0])

    def build(self, rows: Optional[np.ndarray] = None, size: Optional[int] = None) -> None:
        """(Re)fill the index with all rows ``[N, W]``, or start an all-zero memory of ``size`` implicit rows (O(1)).
        Called once per sequence, never per step."""
        self._index.reset()
        size = rows.shape[0] if rows is not None else size
        self._stored = np.zeros(size, dtype=bool)
        self._dirty = np.zeros(size, dtype=bool)
        self._first_implicit = 0
        if rows is not None:
            self._add(np.arange(size, dtype=np.int64), normalise_rows(rows))
            self._stored[:] = True
        self.n_builds += 1

    def dirty_ids(self) -> np.ndarray:
        """Slots ``[n]`` updated since the last ``build``/``clear``."""
        return np.flatnonzero(self._dirty)

    def clear(self) -> None:
        """Back to an all-zero memory in O(updated rows) (the updated rows become implicit zero rows again)."""
        ids = self.dirty_ids()
        if ids.size:
            self._index.remove_ids(self._faiss.IDSelectorArray(ids.size, swig(ids)))
            self._stored[ids] = False
        self._dirty[:] = False
        self._first_implicit = 0

    def update(self, ids: np.ndarray, rows: np.ndarray, normalised: bool = False) -> None:
        """Replace the rows of slots ``ids [n]`` (distinct) by ``rows [n, W]``: remove + re-add, O(n)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        self._index.remove_ids(self._faiss.IDSelectorArray(ids.size, swig(ids)))  # absent ids are skipped
        self._add(ids, np.ascontiguousarray(rows, dtype=np.float32) if normalised else normalise_rows(rows))
        self.n_updated_rows += int(ids.size)
        self._dirty[ids] = True
        self._stored[ids] = True

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

    def _implicit_slots(self, k: int) -> np.ndarray:
        """Up to k lowest implicit (all-zero) slots; amortised O(k) as written slots cluster at the low end."""
        start, window = self._first_implicit, 4 * k
        while True:
            free = np.flatnonzero(~self._stored[start:start + window])
            if free.size >= k or start + window >= self.size:
                break
            window *= 4
        self._first_implicit = start + int(free[0]) if free.size else self.size
        return (start + free[:k]).astype(np.int64)

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        """Ids ``[q, k]`` of the k rows with the largest cosine similarity to ``queries [q, W]``.

        Missing neighbours (an approximate index scanning fewer than k rows) are returned as ``-1``.
        """
        scores, ids = self._index.search(normalise_rows(queries), k)
        implicit = self._implicit_slots(k) if self.ntotal < self.size else np.zeros(0, dtype=np.int64)
        if implicit.size == 0:
            return ids
        scores = np.where(ids >= 0, scores, -np.inf)  # implicit zero rows score 0 and follow positive rows
        all_ids = np.concatenate([ids, np.broadcast_to(implicit, (ids.shape[0], implicit.size))], axis=1)
        all_scores = np.concatenate([scores, np.zeros((ids.shape[0], implicit.size), dtype=scores.dtype)], axis=1)
        order = np.argsort(-all_scores, axis=1, kind="stable")[:, :k]
        return np.where(np.take_along_axis(all_scores, order, 1) > -np.inf, np.take_along_axis(all_ids, order, 1), -1)
