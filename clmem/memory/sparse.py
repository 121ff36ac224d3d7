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
3. **Usage** is the last access time (SAM's U^(2)): slots whose read or write weight exceeds ``delta``
   (``usage_threshold``) get the current time step.

Gradients: the memory buffer ``[B, N, W]`` is *not* an autograd node. Rows written since the last
``detach_state`` are kept differentiable in ``state.pool [P, W]`` and ``store.last_writer [B, N]`` says which pool
row holds the current value of a slot; gathers read the pool (or the initial memory) so autograd only sees the
touched rows and every untouched row receives an exactly-zero gradient.

State: ``SparseMemoryState`` is an immutable NamedTuple, but, like the FAISS index it carries, the memory buffer
is updated in place (O(K) per step, never O(N)); states are therefore *linear*: only the most recent state of a
sequence may be stepped (a stale state raises). ``initial_state`` builds fresh buffers and indexes.

``dense_memory_step`` is the dense reference (same maths over all N slots); with ``k_neighbours == memory_size``
and an exact index the sparse reads equal the dense ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, NamedTuple, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._validation import check_int, check_positive_float
from .sparse_index import SlotIndex


@dataclass(frozen=True)
class SparseMemoryConfig:
    """Sparse memory hyper-parameters.

    Attributes:
        memory_size: N slots.  word_size: W.  num_reads: R.  num_writes: H.
        k_neighbours: K slots read per head (``<= memory_size``).
        usage_threshold: delta, weight above which an access refreshes a slot's last-access time.
        nlist: inverted lists of the FAISS index; ``None`` = 1 (exact) when N <= 4096, else round(sqrt(N)).
        nprobe: lists scanned per query when approximate.  index_seed: seed of the index's random centroids.
        eps: added to norms in the cosine similarity.
    """

    memory_size: int
    word_size: int
    num_reads: int
    num_writes: int = 1
    k_neighbours: int = 4
    usage_threshold: float = 0.005
    nlist: Optional[int] = None
    nprobe: int = 8
    index_seed: int = 0
    eps: float = 1e-6

    def __post_init__(self) -> None:
        name = "SparseMemoryConfig"
        check_int(name, "memory_size", self.memory_size, 1)
        check_int(name, "word_size", self.word_size, 1)
        check_int(name, "num_reads", self.num_reads, 1)
        check_int(name, "num_writes", self.num_writes, 1)
        check_int(name, "k_neighbours", self.k_neighbours, 1)
        check_positive_float(name, "usage_threshold", self.usage_threshold)
        check_int(name, "nprobe", self.nprobe, 1)
        check_int(name, "index_seed", self.index_seed, 0)
        check_positive_float(name, "eps", self.eps)
        if self.nlist is not None:
            check_int(name, "nlist", self.nlist, 1)
            if self.nlist > self.memory_size:
                raise ValueError(f"{name}.nlist: expected <= memory_size ({self.memory_size}), got {self.nlist}")
        if self.k_neighbours > self.memory_size:
            raise ValueError(f"{name}.k_neighbours: expected <= memory_size ({self.memory_size}), "
                             f"got {self.k_neighbours}")
        if self.num_writes > self.memory_size:
            raise ValueError(f"{name}.num_writes: expected <= memory_size ({self.memory_size}), got {self.num_writes}")

    @property
    def resolved_nlist(self) -> int:
        """Number of inverted lists actually used (1 means exact k-NN)."""
        if self.nlist is not None:
            return self.nlist
        return 1 if self.memory_size <= 4096 else max(1, round(self.memory_size ** 0.5))

    @property
    def interface_size(self) -> int:
        """Size of the raw interface vector: R*W keys + R strengths + H*W vectors + H gates + H interpolations."""
        return self.num_reads * (self.word_size + 1) + self.num_writes * (self.word_size + 2)


class SparseInterface(NamedTuple):
    """Controller emissions for one step (already squashed, see ``parse_interface``)."""

    read_keys: Tensor  # [B, R, W]
    read_strengths: Tensor  # [B, R], >= 1
    write_vectors: Tensor  # [B, H, W]
    write_gates: Tensor  # [B, H], alpha in (0, 1)
    interpolation_gates: Tensor  # [B, H], gamma in (0, 1)


class SparseStore:
    """Mutable per-sequence buffers shared along a chain of states (see module docstring).

    ``memory [B, N, W]`` (no autograd), ``usage [B, N]`` last access times (long), ``last_writer [B, N]`` pool row
    holding the differentiable current value of a slot (-1: none), ``base`` the initial memory when it requires
    grad, ``indexes`` one ``SlotIndex`` per batch element, ``version`` bumped on every step/detach.
    """

    def __init__(self, memory: Tensor, indexes: List[SlotIndex], base: Optional[Tensor]) -> None:
        batch, slots, _ = memory.shape
        self.memory = memory
        self.usage = torch.zeros(batch, slots, dtype=torch.long, device=memory.device)
        self.last_writer = torch.full((batch, slots), -1, dtype=torch.long, device=memory.device)
        self.base = base
        self.indexes = indexes
        self.version = 0


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


# ----------------------------------------------------------------------------------------------- pure maths
def oneplus(x: Tensor) -> Tensor:
    """``1 + softplus(x)``: strengths in [1, inf)."""
    return 1.0 + F.softplus(x)


def parse_interface(vector: Tensor, config: SparseMemoryConfig) -> SparseInterface:
    """Split and squash a raw interface ``[B, interface_size]`` into a ``SparseInterface``."""
    r, h, w = config.num_reads, config.num_writes, config.word_size
    keys, strengths, vectors, gates, interp = torch.split(vector, [r * w, r, h * w, h, h], dim=-1)
    return SparseInterface(keys.unflatten(-1, (r, w)), oneplus(strengths), vectors.unflatten(-1, (h, w)),
                           torch.sigmoid(gates), torch.sigmoid(interp))


def cosine_similarity(keys: Tensor, rows: Tensor, eps: float) -> Tensor:
    """``keys [..., W]``, ``rows [..., M, W]`` -> ``[..., M]`` cosine similarities."""
    dots = torch.einsum("...w,...mw->...m", keys, rows)
    norms = keys.norm(dim=-1, keepdim=True) * rows.norm(dim=-1)
    return dots / (norms + eps)


def content_weights(keys: Tensor, rows: Tensor, strengths: Tensor, eps: float,
                    valid: Optional[Tensor] = None) -> Tensor:
    """``softmax_M(beta * cos(k, row))``: ``keys [B,R,W]``, ``rows [B,R,M,W]``, ``strengths [B,R]`` -> ``[B,R,M]``.

    ``valid [B, R, M]`` (bool) masks out rows (weight exactly 0).
    """
    scores = strengths.unsqueeze(-1) * cosine_similarity(keys, rows, eps)
    if valid is not None:
        scores = scores.masked_fill(~valid, float("-inf"))
    return torch.softmax(scores, dim=-1)


def weighted_read(weights: Tensor, rows: Tensor) -> Tensor:
    """``weights [B, R, M]``, ``rows [B, R, M, W]`` -> read words ``[B, R, W]``."""
    return torch.einsum("brm,brmw->brw", weights, rows)


def least_used(usage: Tensor, count: int) -> Tensor:
    """``usage [B, N]`` (last access times) -> ``[B, count]`` least recently used slots, ties to the lowest index."""
    slots = usage.shape[-1]
    order = usage * slots + torch.arange(slots, device=usage.device)
    return torch.topk(order, count, dim=-1, largest=False).indices


def sparse_write_weights(prev_read_weights: Tensor, write_gates: Tensor, interpolation_gates: Tensor) -> Tensor:
    """``w^W`` over the J = R*K + H entries ``[prev read slots..., LRU_1..LRU_H]``: ``[B, R, K]``, ``[B, H]``, ``[B, H]``
    -> ``[B, H, J]``; entry ``R*K + h`` is head h's own least-used slot."""
    batch, reads, _ = prev_read_weights.shape
    heads = write_gates.shape[-1]
    previous = prev_read_weights.reshape(batch, 1, -1) / reads  # mean over read heads, once summed per slot
    previous = (write_gates * interpolation_gates).unsqueeze(-1) * previous
    lru = torch.diag_embed(write_gates * (1.0 - interpolation_gates))  # [B, H, H]
    return torch.cat([previous, lru], dim=-1)


def lru_erase(write_weights: Tensor, heads: int) -> Tensor:
    """Erase amount per entry ``[B, J]``: head h's weight on its own LRU entry, 0 on previously read entries."""
    lru_part = torch.diagonal(write_weights[..., -heads:], dim1=-2, dim2=-1)  # [B, H]
    return torch.cat([torch.zeros_like(write_weights[:, 0, :-heads]), lru_part], dim=-1)


def duplicate_matrix(indices: Tensor) -> Tensor:
    """``indices [B, J]`` -> ``[B, J, J]`` with 1 where two entries name the same slot."""
    return (indices.unsqueeze(-1) == indices.unsqueeze(-2)).long()


def first_occurrence(indices: Tensor) -> Tensor:
    """``indices [B, J]`` -> ``[B, J]`` position of the first entry naming the same slot."""
    return torch.argmax(duplicate_matrix(indices), dim=-1)  # argmax returns the first maximal position


def per_slot_total(indices: Tensor, values: Tensor) -> Tensor:
    """Sum ``values [B, H, J]`` over the entries of ``indices [B, J]`` naming the same slot -> ``[B, H, J]``."""
    return torch.einsum("bhj,bjk->bhk", values, duplicate_matrix(indices).to(values.dtype))


def written_rows(old_rows: Tensor, write_weights: Tensor, erase: Tensor, write_vectors: Tensor) -> Tensor:
    """``(1 - e) * old + sum_h w^W_h a_h``: ``old [B,J,W]``, ``w^W [B,H,J]`` (per slot), ``e [B,J]``, ``a [B,H,W]``."""
    return (1.0 - erase).unsqueeze(-1) * old_rows + torch.einsum("bhj,bhw->bjw", write_weights, write_vectors)


# --------------------------------------------------------------------------------------- dense reference
class DenseMemoryState(NamedTuple):
    """State of the dense reference: ``memory [B,N,W]``, ``usage [B,N]`` (long), ``read_weights [B,R,N]``."""

    memory: Tensor
    usage: Tensor
    read_weights: Tensor
    time: int


def dense_initial_state(memory: Tensor, num_reads: int) -> DenseMemoryState:
    """Dense reference state for an initial ``memory [B, N, W]``."""
    batch, slots, _ = memory.shape
    usage = torch.zeros(batch, slots, dtype=torch.long, device=memory.device)
    weights = memory.new_zeros(batch, num_reads, slots)
    return DenseMemoryState(memory, usage, weights, 0)


def dense_memory_step(interface: SparseInterface, state: DenseMemoryState,
                      config: SparseMemoryConfig) -> Tuple[Tensor, DenseMemoryState]:
    """Dense reference of ``SparseMemory.step`` (all N slots touched): -> ``(read_words [B,R,W], next_state)``."""
    time, heads = state.time + 1, config.num_writes
    lru = F.one_hot(least_used(state.usage, heads), state.memory.shape[1]).to(state.memory.dtype)  # [B,H,N]
    alpha, gamma = interface.write_gates.unsqueeze(-1), interface.interpolation_gates.unsqueeze(-1)
    write = alpha * (gamma * state.read_weights.mean(1, keepdim=True) + (1.0 - gamma) * lru)  # [B, H, N]
    erase = (alpha * (1.0 - gamma) * lru).sum(1).clamp(max=1.0)  # [B, N]
    memory = written_rows(state.memory, write, erase, interface.write_vectors)
    usage = torch.where(write.amax(1) > config.usage_threshold, time, state.usage)
    rows = memory.unsqueeze(1).expand(-1, config.num_reads, -1, -1)
    weights = content_weights(interface.read_keys, rows, interface.read_strengths, config.eps)
    usage = torch.where(weights.amax(1) > config.usage_threshold, time, usage)
    return weighted_read(weights, rows), DenseMemoryState(memory, usage, weights, time)


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
    return torch.where((position >= 0).unsqueeze(-1), pool[position.clamp(min=0)], rows)


def touch(usage: Tensor, slots: Tensor, accessed: Tensor, time: int) -> None:
    """In place: ``usage[b, slots] = time`` where ``accessed [B, J]`` (bool); duplicates combine with max."""
    stamps = torch.where(accessed, time, 0).to(usage.dtype)
    usage.scatter_reduce_(1, slots, stamps, reduce="amax", include_self=True)


class SparseMemory(nn.Module):
    """SAM memory without parameters: ``initial_state``, ``step(interface, state)``, ``detach_state``."""

    def __init__(self, config: SparseMemoryConfig) -> None:
        super().__init__()
        self.config = config

    def _new_index(self, rows: np.ndarray) -> SlotIndex:
        cfg = self.config
        index = SlotIndex(cfg.word_size, cfg.resolved_nlist, cfg.nprobe, cfg.index_seed)
        index.build(rows)
        return index

    def initial_state(self, batch_size: int, device: Optional[torch.device] = None,
                      dtype: Optional[torch.dtype] = None, memory: Optional[Tensor] = None) -> SparseMemoryState:
        """Fresh state with zero memory, or with ``memory [B, N, W]`` (gradients reach it if it requires grad)."""
        cfg = self.config
        check_int("SparseMemory.initial_state", "batch_size", batch_size, 1)
        shape = (batch_size, cfg.memory_size, cfg.word_size)
        if memory is None:
            memory = torch.zeros(shape, device=device, dtype=dtype or torch.get_default_dtype())
        elif tuple(memory.shape) != shape:
            raise ValueError(f"SparseMemory.initial_state.memory: expected shape {shape}, got {tuple(memory.shape)}")
        base = memory if memory.requires_grad else None
        buffer = memory.detach().clone()
        rows = buffer.to(torch.float32).cpu().numpy()
        store = SparseStore(buffer, [self._new_index(rows[b]) for b in range(batch_size)], base)
        r, k, h = cfg.num_reads, cfg.k_neighbours, cfg.num_writes
        read_indices = torch.arange(k, device=buffer.device).expand(batch_size, r, k)
        write_indices = torch.cat([read_indices.reshape(batch_size, -1),
                                   torch.arange(h, device=buffer.device).expand(batch_size, h)], dim=-1)
        return SparseMemoryState(
            store=store, pool=buffer.new_zeros(0, cfg.word_size), read_words=buffer.new_zeros(batch_size, r, cfg.word_size),
            read_weights=buffer.new_zeros(batch_size, r, k), read_indices=read_indices.clone(),
            write_weights=buffer.new_zeros(batch_size, h, r * k + h), write_indices=write_indices, time=0, version=0)

    @staticmethod
    def _check_current(state: SparseMemoryState) -> None:
        if state.version != state.store.version:
            raise RuntimeError("SparseMemory: stale state (its buffers were advanced by a later step/detach); "
                               "sparse memory states are linear, step only the latest one")

    def _write(self, interface: SparseInterface, state: SparseMemoryState, time: int) -> Tuple[Tensor, Tensor, Tensor]:
        """Write step -> ``(pool, write_weights [B,H,J], write_indices [B,J])``; updates store and index."""
        cfg, store = self.config, state.store
        batch = state.read_indices.shape[0]
        slots = torch.cat([state.read_indices.reshape(batch, -1), least_used(store.usage, cfg.num_writes)], -1)
        raw = sparse_write_weights(state.read_weights, interface.write_gates, interface.interpolation_gates)
        erase = per_slot_total(slots, lru_erase(raw, cfg.num_writes).unsqueeze(1)).squeeze(1).clamp(max=1.0)
        weights = per_slot_total(slots, raw)
        rows = written_rows(gather_rows(store, state.pool, slots), weights, erase, interface.write_vectors)
        first = first_occurrence(slots).unsqueeze(-1).expand_as(rows)
        rows = torch.gather(rows, 1, first)  # duplicates of a slot hold bitwise-identical rows
        positions = state.pool.shape[0] + torch.arange(rows.shape[0] * rows.shape[1], device=slots.device)
        pool = torch.cat([state.pool, rows.reshape(-1, cfg.word_size)], dim=0)
        self._commit(store, slots, rows.detach(), positions.view_as(slots))
        touch(store.usage, slots, weights.amax(1) > cfg.usage_threshold, time)
        return pool, weights, slots

    @staticmethod
    def _commit(store: SparseStore, slots: Tensor, rows: Tensor, positions: Tensor) -> None:
        """In place, O(J): copy written rows into the buffer, the pool map and the FAISS indexes."""
        batch = _batch_index(slots)
        store.memory[batch, slots] = rows
        store.last_writer[batch, slots] = positions
        slots_np, rows_np = slots.cpu().numpy(), rows.to(torch.float32).cpu().numpy()
        for b, index in enumerate(store.indexes):
            unique, first = np.unique(slots_np[b], return_index=True)
            index.update(unique, rows_np[b, first])

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
        touch(store.usage, slots.reshape(batch, -1), (weights > cfg.usage_threshold).reshape(batch, -1), time)
        store.version += 1
        read_words = weighted_read(weights, rows)
        return read_words, SparseMemoryState(store, pool, read_words, weights, slots, write_weights,
                                             write_indices, time, store.version)

    @staticmethod
    def detach_state(state: SparseMemoryState) -> SparseMemoryState:
        """Cut the graph (truncated BPTT): empties the pool; the buffer already holds the current values."""
        SparseMemory._check_current(state)
        store = state.store
        store.last_writer.fill_(-1)
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
