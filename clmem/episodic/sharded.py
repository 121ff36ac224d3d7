"""An episodic store split over S shards, held in-process or by Ray actors.

Global ids encode the shard: ``gid = local_slot * S + shard``.  Each batch is split into
contiguous slices that rotate over the shards (per client; each shard gets as many items as
item-by-item round-robin would give it), searches fan out to every shard and the per-shard top-k
lists are merged by distance with ties broken by ascending global id, so a sharded flat store returns exactly the
top-k of one flat index over all items.  Each shard runs its own insertion policy over the items
routed to it (capacity is split evenly); a shard serialises its own mutations (a Ray actor runs
one method at a time), so concurrent clients lose nothing the shard's policy would keep.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clmem.episodic.config import EpisodicStoreConfig
from clmem.episodic.payload import EpisodeBatch
from clmem.episodic.persist import load_state, save_state
from clmem.episodic.store import EpisodicStore, as_ids, as_matrix, worst_distance

STATE_FORMAT = "clmem.episodic.sharded/1"
BACKENDS = ("local", "ray")


def shard_configs(config: EpisodicStoreConfig, num_shards: int) -> list[EpisodicStoreConfig]:
    """Per-shard configs: capacity split as evenly as possible, distinct seeds."""
    base, extra = divmod(config.capacity, num_shards)
    return [dataclasses.replace(config, capacity=base + (i < extra), seed=config.seed * num_shards + i)
            for i in range(num_shards)]


def merge_topk(distances: np.ndarray, ids: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-``k`` of candidate lists: nearest first, ties by ascending id, misses (id -1) last."""
    missing = ids < 0
    key = np.where(missing, np.inf, distances if metric == "l2" else -distances)
    id_key = np.where(missing, np.iinfo(np.int64).max, ids)
    order = np.lexsort((id_key, key), axis=-1)[:, :k]
    top_d = np.take_along_axis(distances, order, axis=1)
    top_i = np.take_along_axis(ids, order, axis=1)
    return np.where(top_i < 0, np.float32(worst_distance(metric)), top_d).astype(np.float32), top_i


class Shard:
    """One shard: an :class:`EpisodicStore` plus the calls a :class:`ShardedEpisodicStore` makes.

    The same class serves in-process and as a Ray actor (see :mod:`clmem.episodic.ray_shards`).
    """

    def __init__(self, config: EpisodicStoreConfig, shard: int, num_shards: int, full_config: dict[str, Any]) -> None:
        self.store = EpisodicStore(config)
        self.shard = shard
        self.num_shards = num_shards
        self.full_config = full_config

    def meta(self) -> dict[str, Any]:
        """What a client needs to connect: the global config and the number of shards."""
        return {"config": self.full_config, "num_shards": self.num_shards, "shard": self.shard}

    def add(self, embeddings: np.ndarray, inputs: Any, labels: Any, logits: Any, experience: Any) -> np.ndarray:
        """Insert a routed sub-batch; return local slot ids."""
        return self.store.add(embeddings, inputs, labels, logits, experience).numpy()

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Local top-``k``."""
        distances, ids = self.store.search(queries, k)
        return distances.numpy(), ids.numpy()

    def get(self, slots: np.ndarray) -> EpisodeBatch:
        """Payloads of local slots."""
        return self.store.get(slots)

    def get_by_rank(self, ranks: np.ndarray) -> EpisodeBatch:
        """Payloads of the items at positions ``ranks`` of the ascending list of held slots."""
        return self.store.get(self.store.live_slots()[torch.from_numpy(ranks)])

    def remove(self, slots: np.ndarray) -> int:
        """Remove local slots; return how many were held."""
        return self.store.remove(slots)

    def size(self) -> int:
        """Items held."""
        return len(self.store)

    def live_slots(self) -> np.ndarray:
        """Held local slots, ascending."""
        return self.store.live_slots().numpy()

    def state_dict(self) -> dict[str, Any]:
        """The shard store's state."""
        return self.store.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the shard store."""
        self.store.load_state_dict(state)


class LocalShards:
    """In-process shard group (calls run one after another)."""

    def __init__(self, shards: list[Shard]) -> None:
        self.shards = shards

    def call_many(self, calls: list[tuple[int, str, tuple[Any, ...]]]) -> list[Any]:
        """Run ``shard.method(*args)`` for each ``(shard, method, args)``; results in order."""
        return [getattr(self.shards[s], method)(*args) for s, method, args in calls]

    def close(self) -> None:
        """Nothing to release."""


def _split(value: Any, rows: slice) -> Any:
    """Rows ``rows`` of an optional per-item value (ints and ``None`` pass through; slices are views)."""
    if value is None or isinstance(value, (int, np.integer)):
        return value
    return value[rows] if isinstance(value, (torch.Tensor, np.ndarray)) else np.asarray(value)[rows]


def route(rows: int, num_shards: int, cursor: int) -> tuple[list[tuple[int, slice]], int]:
    """Split a batch of ``rows`` items into contiguous near-equal slices, one per shard.

    Shards ``cursor, cursor+1, ...`` (mod S) take the slices in turn and the first ``rows % S``
    of them one extra item, so every shard receives exactly as many items as per-item
    round-robin from ``cursor`` would give it.  Returns ``([(shard, slice)], next cursor)``.
    """
    base, extra = divmod(rows, num_shards)
    parts, start = [], 0
    for j in range(num_shards):
        n = base + (j < extra)
        if n:
            parts.append(((cursor + j) % num_shards, slice(start, start + n)))
            start += n
    return parts, (cursor + extra) % num_shards


class ShardedEpisodicStore:
    """The :class:`EpisodicStore` interface over ``num_shards`` shards (ids are global ids)."""

    def __init__(self, config: EpisodicStoreConfig, num_shards: int = 2, backend: str = "local",
                 name: str | None = None, detached: bool = False) -> None:
        if not isinstance(config, EpisodicStoreConfig):
            raise TypeError(f"ShardedEpisodicStore: expected an EpisodicStoreConfig, got {type(config).__name__}")
        if isinstance(num_shards, bool) or not isinstance(num_shards, int) or not 1 <= num_shards <= config.capacity:
            raise ValueError(f"ShardedEpisodicStore.num_shards: expected an int in [1, capacity={config.capacity}], "
                             f"got {num_shards!r}")
        if backend not in BACKENDS:
            raise ValueError(f"ShardedEpisodicStore.backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
        if name is not None and backend != "ray":
            raise ValueError("ShardedEpisodicStore.name: only the 'ray' backend has named shards")
        configs = shard_configs(config, num_shards)
        if backend == "local":
            group: Any = LocalShards([Shard(c, i, num_shards, config.to_dict()) for i, c in enumerate(configs)])
        else:
            from clmem.episodic.ray_shards import RayShards

            group = RayShards.create(name, configs, config.to_dict(), detached)
        self._setup(config, num_shards, backend, name, group)

    def _setup(self, config: EpisodicStoreConfig, num_shards: int, backend: str, name: str | None, group: Any) -> None:
        """Set the attributes shared by ``__init__`` and :meth:`connect`."""
        self._config = config
        self._num_shards = num_shards
        self._backend = backend
        self._name = name
        self._group = group
        self._next_shard = 0

    @classmethod
    def connect(cls, name: str) -> "ShardedEpisodicStore":
        """Attach to the Ray shards created under ``name`` (e.g. from another trial or task)."""
        from clmem.episodic.ray_shards import RayShards

        group, meta = RayShards.connect(name)
        store = cls.__new__(cls)
        store._setup(EpisodicStoreConfig.from_dict(meta["config"]), int(meta["num_shards"]), "ray", name, group)
        return store

    @property
    def config(self) -> EpisodicStoreConfig:
        """The global configuration (``capacity`` is the total over shards)."""
        return self._config

    @property
    def num_shards(self) -> int:
        """Number of shards S."""
        return self._num_shards

    @property
    def backend(self) -> str:
        """``"local"`` or ``"ray"``."""
        return self._backend

    def _each(self, method: str, *args: Any) -> list[Any]:
        """Call ``method(*args)`` on every shard."""
        return self._group.call_many([(s, method, args) for s in range(self._num_shards)])

    def _by_shard(self, gids: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """``(shard, positions in gids)`` for every shard that owns some of ``gids``."""
        shards = gids % self._num_shards
        return [(s, np.flatnonzero(shards == s)) for s in range(self._num_shards) if (shards == s).any()]

    def __len__(self) -> int:
        """Items held over all shards."""
        return int(sum(self._each("size")))

    def add(self, embeddings: Any, inputs: Any = None, labels: Any = None, logits: Any = None,
            experience: int | Any = 0) -> torch.Tensor:
        """Route a batch over shards in contiguous slices (see :func:`route`); return global ids (``-1``: not kept)."""
        vectors = as_matrix(embeddings, self._config.dim, "embeddings")
        parts, self._next_shard = route(len(vectors), self._num_shards, self._next_shard)
        calls = [(s, "add", (vectors[rows], _split(inputs, rows), _split(labels, rows), _split(logits, rows),
                             _split(experience, rows))) for s, rows in parts]
        gids = np.full(len(vectors), -1, dtype=np.int64)
        for (s, rows), local in zip(parts, self._group.call_many(calls)):
            gids[rows] = np.where(local >= 0, local * self._num_shards + s, -1)
        return torch.from_numpy(gids)

    def search(self, queries: Any, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Fan out to all shards and merge: ``(distances [Q, k], global ids [Q, k])``."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"search(): k expected a positive int, got {k!r}")
        matrix = as_matrix(queries, self._config.dim, "queries")
        results = self._each("search", matrix, k)
        distances = np.concatenate([d for d, _ in results], axis=1)
        ids = np.concatenate([np.where(i >= 0, i * self._num_shards + s, -1) for s, (_, i) in enumerate(results)], axis=1)
        top_d, top_i = merge_topk(distances, ids, k, self._config.metric)
        return torch.from_numpy(top_d), torch.from_numpy(top_i)

    def _gather(self, method: str, parts: list[tuple[int, np.ndarray, np.ndarray]]) -> EpisodeBatch:
        """Call ``method(arg)`` per ``(shard, positions, arg)`` and reassemble rows by position."""
        if not parts:
            return self._empty_batch()
        batches = self._group.call_many([(s, method, (arg,)) for s, _, arg in parts])
        order = np.argsort(np.concatenate([pos for _, pos, _ in parts]), kind="stable")
        gids = np.concatenate([b.slot_ids.numpy() * self._num_shards + s for (s, _, _), b in zip(parts, batches)])
        merged = EpisodeBatch.concat(batches, order)
        return dataclasses.replace(merged, slot_ids=torch.from_numpy(gids[order]))

    def _empty_batch(self) -> EpisodeBatch:
        """A zero-row batch (payload fields ``None``)."""
        return EpisodeBatch(slot_ids=torch.empty(0, dtype=torch.int64),
                            embeddings=torch.empty(0, self._config.dim), experiences=torch.empty(0, dtype=torch.int64))

    def get(self, slot_ids: Any) -> EpisodeBatch:
        """Payloads of global ids (in that order); ``KeyError`` if any is not held."""
        gids = as_ids(slot_ids)
        if (gids < 0).any():
            raise KeyError(f"slot ids not held by the store: {gids[gids < 0][:8].tolist()}")
        parts = [(s, pos, gids[pos] // self._num_shards) for s, pos in self._by_shard(gids)]
        return self._gather("get", parts)

    def sample(self, n: int, generator: torch.Generator | None = None) -> EpisodeBatch:
        """``min(n, len(self))`` distinct items drawn uniformly over all shards."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"sample(): n expected a non-negative int, got {n!r}")
        sizes = np.asarray(self._each("size"), dtype=np.int64)
        ranks = torch.randperm(int(sizes.sum()), generator=generator)[:n].numpy()
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        owner = np.searchsorted(offsets, ranks, side="right") - 1
        parts = [(s, np.flatnonzero(owner == s), ranks[owner == s] - offsets[s])
                 for s in range(self._num_shards) if (owner == s).any()]
        return self._gather("get_by_rank", parts)

    def live_slots(self) -> torch.Tensor:
        """Global ids held, ascending."""
        locals_ = self._each("live_slots")
        gids = np.concatenate([local * self._num_shards + s for s, local in enumerate(locals_)])
        return torch.from_numpy(np.sort(gids))

    def remove(self, slot_ids: Any) -> int:
        """Remove held items among global ids; return how many were removed."""
        gids = as_ids(slot_ids)
        gids = gids[gids >= 0]
        calls = [(s, "remove", (gids[pos] // self._num_shards,)) for s, pos in self._by_shard(gids)]
        return int(sum(self._group.call_many(calls)))

    def state_dict(self) -> dict[str, Any]:
        """State of every shard plus the routing cursor."""
        return {"format": STATE_FORMAT, "config": self._config.to_dict(), "num_shards": self._num_shards,
                "next_shard": self._next_shard, "shards": self._each("state_dict")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (same config and number of shards)."""
        if state.get("format") != STATE_FORMAT or state.get("num_shards") != self._num_shards:
            raise ValueError(f"load_state_dict(): expected format {STATE_FORMAT!r} with {self._num_shards} shards, "
                             f"got {state.get('format')!r} with {state.get('num_shards')!r}")
        self._group.call_many([(s, "load_state_dict", (sd,)) for s, sd in enumerate(state["shards"])])
        self._next_shard = int(state["next_shard"])

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Atomically write all shards to one verified file."""
        return save_state(path, self.state_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str], backend: str = "local", name: str | None = None) -> "ShardedEpisodicStore":
        """Read a file written by :meth:`save` into new shards."""
        state = load_state(path)
        store = cls(EpisodicStoreConfig.from_dict(state["config"]), int(state["num_shards"]), backend, name)
        store.load_state_dict(state)
        return store

    def close(self, kill: bool = False) -> None:
        """Drop this client's handles; with ``kill=True`` also terminate Ray shard actors."""
        if kill:
            self._group.close()
