"""Ray backend of :class:`~clmem.episodic.sharded.ShardedEpisodicStore`: one actor per shard.

Actors are named ``clmem-episodic:<name>:<shard>`` in the Ray namespace ``clmem`` so that several
trials, tasks or drivers attached to the same cluster can share a store with
``ShardedEpisodicStore.connect(name)``.  An actor runs one method at a time, which serialises each
shard's mutations (and so its capacity/policy decisions) across all concurrent clients.
Shard actors reserve no CPU (``num_cpus=0``) so they never starve the trials that use them.
This is the only module of :mod:`clmem.episodic` that imports Ray.
"""

from __future__ import annotations

from typing import Any

import ray

from clmem.episodic.config import EpisodicStoreConfig
from clmem.episodic.sharded import Shard

NAMESPACE = "clmem"
ShardActor = ray.remote(num_cpus=0)(Shard)


def actor_name(name: str, shard: int) -> str:
    """Ray actor name of shard ``shard`` of the store ``name``."""
    return f"clmem-episodic:{name}:{shard}"


class RayShards:
    """Handles to the shard actors of one store; fans calls out in parallel."""

    def __init__(self, handles: list[Any]) -> None:
        self.handles = handles

    @classmethod
    def create(cls, name: str | None, configs: list[EpisodicStoreConfig], full_config: dict[str, Any],
               detached: bool) -> "RayShards":
        """Start (or, for an existing ``name``, attach to) one actor per shard."""
        if not ray.is_initialized():
            ray.init(include_dashboard=False)
        handles = []
        for i, config in enumerate(configs):
            options: dict[str, Any] = {}
            if name is not None:
                options = {"name": actor_name(name, i), "namespace": NAMESPACE, "get_if_exists": True}
                if detached:
                    options["lifetime"] = "detached"
            handles.append(ShardActor.options(**options).remote(config, i, len(configs), full_config))
        group = cls(handles)
        group._check_meta(full_config, len(configs))
        return group

    def _check_meta(self, full_config: dict[str, Any], num_shards: int) -> None:
        """Fail if existing actors under this name belong to a differently configured store."""
        for meta in ray.get([h.meta.remote() for h in self.handles]):
            if meta["config"] != full_config or meta["num_shards"] != num_shards:
                raise ValueError(f"ray shards: a store with this name exists with config {meta['config']} "
                                 f"and {meta['num_shards']} shards, expected {full_config} and {num_shards}")

    @classmethod
    def connect(cls, name: str) -> tuple["RayShards", dict[str, Any]]:
        """Attach to the actors of store ``name``; return the group and shard 0's metadata."""
        try:
            first = ray.get_actor(actor_name(name, 0), namespace=NAMESPACE)
        except ValueError as exc:
            raise ValueError(f"ray shards: no episodic store named {name!r} in namespace {NAMESPACE!r}") from exc
        meta = ray.get(first.meta.remote())
        rest = [ray.get_actor(actor_name(name, i), namespace=NAMESPACE) for i in range(1, meta["num_shards"])]
        return cls([first, *rest]), meta

    def call_many(self, calls: list[tuple[int, str, tuple[Any, ...]]]) -> list[Any]:
        """Submit ``shard.method(*args)`` for every call at once, then wait for all results (in order)."""
        refs = [getattr(self.handles[s], method).remote(*args) for s, method, args in calls]
        return ray.get(refs)

    def close(self) -> None:
        """Terminate the shard actors (their contents are lost)."""
        for handle in self.handles:
            ray.kill(handle)
