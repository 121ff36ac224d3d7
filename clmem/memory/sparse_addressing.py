"""Pure maths of the sparse access memory (SAM, Rae et al. 2016) and its dense reference.

Shapes: B batch, N slots, W word size, R read heads, H write heads, K neighbours (M rows in general),
J = R*K + H written entries. See ``clmem.memory.sparse`` for the step these functions compose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ._validation import check_int, check_positive_float


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
        recycle_buffers: ``initial_state`` without ``memory`` reuses the buffers and indexes of the previous
            zero-initialised sequence of the same shape, zeroing only the rows it changed (O(touched) instead of
            O(B N)); the states of that previous sequence then become stale.
        use_links: sparse temporal links (``clmem.memory.sparse_links``) and DNC read modes
            (backward, content, forward); ``link_neighbours`` L links are kept per slot and direction.
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
    recycle_buffers: bool = False
    use_links: bool = False
    link_neighbours: int = 4

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
        for flag in ("recycle_buffers", "use_links"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{name}.{flag}: expected a bool, got {getattr(self, flag)!r}")
        check_int(name, "link_neighbours", self.link_neighbours, 1)
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
        """Raw interface size: R*W keys + R strengths + H*W vectors + H gates + H interpolations (+ 3R read modes)."""
        modes = 3 * self.num_reads if self.use_links else 0
        return self.num_reads * (self.word_size + 1) + self.num_writes * (self.word_size + 2) + modes

    @property
    def precedence_size(self) -> int:
        """P = J = R*K + H entries kept in the sparse precedence (links only)."""
        return self.num_reads * self.k_neighbours + self.num_writes


class SparseInterface(NamedTuple):
    """Controller emissions for one step (already squashed, see ``parse_interface``)."""

    read_keys: Tensor  # [B, R, W]
    read_strengths: Tensor  # [B, R], >= 1
    write_vectors: Tensor  # [B, H, W]
    write_gates: Tensor  # [B, H], alpha in (0, 1)
    interpolation_gates: Tensor  # [B, H], gamma in (0, 1)
    read_modes: Optional[Tensor] = None  # [B, R, 3] (backward, content, forward), with use_links only


def oneplus(x: Tensor) -> Tensor:
    """``1 + softplus(x)``: strengths in [1, inf)."""
    return 1.0 + F.softplus(x)


def parse_interface(vector: Tensor, config: SparseMemoryConfig) -> SparseInterface:
    """Split and squash a raw interface ``[B, interface_size]`` into a ``SparseInterface``."""
    r, h, w = config.num_reads, config.num_writes, config.word_size
    sizes = [r * w, r, h * w, h, h] + ([3 * r] if config.use_links else [])
    keys, strengths, vectors, gates, interp, *modes = torch.split(vector, sizes, dim=-1)
    read_modes = torch.softmax(modes[0].unflatten(-1, (r, 3)), dim=-1) if modes else None
    return SparseInterface(keys.unflatten(-1, (r, w)), oneplus(strengths), vectors.unflatten(-1, (h, w)),
                           torch.sigmoid(gates), torch.sigmoid(interp), read_modes)


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
    if count == 1:  # min returns the first minimal index (and is faster than argmin on integer tensors)
        return usage.min(dim=-1, keepdim=True).indices
    slots = usage.shape[-1]
    order = usage * slots + torch.arange(slots, device=usage.device)
    return torch.topk(order, count, dim=-1, largest=False).indices


def sparse_write_weights(prev_read_weights: Tensor, write_gates: Tensor, interpolation_gates: Tensor) -> Tensor:
    """``w^W`` over the J = R*K + H entries ``[prev read slots..., LRU_1..LRU_H]``:
    ``[B, R, K]``, ``[B, H]``, ``[B, H]`` -> ``[B, H, J]``; entry ``R*K + h`` is head h's own least-used slot."""
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
