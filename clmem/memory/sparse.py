"""Sparse Access Memory (SAM; Rae et al. 2016, "Scaling Memory-Augmented Neural Networks with Sparse Reads and
Writes"): every read and write touches only K slots, found by a k-NN index.

Shapes: B batch, N slots, W word size, R read heads, H write heads, K neighbours, J = R*K + H written entries.

One step (``SparseMemory.step``), writing before reading as in the DNC:

1. **Write** to the previously read slots and to the H least-recently-used slots (one per write head):
   ``w^W_h = alpha_h (gamma_h * mean_r w^R_{t-1, r} + (1 - gamma_h) 1[LRU_h])``; the LRU slot of head h is erased
   by its write weight ``alpha_h (1 - gamma_h)`` (SAM erases it fully; scaling the erase means a closed write gate
   leaves memory untouched): ``M[i] <- (1 - e_i) M[i] + sum_h w^W_h[i] a_h``.
2. **Read**: the FAISS index returns the K candidate slots per read key (``_knn`` — the only non-differentiable
   step: its output is a set of integer indices, fixed for a given input); the K rows are gathered and
   ``w^R = softmax_K(beta * cos(k, M[i]))``, ``r = sum_K w^R M[i]``.
   With ``use_links=True`` (``clmem.memory.sparse_links``) the read weights mix DNC read modes,
   ``pi_b L^T w^R_{t-1} + pi_c c + pi_f L w^R_{t-1}`` over sparse supports, keeping the K strongest slots.
3. **Usage** is the last access time (SAM's U^(2)): slots whose read or write weight exceeds ``delta``
   (``usage_threshold``) get the current time step.

Non-differentiable parts (fixed for a given input, like an argmax): the k-NN search in ``SparseMemory._knn``, the
least-used slot (``least_used``), usage, and the link values; everything else is torch autograd.

Gradients: the memory buffer ``[B, N, W]`` is *not* an autograd node. Rows written since the last
``detach_state`` are kept differentiable in ``state.pool [P, W]``, and ``store.last_writer [B, N]`` says which pool
row (plus one; 0 = none) holds the current value of a slot; gathers read the pool (or the initial memory), so
autograd only sees the touched rows and every untouched row receives an exactly-zero gradient.

State: ``SparseMemoryState`` is an immutable NamedTuple, but, like the FAISS index it carries, the memory buffer
is updated in place (O(K) per step, never O(N)); states are therefore *linear*: only the most recent state of a
sequence may be stepped (a stale state raises). ``initial_state`` builds fresh buffers (zero pages mapped lazily)
and indexes whose zero rows are implicit, in O(B) rather than O(B N) (or recycles the previous sequence's ones,
``recycle_buffers=True``).

``dense_memory_step`` is the dense reference (same maths over all N slots); with ``k_neighbours == memory_size``
and an exact index the sparse reads equal the dense ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, NamedTuple, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ._validation import check_int
from .cores import CoreConfig, CoreTrace, MemoryCore, check_robust
from .sparse_addressing import (
    DenseMemoryState,
    SparseInterface,
    SparseMemoryConfig,
    content_weights,
    dense_initial_state,
    dense_memory_step,
    first_occurrence,
    least_used,
    lru_erase,
    parse_interface,
    per_slot_total,
    sparse_write_weights,
    weighted_read,
    written_rows,
)
from .sparse_index import FAISS_MISSING, SlotIndex, normalise_rows
from .sparse_links import SparseLinks, clear_links, directional_candidates, empty_links, merge_top, update_links

__all__ = [
    "SparseMemoryConfig", "SparseInterface", "SparseStore", "SparseMemoryState", "SparseMemory",
    "SparseDNCCoreConfig", "SparseDNCCore", "DenseMemoryState", "dense_initial_state", "dense_memory_step",
    "parse_interface", "FAISS_MISSING",
]


def lazy_zeros(shape: Tuple[int, ...], dtype: torch.dtype, device: Optional[torch.device]) -> Tensor:
    """Zero tensor; on CPU backed by ``numpy.zeros`` (calloc: pages are mapped on first write, so an O(B N) buffer
    costs O(touched rows) instead of a full memset)."""
    if torch.empty(0, device=device).device.type != "cpu" or dtype not in _NUMPY_DTYPES:
        return torch.zeros(shape, dtype=dtype, device=device)
    return torch.from_numpy(np.zeros(shape, dtype=_NUMPY_DTYPES[dtype]))


_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.long: np.int64}


class SparseStore:
    """Mutable per-sequence buffers shared along a chain of states (see module docstring).

    ``memory [B, N, W]`` (no autograd), ``usage [B, N]`` last access times (long), ``last_writer [B, N]`` 1 + the
    pool row holding the differentiable current value of a slot (0: none), ``base`` the initial memory when it requires
    grad, ``indexes`` one ``SlotIndex`` per batch element, ``version`` bumped on every step/detach.
    """

    def __init__(self, memory: Tensor, indexes: List[SlotIndex], base: Optional[Tensor]) -> None:
        batch, slots, _ = memory.shape
        self.memory = memory
        self.usage = lazy_zeros((batch, slots), torch.long, memory.device)
        self.last_writer = lazy_zeros((batch, slots), torch.long, memory.device)
        self.base = base
        self.indexes = indexes
        self.version = 0
        self.links: Optional[SparseLinks] = None
        self.unused_from: Optional[Tensor] = torch.zeros(batch, dtype=torch.long, device=memory.device)

    def least_used(self, count: int, window: int = 64) -> Tensor:
        """``least_used(usage, count)`` ``[B, count]``, without scanning all N slots while never-used slots remain.

        ``unused_from [B]`` is a lower bound of the never-used (usage 0) slots; usage never returns to 0, so the
        lowest never-used slots are the first zeros at or after it, found in a small window.
        """
        if self.unused_from is not None:
            slots = self.usage.shape[1]
            offsets = torch.arange(window, device=self.usage.device)
            candidates = self.unused_from.unsqueeze(1) + offsets  # [B, window]
            free = (self.usage.gather(1, candidates.clamp(max=slots - 1)) == 0) & (candidates < slots)
            if bool((free.sum(1) >= count).all()):
                first = torch.topk(torch.where(free, offsets, window + offsets), count, largest=False).indices
                picks = candidates.gather(1, first.sort(dim=1).values)
                self.unused_from = picks[:, 0]
                return picks
        picks = least_used(self.usage, count)
        never_used = self.usage.gather(1, picks[:, :1]).squeeze(1) == 0
        self.unused_from = picks[:, 0] if bool(never_used.all()) else None
        return picks

    def recycled(self) -> "SparseStore":
        """A store for a new all-zero sequence reusing these buffers: zeroes the changed rows only; retires ``self``
        (its states become stale)."""
        self.version = -1
        for b, index in enumerate(self.indexes):
            self.memory[b, torch.from_numpy(index.dirty_ids()).to(self.memory.device)] = 0.0
            index.clear()
        store = SparseStore.__new__(SparseStore)
        store.memory, store.usage, store.last_writer = self.memory, self.usage.zero_(), self.last_writer.zero_()
        store.base, store.indexes, store.version, store.links = None, self.indexes, 0, self.links
        store.unused_from = torch.zeros_like(self.usage[:, 0])
        if store.links is not None:
            clear_links(store.links)
        return store


class SparseMemoryState(NamedTuple):
    """State after a step; ``read_*`` are the sparse read weights over ``read_indices``."""

    store: SparseStore
    pool: Tensor  # [P, W] differentiable rows written since the last detach
    read_words: Tensor  # [B, R, W]
    read_weights: Tensor  # [B, R, K]
    read_indices: Tensor  # [B, R, K] long
    write_weights: Tensor  # [B, H, J]
    write_indices: Tensor  # [B, J] long
    time: int
    version: int


# ------------------------------------------------------------------------------------------ sparse memory
def _batch_index(indices: Tensor) -> Tensor:
    """``[B, ...]`` -> matching batch numbers ``[B, 1...]`` for advanced indexing."""
    shape = (indices.shape[0],) + (1,) * (indices.dim() - 1)
    return torch.arange(indices.shape[0], device=indices.device).view(shape)


def gather_rows(store: SparseStore, pool: Tensor, slots: Tensor) -> Tensor:
    """Differentiable current rows of ``slots [B, J]`` -> ``[B, J, W]`` (pool row if written, else initial row)."""
    batch = _batch_index(slots)
    source = store.base if store.base is not None else store.memory
    rows = source[batch, slots]
    if pool.shape[0] == 0:
        return rows
    position = store.last_writer[batch, slots]
    return torch.where((position > 0).unsqueeze(-1), pool[(position - 1).clamp(min=0)], rows)


def touch(usage: Tensor, slots: Tensor, accessed: Tensor, time: int) -> None:
    """In place: ``usage[b, slots] = time`` where ``accessed [B, J]`` (bool); duplicates combine with max."""
    stamps = torch.where(accessed, time, 0).to(usage.dtype)
    usage.scatter_reduce_(1, slots, stamps, reduce="amax", include_self=True)


class SparseMemory(nn.Module):
    """SAM memory without parameters: ``initial_state``, ``step(interface, state)``, ``detach_state``."""

    def __init__(self, config: SparseMemoryConfig) -> None:
        super().__init__()
        self.config = config

    @property
    def interface_size(self) -> int:
        """Size of the raw interface vector expected by ``parse_interface``."""
        return self.config.interface_size

    def parse_interface(self, vector: Tensor) -> SparseInterface:
        """Raw ``[B, interface_size]`` -> squashed ``SparseInterface``."""
        if vector.dim() != 2 or vector.shape[-1] != self.interface_size:
            raise ValueError(f"SparseMemory.parse_interface: expected a [B, {self.interface_size}] tensor, "
                             f"got {tuple(vector.shape)}")
        return parse_interface(vector, self.config)

    def _new_index(self, rows: Optional[np.ndarray]) -> SlotIndex:
        """A ``SlotIndex`` over ``rows [N, W]`` (None: an all-zero memory)."""
        cfg = self.config
        index = SlotIndex(cfg.word_size, cfg.resolved_nlist, cfg.nprobe, cfg.index_seed)
        index.build(rows, size=cfg.memory_size)
        return index

    def initial_state(self, batch_size: int, device: Optional[torch.device] = None,
                      dtype: Optional[torch.dtype] = None, memory: Optional[Tensor] = None) -> SparseMemoryState:
        """Fresh state with zero memory, or with ``memory [B, N, W]`` (gradients reach it if it requires grad)."""
        cfg = self.config
        check_int("SparseMemory.initial_state", "batch_size", batch_size, 1)
        shape = (batch_size, cfg.memory_size, cfg.word_size)
        if memory is None:
            store = self._zero_store(shape, device, dtype or torch.get_default_dtype())
        elif tuple(memory.shape) != shape:
            raise ValueError(f"SparseMemory.initial_state.memory: expected shape {shape}, got {tuple(memory.shape)}")
        else:
            buffer, base = memory.detach().clone(), (memory if memory.requires_grad else None)
            rows = buffer.to(torch.float32).cpu().numpy()
            store = SparseStore(buffer, [self._new_index(rows[b]) for b in range(batch_size)], base)
        buffer = store.memory
        if cfg.use_links and store.links is None:
            store.links = empty_links(batch_size, cfg.memory_size, cfg.link_neighbours, cfg.precedence_size,
                                      buffer.dtype, buffer.device)
        r, k, h = cfg.num_reads, cfg.k_neighbours, cfg.num_writes
        read_indices = torch.arange(k, device=buffer.device).expand(batch_size, r, k)
        write_indices = torch.cat([read_indices.reshape(batch_size, -1),
                                   torch.arange(h, device=buffer.device).expand(batch_size, h)], dim=-1)
        return SparseMemoryState(
            store=store, pool=buffer.new_zeros(0, cfg.word_size),
            read_words=buffer.new_zeros(batch_size, r, cfg.word_size),
            read_weights=buffer.new_zeros(batch_size, r, k), read_indices=read_indices.clone(),
            write_weights=buffer.new_zeros(batch_size, h, r * k + h), write_indices=write_indices, time=0, version=0)

    def _zero_store(self, shape: Tuple[int, int, int], device: Optional[torch.device],
                    dtype: torch.dtype) -> SparseStore:
        """Store of an all-zero memory: fresh, or the previous one recycled (``config.recycle_buffers``)."""
        previous = getattr(self, "_previous_store", None)
        memory = None if previous is None else previous.memory
        if (memory is not None and tuple(memory.shape) == shape and memory.dtype == dtype
                and memory.device == torch.empty(0, device=device).device):
            store = previous.recycled()
        else:
            buffer = lazy_zeros(shape, dtype, device)
            store = SparseStore(buffer, [self._new_index(None) for _ in range(shape[0])], None)
        if self.config.recycle_buffers:
            self._previous_store = store
        return store

    @staticmethod
    def _check_current(state: SparseMemoryState) -> None:
        if state.version != state.store.version:
            raise RuntimeError("SparseMemory: stale state (its buffers were advanced by a later step/detach, or "
                               "recycled by initial_state); sparse memory states are linear, step only the latest one")

    def _write(self, interface: SparseInterface, state: SparseMemoryState, time: int) -> Tuple[Tensor, Tensor, Tensor]:
        """Write step -> ``(pool, write_weights [B,H,J], write_indices [B,J])``; updates store and index."""
        cfg, store = self.config, state.store
        batch = state.read_indices.shape[0]
        slots = torch.cat([state.read_indices.reshape(batch, -1), store.least_used(cfg.num_writes)], -1)
        raw = sparse_write_weights(state.read_weights, interface.write_gates, interface.interpolation_gates)
        erase = per_slot_total(slots, lru_erase(raw, cfg.num_writes).unsqueeze(1)).squeeze(1).clamp(max=1.0)
        weights = per_slot_total(slots, raw)
        rows = written_rows(gather_rows(store, state.pool, slots), weights, erase, interface.write_vectors)
        first = first_occurrence(slots).unsqueeze(-1).expand_as(rows)
        rows = torch.gather(rows, 1, first)  # duplicates of a slot hold bitwise-identical rows
        positions = state.pool.shape[0] + torch.arange(rows.shape[0] * rows.shape[1], device=slots.device)
        pool = torch.cat([state.pool, rows.reshape(-1, cfg.word_size)], dim=0)
        self._commit(store, slots, rows.detach(), positions.view_as(slots))
        if store.links is not None:
            is_first = first[..., 0] == torch.arange(slots.shape[1], device=slots.device)
            update_links(store.links, slots, weights.sum(1).clamp(max=1.0), is_first)
        touch(store.usage, slots, weights.amax(1) > cfg.usage_threshold, time)
        return pool, weights, slots

    @staticmethod
    def _commit(store: SparseStore, slots: Tensor, rows: Tensor, positions: Tensor) -> None:
        """In place, O(J): copy written rows into the buffer, the pool map and the FAISS indexes."""
        batch = _batch_index(slots)
        store.memory[batch, slots] = rows
        store.last_writer[batch, slots] = positions + 1
        slots_np = slots.cpu().numpy()
        unit_rows = normalise_rows(rows.reshape(-1, rows.shape[-1]).cpu().numpy()).reshape(rows.shape)
        for b, index in enumerate(store.indexes):
            unique, first = np.unique(slots_np[b], return_index=True)
            index.update(unique, unit_rows[b, first], normalised=True)

    def _knn(self, keys: Tensor, store: SparseStore) -> Tuple[Tensor, Tensor]:
        """NON-DIFFERENTIABLE: FAISS k-NN of ``keys [B, R, W]`` -> ``(slots [B, R, K] long, valid [B, R, K] bool)``."""
        queries = keys.detach().to(torch.float32).cpu().numpy()
        found = np.stack([index.search(queries[b], self.config.k_neighbours)
                          for b, index in enumerate(store.indexes)])
        slots = torch.from_numpy(found).to(keys.device)
        valid = slots >= 0
        valid[..., 0] |= ~valid.any(-1)  # never leave a head without a candidate
        return slots.clamp(min=0), valid

    def step(self, interface: SparseInterface, state: SparseMemoryState) -> Tuple[Tensor, SparseMemoryState]:
        """One write-then-read step -> ``(read_words [B, R, W], next_state)``; see the module docstring."""
        self._check_current(state)
        cfg, store, time = self.config, state.store, state.time + 1
        pool, write_weights, write_indices = self._write(interface, state, time)
        slots, valid = self._knn(interface.read_keys, store)
        batch, reads, k = slots.shape
        rows = gather_rows(store, pool, slots.reshape(batch, -1)).view(batch, reads, k, cfg.word_size)
        weights = content_weights(interface.read_keys, rows, interface.read_strengths, cfg.eps, valid)
        if store.links is not None:
            slots, weights = self._mix_read_modes(interface, state, slots, weights)
            rows = gather_rows(store, pool, slots.reshape(batch, -1)).view(batch, reads, k, cfg.word_size)
        touch(store.usage, slots.reshape(batch, -1), (weights > cfg.usage_threshold).reshape(batch, -1), time)
        store.version += 1
        read_words = weighted_read(weights, rows)
        return read_words, SparseMemoryState(store, pool, read_words, weights, slots, write_weights,
                                             write_indices, time, store.version)

    @staticmethod
    def _mix_read_modes(interface: SparseInterface, state: SparseMemoryState, slots: Tensor,
                        content: Tensor) -> Tuple[Tensor, Tensor]:
        """DNC read modes over sparse supports: ``pi_b L^T w + pi_c c + pi_f L w`` (``w``: previous read weights),
        duplicates summed, strongest K slots kept -> ``(slots [B, R, K], weights [B, R, K])``."""
        links, modes = state.store.links, interface.read_modes
        fwd_idx, fwd = directional_candidates(links, state.read_indices, state.read_weights, forward=True)
        bwd_idx, bwd = directional_candidates(links, state.read_indices, state.read_weights, forward=False)
        candidates = torch.cat([bwd_idx, slots, fwd_idx], dim=-1)
        weights = torch.cat([modes[..., :1] * bwd, modes[..., 1:2] * content, modes[..., 2:] * fwd], dim=-1)
        return merge_top(candidates, weights, slots.shape[-1])

    @staticmethod
    def detach_state(state: SparseMemoryState) -> SparseMemoryState:
        """Cut the graph (truncated BPTT): empties the pool; the buffer already holds the current values."""
        SparseMemory._check_current(state)
        store = state.store
        store.last_writer.zero_()
        store.base = None
        store.version += 1
        return state._replace(pool=state.pool[:0].detach(), read_words=state.read_words.detach(),
                              read_weights=state.read_weights.detach(),
                              write_weights=state.write_weights.detach(), version=store.version)

    @staticmethod
    def dense_read_weights(state: SparseMemoryState) -> Tensor:
        """Scatter the sparse read weights to ``[B, R, N]`` (for inspection and comparison with the dense path)."""
        slots = state.store.memory.shape[1]
        dense = state.read_weights.new_zeros(*state.read_weights.shape[:2], slots)
        return dense.scatter_add(-1, state.read_indices, state.read_weights)

    @staticmethod
    def dense_write_weights(state: SparseMemoryState) -> Tensor:
        """Scatter the per-slot write weights to ``[B, H, N]`` (duplicate entries of a slot hold its total)."""
        slots = state.store.memory.shape[1]
        dense = state.write_weights.new_zeros(*state.write_weights.shape[:2], slots)
        index = state.write_indices.unsqueeze(1).expand_as(state.write_weights)
        return dense.scatter_reduce(-1, index, state.write_weights, reduce="amax", include_self=True)


# ------------------------------------------------------------------------------------------------- core
@dataclass(frozen=True)
class SparseDNCCoreConfig(CoreConfig):
    """``SparseDNCCore`` hyper-parameters: the shared core fields plus the sparse memory's (see
    ``SparseMemoryConfig``)."""

    k_neighbours: int = 4
    usage_threshold: float = 0.005
    nlist: Optional[int] = None
    nprobe: int = 8
    index_seed: int = 0
    recycle_buffers: bool = False
    use_links: bool = False
    link_neighbours: int = 4
    layer_norm: bool = False  # rsDNC options, as DNCCoreConfig's (layer-normalised controller, bypass dropout)
    bypass_dropout: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_robust(type(self).__name__, self.layer_norm, self.bypass_dropout)
        if getattr(self, "checkpoint_every", None) not in (None, 0):  # in-place buffers cannot be recomputed
            raise ValueError(f"{type(self).__name__}.checkpoint_every: expected 0 or None (the sparse memory is "
                             f"updated in place, so a segment cannot be recomputed), got {self.checkpoint_every!r}")
        try:
            self.memory_config()
        except ValueError as exc:  # re-raise under this class's name, still one line naming the field
            raise ValueError(str(exc).replace("SparseMemoryConfig.", f"{type(self).__name__}.", 1)) from None

    def memory_config(self) -> SparseMemoryConfig:
        return SparseMemoryConfig(self.memory_size, self.word_size, self.num_reads, self.num_writes,
                                  self.k_neighbours, self.usage_threshold, self.nlist, self.nprobe, self.index_seed,
                                  recycle_buffers=self.recycle_buffers, use_links=self.use_links,
                                  link_neighbours=self.link_neighbours)


class SparseDNCCore(MemoryCore):
    """Controller + sparse access memory (SAM). Same API as ``DNCCore``: ``initial_state``, ``step``,
    batch-first ``forward(x, state=None, return_trace=False)``, ``detach_state``.

    The trace holds the sparse read/write weights scattered to ``[B, T, R, N]`` / ``[B, T, H, N]``; ``usage`` is
    ``None`` (it lives in the in-place store). The state is linear (see ``SparseMemory``).
    """

    config_class = SparseDNCCoreConfig
    memory_class = SparseMemory

    def checkpoint_segment(self, x: Tensor, state) -> None:  # type: ignore[override]
        """Never checkpoint: the in-place sparse buffers cannot be rolled back for a recomputation."""
        return None

    @staticmethod
    def _trace(memory_states: list) -> CoreTrace:
        return CoreTrace(
            read_weights=torch.stack([SparseMemory.dense_read_weights(s) for s in memory_states], dim=1),
            write_weights=torch.stack([SparseMemory.dense_write_weights(s) for s in memory_states], dim=1),
            usage=None,
        )

    @staticmethod
    def detach_state(state):  # type: ignore[override]
        """Detach for truncated BPTT (the memory state's pool is emptied; see ``SparseMemory.detach_state``)."""
        memory_state = SparseMemory.detach_state(state.memory_state)
        return type(state)(MemoryCore.detach_state(state.controller_state), memory_state, state.read_words.detach())
