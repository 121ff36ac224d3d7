"""The I/G/O/R memory network of Weston et al. (2014), ``y = R(O(G(I(x), m), q))``, over a FAISS vector store.

Shapes: ``B`` batch, ``D`` memory vector width (``feature_size``), ``N`` slots (``memory_size``), ``k`` slots
retrieved per query.

* **I** (input feature map): an MLP, ``x [B, *input_shape] -> q = I(x) [B, D]``.
* **m** (the memory): ``N`` vectors of width D in an :class:`~clmem.episodic.EpisodicStore` (FAISS ``flat``:
  exact, or ``hnsw``), plus a count per slot. It is persistent state: it is kept across batches and experiences,
  is never trained by the optimiser, changes only through the explicit no-grad :meth:`VectorMemory.write` and
  :meth:`VectorMemory.reset`, and round-trips through ``state_dict`` (the counts are a buffer, the store is the
  module's extra state; deep copies and pickles go through the same state).
* **G** (generalisation, the write): free slots are filled first, each with one ``I(x)``; once the memory is
  full, each ``I(x)`` is merged into the slot nearest to it (squared L2): the slot's vector becomes the running
  mean of everything merged into it, ``m <- (n m + sum f) / (n + c)`` (online k-means, MacQueen 1967; with
  ``max_count`` the count ``n`` is capped, making it an exponential average). A merge is a delete + re-add in the
  store (FAISS has no in-place update for every index type), and the vector comes back under the same slot id.
* **O** (output map, the read): the ``k`` slots nearest to ``q`` (a FAISS search, no gradient), then attention
  over them, ``a = softmax_k(-beta ||q - m_j||^2 / D)``, ``o = sum_j a_j m_j``; ``beta`` is learned. Gradients
  flow through ``a`` into ``q`` and ``beta``; the retrieved vectors themselves are constants of the graph.
* **R** (response): an MLP on ``[q, o]`` -> class logits ``[B, classes]``.

A training forward pass reads first, then writes the batch (so an item never retrieves itself); evaluation
passes only read. Only torch, numpy and faiss (through :mod:`clmem.episodic`) are used here.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Dict, NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn

from clmem.episodic import EpisodicStore, EpisodicStoreConfig
from clmem.memory._validation import check_batch_input
from clmem.tasks._common import check_int

STORE_INDEXES = ("flat", "hnsw")

__all__ = ["IGORConfig", "Retrieved", "VectorMemory", "IGORNetwork", "merge_means", "attend_retrieved",
           "STORE_INDEXES"]


@dataclass(frozen=True)
class IGORConfig:
    """I/G/O/R hyper-parameters: ``input_size`` (flattened input), ``num_classes``, MLP ``hidden_size``, memory
    vectors of ``feature_size`` D in ``memory_size`` slots, ``k`` slots read per query, the store's ``index``,
    the initial ``beta`` of O's attention, ``max_count`` (0: plain running mean; else the cap on a slot's count).
    """

    input_size: int
    num_classes: int
    hidden_size: int = 128
    feature_size: int = 64
    memory_size: int = 256
    k: int = 8
    index: str = "flat"
    beta: float = 1.0
    max_count: int = 0

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for field in ("input_size", "num_classes", "hidden_size", "feature_size", "memory_size", "k"):
            check_int(owner, field, getattr(self, field), 1)
        check_int(owner, "max_count", self.max_count, 0)
        if self.k > self.memory_size:
            raise ValueError(f"{owner}.k: expected an int <= memory_size ({self.memory_size}), got {self.k}")
        if self.index not in STORE_INDEXES:
            raise ValueError(f"{owner}.index: expected one of {', '.join(STORE_INDEXES)}, got {self.index!r}")
        beta = self.beta
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta <= 0:
            raise ValueError(f"{owner}.beta: expected a finite number > 0, got {beta!r}")


# ----------------------------------------------------------------------------------------------- pure maths
def merge_means(old: Tensor, counts: Tensor, features: Tensor, targets: Tensor,
                slots: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Running means after merging each feature into its target slot.

    Args:
        old: the current vectors of the distinct targeted slots, ``[U, D]``, in the order of ``slots`` ids
            (``slots`` is the number ``U`` of distinct targets).
        counts: their counts ``n`` ``[U]`` (already capped).
        features: ``f`` ``[M, D]``.
        targets: ``[M]`` long, each feature's position ``0 .. U-1`` among the distinct slots.

    Returns:
        ``(new vectors [U, D], new counts [U], merged per slot [U])`` with ``new = (n old + sum f) / (n + c)``.
    """
    sums = features.new_zeros(slots, features.shape[1]).index_add_(0, targets, features)
    added = torch.bincount(targets, minlength=slots).to(features.dtype)
    total = counts.to(features.dtype) + added
    return (old * counts.to(features.dtype).unsqueeze(1) + sums) / total.unsqueeze(1), total, added


def attend_retrieved(query: Tensor, retrieved: Tensor, valid: Tensor, beta: Tensor) -> Tuple[Tensor, Tensor]:
    """O's attention over retrieved slots: ``a = softmax_k(-beta ||q - m_j||^2 / D)`` over the valid ones.

    ``query [B, D]``, ``retrieved [B, k, D]``, ``valid [B, k]`` bool, ``beta`` scalar tensor ->
    ``(o [B, D], a [B, k])``; a row with no valid slot reads zeros.
    """
    distance = (query.unsqueeze(1) - retrieved).pow(2).sum(-1) / query.shape[-1]  # [B, k]
    scores = (-beta * distance).masked_fill(~valid, float("-inf"))
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0) * valid
    return torch.matmul(weights.unsqueeze(1), retrieved).squeeze(1), weights


# ----------------------------------------------------------------------------------------------- the memory
class Retrieved(NamedTuple):
    """O's search result: ``vectors [B, k, D]``, ``valid [B, k]`` bool, ``slots [B, k]`` long (``-1``: none)."""

    vectors: Tensor
    valid: Tensor
    slots: Tensor


class _StoreBox:
    """Holds an :class:`EpisodicStore`; deep copies and pickles go through its ``state_dict``."""

    def __init__(self, store: EpisodicStore) -> None:
        self.store = store

    def __deepcopy__(self, memo: Dict[int, Any]) -> "_StoreBox":
        return _StoreBox(_rebuilt(self.store.config, copy.deepcopy(self.store.state_dict(), memo)))

    def __getstate__(self) -> Dict[str, Any]:
        return {"config": self.store.config.to_dict(), "state": self.store.state_dict()}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.store = _rebuilt(EpisodicStoreConfig.from_dict(state["config"]), state["state"])


def _rebuilt(config: EpisodicStoreConfig, state: Dict[str, Any]) -> EpisodicStore:
    store = EpisodicStore(config)
    store.load_state_dict(state)
    return store


class VectorMemory(nn.Module):
    """The memory ``m``: ``N`` vectors of width D in a FAISS store, with G (:meth:`write`) and O's search
    (:meth:`retrieve`). ``counts [N]`` is a buffer; the store travels in ``state_dict`` as extra state."""

    counts: Tensor

    def __init__(self, feature_size: int, memory_size: int, index: str = "flat", max_count: int = 0) -> None:
        super().__init__()
        if index not in STORE_INDEXES:
            raise ValueError(f"VectorMemory.index: expected one of {', '.join(STORE_INDEXES)}, got {index!r}")
        self.max_count = max_count
        self._box = _StoreBox(EpisodicStore(EpisodicStoreConfig(dim=feature_size, capacity=memory_size,
                                                                index=index, metric="l2")))
        self.register_buffer("counts", torch.zeros(memory_size))

    @property
    def store(self) -> EpisodicStore:
        """The FAISS-backed store (read it; change it only through :meth:`write` and :meth:`reset`)."""
        return self._box.store

    def __len__(self) -> int:
        return len(self.store)

    @torch.no_grad()
    def write(self, features: Tensor) -> Tensor:
        """G: store ``features [M, D]``; returns the slot each one went to ``[M]`` (see the module docstring)."""
        config = self.store.config
        if features.dim() != 2 or features.shape[1] != config.dim:
            raise ValueError(f"VectorMemory.write.features: expected shape [M, {config.dim}], "
                             f"got {tuple(features.shape)}")
        if not torch.isfinite(features).all():
            raise ValueError("VectorMemory.write.features: expected finite values, got NaN or inf")
        features = features.detach().to("cpu", torch.float32)
        free = config.capacity - len(self.store)
        placed = self.store.add(features[:free]) if free > 0 else torch.empty(0, dtype=torch.long)
        self.counts[placed.to(self.counts.device)] = 1.0
        rest = features[max(free, 0):]
        if len(rest) == 0:
            return placed
        nearest = self._search(rest, 1, "write.features")[:, 0]
        slots, targets = torch.unique(nearest, sorted=True, return_inverse=True)
        counts = self.counts[slots.to(self.counts.device)].cpu()
        if self.max_count:
            counts = counts.clamp(max=float(self.max_count))
        old = self.store.get(slots).embeddings
        vectors, total, _ = merge_means(old, counts, rest, targets, len(slots))
        self._overwrite(slots, vectors)
        self.counts[slots.to(self.counts.device)] = total.to(self.counts)
        return torch.cat([placed, nearest])

    def _search(self, queries: Tensor, k: int, field: str) -> Tensor:
        """Slot ids ``[Q, k]`` of the ``k`` nearest held vectors (``-1`` past the held count) of a non-empty store.

        FAISS reports no hit where a float32 squared distance overflows: that is an error (a diverged model).
        """
        slots = self.store.search(queries, k)[1]
        if bool((slots[:, 0] < 0).any()):
            raise ValueError(f"VectorMemory.{field}: expected vectors whose squared distances to the memory fit "
                             f"in float32, got values up to {float(queries.abs().max()):.3g}")
        return slots

    def _overwrite(self, slots: Tensor, vectors: Tensor) -> None:
        """Delete ``slots [U]`` (ascending) and re-add ``vectors [U, D]``: the freed slots are the store's lowest
        free ones, so the vectors come back under the same ids (checked)."""
        self.store.remove(slots)
        again = self.store.add(vectors)
        if not torch.equal(again, slots):
            raise RuntimeError(f"VectorMemory.write: re-added vectors went to slots {again.tolist()[:8]}, "
                               f"expected {slots.tolist()[:8]}")

    @torch.no_grad()
    def retrieve(self, query: Tensor, k: int) -> Retrieved:
        """O's search: the ``k`` slots nearest to ``query [B, D]`` (squared L2), on the query's device and dtype."""
        batch, dim = query.shape[0], self.store.config.dim
        if len(self.store) == 0:
            return Retrieved(query.new_zeros(batch, k, dim), torch.zeros(batch, k, dtype=torch.bool,
                                                                         device=query.device),
                             torch.full((batch, k), -1, dtype=torch.long, device=query.device))
        if not torch.isfinite(query).all():
            raise ValueError("VectorMemory.retrieve.query: expected finite values, got NaN or inf")
        slots = self._search(query.detach().to("cpu", torch.float32), k, "retrieve.query")
        valid = slots >= 0
        safe = torch.where(valid, slots, slots[:, :1])  # column 0 always holds a hit (checked by _search)
        vectors = self.store.get(safe.reshape(-1)).embeddings.reshape(batch, k, dim)
        return Retrieved(vectors.to(query), valid.to(query.device), slots.to(query.device))

    @torch.no_grad()
    def reset(self) -> None:
        """Forget every vector."""
        self.store.remove(self.store.live_slots())
        self.counts.zero_()

    def get_extra_state(self) -> Dict[str, Any]:
        return {"store": self.store.state_dict()}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        self.store.load_state_dict(state["store"])

    def extra_repr(self) -> str:
        config = self.store.config
        return f"dim={config.dim}, capacity={config.capacity}, index={config.index!r}, held={len(self.store)}"


# ----------------------------------------------------------------------------------------------- the network
def _mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, outputs))


class IGORNetwork(nn.Module):
    """``forward(x [B, *input_shape]) -> logits [B, num_classes]``; writes the batch into memory when training."""

    def __init__(self, config: Optional[IGORConfig] = None, **kwargs: Any) -> None:
        super().__init__()
        if config is None:
            config = IGORConfig(**kwargs)
        elif kwargs:
            raise TypeError("IGORNetwork: pass either an IGORConfig or keyword arguments, not both")
        self.config = config
        self.input_map = _mlp(config.input_size, config.hidden_size, config.feature_size)  # I
        self.memory = VectorMemory(config.feature_size, config.memory_size, config.index, config.max_count)
        self.log_beta = nn.Parameter(torch.tensor(math.log(config.beta)))
        self.response = _mlp(2 * config.feature_size, config.hidden_size, config.num_classes)  # R

    def features(self, x: Tensor) -> Tensor:
        """I: ``x [B, *input_shape]`` -> ``q [B, D]``."""
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] != self.config.input_size:
            raise ValueError(f"IGORNetwork.forward: expected inputs of {self.config.input_size} values per example, "
                             f"got shape {tuple(x.shape)}")
        return self.input_map(flat)

    def output(self, query: Tensor) -> Tuple[Tensor, Tensor]:
        """O: ``(o [B, D], attention [B, k])`` for ``query [B, D]``."""
        found = self.memory.retrieve(query, self.config.k)
        return attend_retrieved(query, found.vectors, found.valid, self.log_beta.exp())

    def forward(self, x: Tensor) -> Tensor:
        check_batch_input("IGORNetwork.forward", x, self.log_beta.dtype)
        query = self.features(x)
        read, _ = self.output(query)
        if self.training:
            self.memory.write(query)  # G, after the read, under no_grad
        return self.response(torch.cat([query, read], dim=-1))
