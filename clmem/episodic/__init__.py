"""Episodic memory stores: FAISS-backed nearest-neighbour search over embeddings with payloads.

Only torch, numpy and faiss (imported lazily) are used here; Ray appears only in
:mod:`clmem.episodic.ray_shards`.
"""

from clmem.episodic.config import EpisodicStoreConfig
from clmem.episodic.payload import EpisodeBatch
from clmem.episodic.persist import StoreFileError
from clmem.episodic.sharded import ShardedEpisodicStore
from clmem.episodic.store import EpisodicStore

__all__ = ["EpisodeBatch", "EpisodicStore", "EpisodicStoreConfig", "ShardedEpisodicStore", "StoreFileError"]
