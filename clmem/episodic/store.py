"""FAISS-backed episodic store: embeddings with payloads, an insertion policy and atomic persistence."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clmem.episodic._faiss import resolve_device
from clmem.episodic.config import EpisodicStoreConfig
from clmem.episodic.index import FlatIndex, IvfIndex, make_index
from clmem.episodic.payload import EpisodeBatch, PayloadBuffer, as_tensor
from clmem.episodic.persist import load_state, save_state
from clmem.episodic.policy import ClassBalancedPolicy, make_policy

STATE_FORMAT = "clmem.episodic.store/2"
#: Format 1 kept a second copy of the embeddings in the payload and an ``IndexIDMap`` for flat indexes.
LEGACY_FORMAT = "clmem.episodic.store/1"
#: Fields that must agree between a checkpoint and the store it is loaded into (device may differ).
_STRUCTURAL = ("dim", "capacity", "index", "metric", "policy", "nlist", "hnsw_m")


def as_matrix(value: Any, dim: int, name: str) -> np.ndarray:
    """Contiguous float32 ``[N, dim]`` numpy array from a tensor/array, or a one-line ``ValueError``."""
    if isinstance(value, torch.Tensor):
        value = value.detach().to("cpu", torch.float32).numpy()
    array = np.ascontiguousarray(value, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != dim:
        raise ValueError(f"{name}: expected shape (N, {dim}), got {tuple(array.shape)}")
    return array


def as_ids(value: Any) -> np.ndarray:
    """1-D int64 numpy array of ids from a tensor/array/sequence/int."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    ids = np.asarray(value)
    if ids.dtype.kind not in "iu":
        raise ValueError(f"slot ids: expected integers, got dtype {ids.dtype}")
    return np.ascontiguousarray(ids.reshape(-1), dtype=np.int64)


def worst_distance(metric: str) -> float:
    """Distance reported for a missing hit: +inf for l2 (smaller is nearer), -inf for ip."""
    return float("inf") if metric == "l2" else float("-inf")


class EpisodicStore:
    """Bounded store of embeddings and payloads, searchable by nearest neighbour.

    Slot ids (``0 .. capacity-1``) are the FAISS ids and index the payload arrays.  ``add`` runs
    the configured policy (see :mod:`clmem.episodic.policy`); ``search`` returns ``(distances,
    slot_ids)`` of shape ``[Q, k]`` with slot id ``-1`` (and the worst distance) where the store
    holds fewer than ``k`` matches.  L2 distances are squared.
    """

    def __init__(self, config: EpisodicStoreConfig) -> None:
        if not isinstance(config, EpisodicStoreConfig):
            raise TypeError(f"EpisodicStore: expected an EpisodicStoreConfig, got {type(config).__name__}")
        self._config = config
        self._device = resolve_device(config.device, config.index)
        self._index = make_index(config, self._device)
        self._buffer = PayloadBuffer(config.capacity)
        self._policy = make_policy(config.policy, config.capacity, config.seed)
        self._size = 0
        self._top = 0  # 1 + the highest slot ever written (== size while there are no holes)

    @property
    def config(self) -> EpisodicStoreConfig:
        """The store's configuration."""
        return self._config

    @property
    def device(self) -> str:
        """Where searches run: ``"cpu"`` or ``"cuda"``."""
        return self._device

    @property
    def seen(self) -> int:
        """Number of items ever offered to :meth:`add`."""
        return self._policy.seen

    def __len__(self) -> int:
        """Number of items held."""
        return self._size

    def add(self, embeddings: Any, inputs: Any = None, labels: Any = None, logits: Any = None,
            experience: int | Any = 0) -> torch.Tensor:
        """Offer a batch of ``B`` items; return their slot ids (``-1`` for items not kept).

        ``embeddings`` is ``[B, D]``; ``inputs``, ``labels`` (required by ``class_balanced``) and
        ``logits`` are optional payloads with ``B`` rows; ``experience`` is an int or ``[B]`` ids.
        """
        vectors = as_matrix(embeddings, self._config.dim, "embeddings")
        rows_in = len(vectors)
        given = {name: (as_tensor(v, name, rows_in) if v is not None else None)
                 for name, v in (("inputs", inputs), ("labels", labels), ("logits", logits))}
        experiences = self._experience_ids(experience, rows_in)
        self._buffer.check_schema(given)
        slots = self._assign(rows_in, given["labels"])
        kept = slots >= 0
        rows = np.arange(rows_in) if kept.all() else np.flatnonzero(kept)
        targets = slots if len(rows) == rows_in else slots[rows]
        held = self._buffer.occupied[targets]
        n_replaced = int(held.sum())
        self._buffer.write(targets, rows, experiences, given)
        self._index.put(vectors if len(rows) == rows_in else vectors[rows], targets, held)
        self._size += len(targets) - n_replaced
        if len(targets):
            self._top = max(self._top, int(targets.max()) + 1)
        self._maybe_train()
        return torch.from_numpy(slots)

    def _experience_ids(self, experience: Any, rows: int) -> torch.Tensor | int:
        """An int experience id, or ``[rows]`` int64 ids from a per-row array."""
        if isinstance(experience, (int, np.integer)) and not isinstance(experience, bool):
            return int(experience)
        return as_tensor(experience, "experience", rows).to(torch.int64).reshape(rows)

    def _free_slots(self, m: int) -> np.ndarray:
        """The (up to) ``m`` lowest free slots, ascending."""
        if self._top == self._size:  # no holes: slots 0 .. size-1 are exactly the held ones
            return np.arange(self._size, min(self._size + m, self._config.capacity), dtype=np.int64)
        free = np.flatnonzero(~self._buffer.occupied)
        if len(free) and free[0] >= self._size:  # the holes are gone (refilled)
            self._top = self._size
        return free[:m]

    def _assign(self, rows: int, labels: torch.Tensor | None) -> np.ndarray:
        """Run the insertion policy for a batch of ``rows`` items."""
        free = self._free_slots(rows)
        if not isinstance(self._policy, ClassBalancedPolicy):
            return self._policy.assign_batch(free, rows)
        if labels is None or labels.dim() != 1 or labels.is_floating_point():
            raise ValueError("add(): policy 'class_balanced' expects labels as a 1-D integer tensor")
        held_labels = self._buffer.optional["labels"]
        assert held_labels is not None  # allocated by check_schema
        held = self.live_slots().numpy() if len(free) < rows else np.empty(0, dtype=np.int64)
        return self._policy.assign_batch(free, held, held_labels.numpy()[held], labels.numpy())

    def _maybe_train(self) -> None:
        """Train an IVF index once the store holds enough items (see :mod:`clmem.episodic.index`)."""
        if isinstance(self._index, IvfIndex) and self._index.needs_training(self._size):
            self._index.train()

    def search(self, queries: Any, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``k`` nearest items of each of ``Q`` queries: ``(distances [Q, k], slot ids [Q, k])``."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"search(): k expected a positive int, got {k!r}")
        matrix = as_matrix(queries, self._config.dim, "queries")
        distances, ids = self._index.search(matrix, k)
        missing = ids < 0
        if missing.any():
            distances = np.where(missing, np.float32(worst_distance(self._config.metric)), distances)
        return torch.from_numpy(distances), torch.from_numpy(ids)

    def _check_held(self, ids: np.ndarray) -> None:
        """Raise a one-line ``KeyError`` unless every id is an occupied slot."""
        bad = ids[(ids < 0) | (ids >= self._config.capacity)]
        if len(bad) == 0:
            bad = ids[~self._buffer.occupied[ids]]
        if len(bad):
            raise KeyError(f"slot ids not held by the store: {bad[:8].tolist()}")

    def get(self, slot_ids: Any) -> EpisodeBatch:
        """Payloads of ``slot_ids`` (in that order); ``KeyError`` if any is not held."""
        ids = as_ids(slot_ids)
        self._check_held(ids)
        return self._read(ids)

    def _read(self, slots: np.ndarray) -> EpisodeBatch:
        """Payloads and embeddings of held ``slots``."""
        return self._buffer.read(slots, self._index.vectors(slots))

    def live_slots(self) -> torch.Tensor:
        """Slot ids currently held, ascending."""
        return torch.from_numpy(np.flatnonzero(self._buffer.occupied).astype(np.int64))

    def sample(self, n: int, generator: torch.Generator | None = None) -> EpisodeBatch:
        """``min(n, len(self))`` distinct items drawn uniformly at random (seeded by ``generator``)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"sample(): n expected a non-negative int, got {n!r}")
        pick = torch.randperm(self._size, generator=generator)[:n].numpy()
        if self._top != self._size:  # holes: the i-th held slot is not slot i
            pick = np.flatnonzero(self._buffer.occupied)[pick]
        return self._read(pick)

    def remove(self, slot_ids: Any) -> int:
        """Remove the held items among ``slot_ids`` (others are ignored); return how many were removed."""
        ids = np.unique(as_ids(slot_ids))
        ids = ids[(ids >= 0) & (ids < self._config.capacity)]
        ids = ids[self._buffer.occupied[ids]]
        if len(ids):
            self._index.remove(ids)
            self._buffer.occupied[ids] = False
            self._size -= len(ids)
        return int(len(ids))

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to restore the store (tensors and plain values only)."""
        return {"format": STATE_FORMAT, "config": self._config.to_dict(), "size": self._size,
                "payload": self._buffer.state(), "index": self._index.state(), "policy": self._policy.state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; the structural config fields must match this store's."""
        if state.get("format") == LEGACY_FORMAT:
            state = {**state, "index": self._index_state_from_v1(state)}
        elif state.get("format") != STATE_FORMAT:
            raise ValueError(f"load_state_dict(): expected format {STATE_FORMAT!r}, got {state.get('format')!r}")
        saved = state["config"]
        for name in _STRUCTURAL:
            if saved.get(name) != getattr(self._config, name):
                raise ValueError(f"load_state_dict(): config.{name} is {saved.get(name)!r} in the state, "
                                 f"expected {getattr(self._config, name)!r}")
        self._buffer.load_state(state["payload"])
        self._index = make_index(self._config, self._device)
        self._index.load_state(state["index"])
        self._policy.load_state(state["policy"])
        self._size = int(state["size"])
        live = np.flatnonzero(self._buffer.occupied)
        self._top = int(live[-1]) + 1 if len(live) else 0

    def _index_state_from_v1(self, state: dict[str, Any]) -> dict[str, Any]:
        """Index state of a format-1 state: flat (and untrained IVF) indexes are rebuilt from its embeddings."""
        if self._config.index == "hnsw" or state["index"].get("trained"):
            return state["index"]
        flat = FlatIndex(self._config, "cpu")
        slots = state["payload"]["slots"].numpy().astype(np.int64)
        vectors = np.ascontiguousarray(state["payload"]["embeddings"].numpy(), dtype=np.float32)
        flat.put(vectors, slots, np.zeros(len(slots), dtype=bool))
        return {**flat.state(), "trained": False}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Atomically write the store to ``path`` (see :mod:`clmem.episodic.persist`)."""
        return save_state(path, self.state_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | None = None) -> "EpisodicStore":
        """Read a store written by :meth:`save` (optionally onto another ``device``)."""
        state = load_state(path)
        config = EpisodicStoreConfig.from_dict(state["config"])
        if device is not None:
            config = dataclasses.replace(config, device=device)
        store = cls(config)
        store.load_state_dict(state)
        return store
