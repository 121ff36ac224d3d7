"""The I/G/O/R memory network of Weston et al. (2014), ``y = R(O(G(I(x), m), q))``, for bAbI question answering,
with one memory per story searched through a FAISS index.

Input ``x [B, S + 1, L]`` word ids in the memory-network layout (:mod:`clmem.learners._memnet`: rows ``0..S-1``
the story sentences, slot 0 the most recent, all-zero rows are padding; row ``S`` the question) -> answer logits
``[B, V]``. Shapes: B batch, S sentences, L words, D embedding width, N memory slots per story, k slots retrieved.

* **I** (input feature map, :meth:`IGORQA.features`): each sentence ``x_i`` becomes a key ``k_i = A Phi(x_i) +
  T_K(t_i)`` and a value ``v_i = C Phi(x_i) + T_V(t_i)``: ``Phi`` the position-encoded bag of words (Sukhbaatar
  et al. 2015), ``A``/``C`` word embeddings, ``T_K``/``T_V`` learned vectors of the sentence's recency ``t_i``
  (slot 0 the most recent; with ``random_noise`` in training, MemN2N's random blanks shift it), so the order of
  the story is visible. The question is ``q_1 = A Phi(question)`` (``A`` shared with the keys, as Weston's
  ``U`` embeds both sides of ``s_O``).
* **G** (generalisation, :func:`write_stories`): a fresh memory of ``N = memory_size`` slots per story; its
  sentences are written oldest first, one slot each, into a FAISS exact index over the keys
  (:class:`clmem.episodic.index.FlatIndex`). A story longer than N merges each further sentence into its
  nearest slot (by ``metric``): the slot's key and value become the running mean of what was merged into it,
  a delete + re-add in the index. Padding rows are never written.
* **O** (output map, :func:`search_stories` + :func:`attend_topk`): per hop, the ``k`` slots nearest to the query
  (FAISS search: largest inner product, or smallest squared L2), then a softmax over their scores,
  ``o = sum_j a_j v_j``; the keys and values are gathered by slot id from the torch tensors, so gradients reach
  the query and every retrieved vector. ``hops`` reads, each next query ``q_{h+1} = q_h + o_h`` (Weston's O has
  two: the second query combines ``q`` and the first memory found).
* **R** (response): a linear layer ``q_{H+1} -> logits [B, V]`` over the answer vocabulary (with
  ``response_hidden`` > 0, a one-hidden-layer ReLU MLP instead, as the issue's "O/R are MLPs": a linear R on the
  summed reads cannot tell whether two of them name the same word, which yes/no questions need).

With ``k >= S`` and ``metric: ip`` the read is a full soft attention over the story (a key-value memory network
without the query rotations); smaller ``k`` makes it sparse, top-k attention as Weston's hard ``argmax``.
Only torch, numpy and faiss (through :mod:`clmem.episodic`) are used here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, NamedTuple, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from clmem.episodic.config import EpisodicStoreConfig
from clmem.episodic.index import FlatIndex
from clmem.tasks._common import check_float, check_int

from ._memnet import chronological, encode_rows, gather_slots, split_memnet
from .memn2n import time_indices

METRICS = ("ip", "l2")

__all__ = ["IGORQAConfig", "IGORQA", "StoryMemory", "METRICS", "write_stories", "search_stories", "attend_topk",
           "memory_scores"]


@dataclass(frozen=True)
class IGORQAConfig:
    """I/G/O/R bAbI hyper-parameters: ``vocab_size`` V, ``max_memory`` (story rows S the input may have), width
    ``embedding_dim`` D, ``memory_size`` N slots per story, ``k`` slots O retrieves per hop, ``hops``, the search
    ``metric``, ``random_noise`` (MemN2N's random temporal blanks in training, 0: none), ``init_std`` and
    ``response_hidden`` (R's hidden units; 0: R is linear)."""

    vocab_size: int
    max_memory: int
    embedding_dim: int = 50
    memory_size: int = 50
    k: int = 10
    hops: int = 3
    metric: str = "ip"
    random_noise: float = 0.1
    init_std: float = 0.1
    response_hidden: int = 0

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for field in ("vocab_size", "max_memory", "embedding_dim", "memory_size", "k", "hops"):
            check_int(owner, field, getattr(self, field), 1)
        if self.k > self.memory_size:
            raise ValueError(f"{owner}.k: expected an int <= memory_size ({self.memory_size}), got {self.k}")
        if self.metric not in METRICS:
            raise ValueError(f"{owner}.metric: expected one of {', '.join(METRICS)}, got {self.metric!r}")
        check_float(owner, "random_noise", self.random_noise, 0.0, 1.0)
        check_float(owner, "init_std", self.init_std, 0.0, float("inf"), open_low=True)
        check_int(owner, "response_hidden", self.response_hidden, 0)


# ----------------------------------------------------------------------------------------------- pure maths
def memory_scores(query: Tensor, keys: Tensor, metric: str) -> Tensor:
    """Similarity of ``query [B, D]`` to ``keys [B, k, D]`` -> ``[B, k]``: ``q . k_j`` (``ip``) or
    ``-||q - k_j||^2`` (``l2``); larger is nearer, the order FAISS ranks by."""
    if metric == "ip":
        return torch.einsum("bkd,bd->bk", keys, query)
    return -(keys - query.unsqueeze(1)).pow(2).sum(-1)


def attend_topk(query: Tensor, keys: Tensor, values: Tensor, slots: Tensor, metric: str) -> Tuple[Tensor, Tensor]:
    """O's read over the retrieved slots: ``a = softmax_j(score(q, k_{s_j}))`` over the valid ones,
    ``o = sum_j a_j v_{s_j}``.

    ``query [B, D]``, ``keys``/``values [B, N, D]`` (torch tensors: gradients reach the gathered rows),
    ``slots [B, k]`` long slot ids (``-1``: no hit) -> ``(o [B, D], a [B, k])``; a row without hits reads zeros.
    """
    valid = slots >= 0
    index = slots.clamp(min=0).unsqueeze(-1).expand(-1, -1, keys.shape[-1])
    scores = memory_scores(query, keys.gather(1, index), metric)
    weights = torch.softmax(scores.masked_fill(~valid, float("-inf")), dim=-1).nan_to_num(0.0)
    return torch.einsum("bk,bkd->bd", weights, values.gather(1, index)), weights


# ----------------------------------------------------------------------------------------------- G and O's search
class StoryMemory(NamedTuple):
    """The memories of a batch of stories: ``keys``/``values [B, N', D]`` (``N' = min(N, S)``; rows past a story's
    ``held`` count are unused), ``counts [B, N']`` sentences merged per slot, ``held [B]`` long, and one FAISS
    index per story over its keys (slot ids ``0 .. held - 1``)."""

    keys: Tensor
    values: Tensor
    counts: Tensor
    held: Tensor
    indexes: List[FlatIndex]


def _numpy(rows: Tensor) -> np.ndarray:
    return np.ascontiguousarray(rows.detach().to("cpu", torch.float32).numpy())


def _merge_overflow(index: FlatIndex, keys: Tensor, values: Tensor, slots: int) -> Tuple[Tensor, Tensor, Tensor]:
    """G past the memory's size: sentences ``slots .. n-1`` of ``keys``/``values [n, D]`` (oldest first) each merge
    into the slot nearest to their key (running mean of key and value, delete + re-add in ``index``) ->
    ``(keys [N, D], values [N, D], counts [N])``."""
    rows_k, rows_v = list(keys[:slots].unbind(0)), list(values[:slots].unbind(0))
    counts = [1.0] * slots
    for t in range(slots, len(keys)):
        j = int(index.search(_numpy(keys[t:t + 1]), 1)[1][0, 0])
        c = counts[j]
        rows_k[j] = (c * rows_k[j] + keys[t]) / (c + 1)
        rows_v[j] = (c * rows_v[j] + values[t]) / (c + 1)
        counts[j] = c + 1
        index.remove(np.array([j]))
        index.put(_numpy(rows_k[j].unsqueeze(0)), np.array([j]), np.zeros(1, dtype=bool))
    return torch.stack(rows_k), torch.stack(rows_v), torch.tensor(counts)


def write_stories(keys: Tensor, values: Tensor, valid: Tensor, memory_size: int, metric: str) -> StoryMemory:
    """G: each story's sentences into a fresh memory of ``memory_size`` N slots.

    ``keys``/``values [B, S, D]`` (I of each row), ``valid [B, S]`` bool (False at padding rows, which are never
    written). Sentences go oldest first to slots ``0, 1, ...``; past N each merges into its nearest slot (see
    :func:`_merge_overflow`). Returns the :class:`StoryMemory`.
    """
    if not torch.isfinite(keys).all():
        raise ValueError("IGORQA.write: expected finite memory keys, got NaN or inf (a diverged model)")
    order, lengths = chronological(valid)
    keys, values = gather_slots(keys, order), gather_slots(values, order)
    width = min(memory_size, keys.shape[1])
    config = EpisodicStoreConfig(dim=keys.shape[-1], capacity=width, index="flat", metric=metric)
    held = lengths.clamp(max=width)
    mem_k, mem_v = keys[:, :width], values[:, :width]
    counts = (torch.arange(width, device=keys.device) < held.unsqueeze(1)).to(keys.dtype)
    indexes, merged = [], {}
    for b, (n, fill) in enumerate(zip(lengths.tolist(), held.tolist())):
        index = FlatIndex(config)
        if fill:
            index.put(_numpy(keys[b, :fill]), np.arange(fill), np.zeros(fill, dtype=bool))
        if n > fill:
            merged[b] = _merge_overflow(index, keys[b, :n], values[b, :n], width)
            counts[b] = merged[b][2].to(counts)
        indexes.append(index)
    if merged:  # rebuilt from rows so that gradients reach every merged sentence
        mem_k = torch.stack([merged[b][0] if b in merged else row for b, row in enumerate(mem_k.unbind(0))])
        mem_v = torch.stack([merged[b][1] if b in merged else row for b, row in enumerate(mem_v.unbind(0))])
    return StoryMemory(mem_k, mem_v, counts, held, indexes)


def search_stories(memory: StoryMemory, query: Tensor, k: int) -> Tensor:
    """O's search: for each story the ``k`` slots nearest to its ``query [B, D]`` in its own FAISS index ->
    ``slots [B, k]`` long on the query's device, best first, ``-1`` past the story's held slots."""
    if not torch.isfinite(query).all():
        raise ValueError("IGORQA.search: expected a finite query, got NaN or inf (a diverged model)")
    rows = _numpy(query)
    found = np.stack([index.search(rows[b:b + 1], k)[1][0] for b, index in enumerate(memory.indexes)])
    return torch.from_numpy(found).to(query.device)


# ----------------------------------------------------------------------------------------------- the network
class IGORQA(nn.Module):
    """I/G/O/R network on the memory-network layout; see the module docstring."""

    def __init__(self, config: IGORQAConfig) -> None:
        super().__init__()
        self.config = config
        d = config.embedding_dim
        self.key_embedding = nn.Embedding(config.vocab_size, d, padding_idx=0)  # A: question and keys
        self.value_embedding = nn.Embedding(config.vocab_size, d, padding_idx=0)  # C: values
        for table in (self.key_embedding, self.value_embedding):
            nn.init.normal_(table.weight, std=config.init_std)
            with torch.no_grad():
                table.weight[0].zero_()
        self.key_time = nn.Parameter(torch.randn(config.max_memory, d) * config.init_std)  # T_K
        self.value_time = nn.Parameter(torch.randn(config.max_memory, d) * config.init_std)  # T_V
        hidden = config.response_hidden
        self.response = (nn.Linear(d, config.vocab_size) if hidden == 0 else  # R
                         nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, config.vocab_size)))

    def features(self, stories: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """I: ``stories [B, S, L]`` -> ``keys [B, S, D]``, ``values [B, S, D]`` (zero at padding), ``valid [B, S]``."""
        c = self.config
        valid = stories.ne(0).any(dim=-1)
        noise = c.random_noise if self.training else 0.0
        times = time_indices(valid, noise, c.max_memory)
        mask = valid.unsqueeze(-1)
        keys = encode_rows(stories, self.key_embedding.weight) + self.key_time[times] * mask
        values = encode_rows(stories, self.value_embedding.weight) + self.value_time[times] * mask
        return keys, values, valid

    def _hops(self, x: Tensor) -> Tuple[Tensor, List[Tuple[Tensor, Tensor]]]:
        """``x [B, S + 1, L]`` -> final query ``[B, D]`` and per hop ``(slots [B, k], attention [B, k])``."""
        c = self.config
        stories, question = split_memnet(f"{type(self).__name__}.forward", x, c.vocab_size, c.max_memory)
        keys, values, valid = self.features(stories)
        memory = write_stories(keys, values, valid, c.memory_size, c.metric)
        query, reads = encode_rows(question, self.key_embedding.weight), []
        for _ in range(c.hops):
            slots = search_stories(memory, query, c.k)
            read, weights = attend_topk(query, memory.keys, memory.values, slots, c.metric)
            reads.append((slots, weights))
            query = query + read
        return query, reads

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, S + 1, L]`` word ids -> answer logits ``[B, V]``."""
        return self.response(self._hops(x)[0])

    def retrievals(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """Per hop the retrieved memory slots and their attention: ``(slots [B, hops, k], weights [B, hops, k])``;
        slot ids count the story's sentences oldest first (``-1``: none)."""
        reads = self._hops(x)[1]
        return torch.stack([s for s, _ in reads], dim=1), torch.stack([w for _, w in reads], dim=1)
