"""End-to-End Memory Networks (Sukhbaatar et al. 2015) for bAbI-style question answering.

Input: the memory-network encoding of :func:`clmem.tasks.babi.encode_memnet`: ``stories [B, M, S]`` word ids with
slot 0 the most recent sentence (zero rows are empty slots, words left-aligned) and ``queries [B, Q]``; output:
answer logits ``[B, vocab_size]``.

* **Adjacent weight tying**: K+1 embedding matrices ``E_0..E_K``; hop k uses ``A^k = E_{k-1}``, ``C^k = E_k``;
  the question embedding is ``B = A^1 = E_0`` and the answer matrix is ``W^T = C^K = E_K``.
* **Position encoding** (PE): ``m_i = sum_j l_j * A x_ij`` with
  ``l_kj = (1 - j/J) - (k/d)(1 - 2j/J)`` (1-based j, k; d dimensions), J the number of words of the sentence
  (or question) itself, as in the paper; or, with ``position_words = J > 0``, the authors' code's
  ``l_kj = 1 + 4 (k - (d+1)/2)(j - (J+1)/2) / (d J)`` with one fixed J for every sentence and question
  (the padded sentence length). Without PE, a bag of words. Computed without materialising
  ``[B, M, S, d]``: ``l_kj = a_j + (k/d) b_j`` with ``a_j = 1 - j/J``, ``b_j = 2j/J - 1``, so each memory is two
  weighted bags of words (one ``embedding_bag`` over all K+1 tables at once).
* **Temporal encoding** (TE): ``m_i += T_A(i)``, ``c_i += T_C(i)``, tied like the embeddings, for the non-empty
  slots; slot i is the i-th most recent sentence.
* **Linear start** (LS): while ``linear_start`` is on, the softmax of every memory layer is removed (the
  attention is the raw scores); :meth:`MemN2N.end_linear_start` puts it back.
* **Random noise** (RN): in training, empty memories are inserted at random places among a story's n
  sentences: the sentences after a blank move one temporal index further back (indices past
  ``max_memory - 1`` are capped), as the authors' code does it; the blanks hold nothing. How many:
  ``random_noise_blanks = "ceil"`` inserts ``ceil(random_noise * n)`` into every story (the paper's "10%
  empty memories"); ``"uniform"`` draws the count per story uniformly from ``0 .. ceil(random_noise * n)``,
  as the authors' Lua/Matlab code does (``nblank = random(0, ceil(n * randomize_time))``).
* **Empty slots**: with ``mask_empty`` (default) they are left out of the softmax; without it the memory has a
  fixed ``max_memory`` slots, the empty ones all-zero (score 0) but inside the softmax, as the paper's
  null-padded memory and the authors' code (slots past ``M`` are counted without being materialised).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clmem.tasks._common import check_float, check_int


NOISE_BLANKS = ("ceil", "uniform")


@dataclass(frozen=True)
class MemN2NConfig:
    """MemN2N hyper-parameters (paper defaults for bAbI: d=20, K=3, 50 memories, RN 10%)."""

    vocab_size: int
    embedding_dim: int = 20
    hops: int = 3
    max_memory: int = 50
    position_encoding: bool = True
    temporal_encoding: bool = True
    linear_start: bool = False
    random_noise: float = 0.1
    init_std: float = 0.1
    mask_empty: bool = True
    position_words: int = 0
    random_noise_blanks: str = "ceil"

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for field in ("vocab_size", "embedding_dim", "hops", "max_memory"):
            check_int(owner, field, getattr(self, field), 1)
        for field in ("position_encoding", "temporal_encoding", "linear_start", "mask_empty"):
            if not isinstance(getattr(self, field), bool):
                raise ValueError(f"{owner}.{field}: expected true or false, got {getattr(self, field)!r}")
        check_float(owner, "random_noise", self.random_noise, 0.0, 1.0)
        check_float(owner, "init_std", self.init_std, 0.0, float("inf"), open_low=True)
        check_int(owner, "position_words", self.position_words, 0)
        if self.random_noise_blanks not in NOISE_BLANKS:
            raise ValueError(f"{owner}.random_noise_blanks: expected one of {', '.join(NOISE_BLANKS)}, "
                             f"got {self.random_noise_blanks!r}")


def position_encoding(sentence_len: int, embedding_dim: int) -> Tensor:
    """The paper's ``l [J, d]``: ``l[j-1, k-1] = (1 - j/J) - (k/d)(1 - 2j/J)``."""
    j = torch.arange(1, sentence_len + 1, dtype=torch.float32).unsqueeze(1) / sentence_len
    k = torch.arange(1, embedding_dim + 1, dtype=torch.float32).unsqueeze(0) / embedding_dim
    return (1 - j) - k * (1 - 2 * j)


def position_weights(words: Tensor, dim: int = 1, fixed_length: int = 0) -> Tuple[Tensor, Tensor]:
    """``words [R, S]`` (left-aligned, 0 = padding) -> ``a, b [R, S]`` with ``l_kj = a_j + (k/d) b_j``:
    ``a_j = 1 - j/J``, ``b_j = 2j/J - 1``, J the row's own number of words (0 at padding). With
    ``fixed_length = J > 0`` (>= S) the authors' code's PE for ``dim = d``: ``c_j = (j - (J+1)/2) / J``,
    ``a_j = 1 - 2 c_j (d+1)/d``, ``b_j = 4 c_j``."""
    real = words.ne(0)
    if fixed_length:
        j = torch.arange(1, words.shape[-1] + 1, dtype=torch.float32, device=words.device)
        c = (j - (fixed_length + 1) / 2) / fixed_length
        return (1 - 2 * c * (dim + 1) / dim) * real, 4 * c * real
    length = real.sum(dim=-1, keepdim=True).clamp(min=1).float()
    ratio = torch.arange(1, words.shape[-1] + 1, dtype=torch.float32, device=words.device) / length
    return (1 - ratio) * real, (2 * ratio - 1) * real


def encode_sentences(words: Tensor, tables: Tensor, dim: int, position: bool, fixed_length: int = 0) -> Tensor:
    """Sum the word embeddings of ``words [R, S]`` in each of the concatenated tables ``[V, H * dim]`` ->
    ``[R, H * dim]``; position-weighted with PE (row 0 of every table is the padding word, skipped);
    ``fixed_length`` as in :func:`position_weights`."""
    if not position:
        return F.embedding_bag(words, tables, mode="sum", padding_idx=0)
    a, b = position_weights(words, dim, fixed_length)
    bags = F.embedding_bag(torch.cat([words, words]), tables, per_sample_weights=torch.cat([a, b]).to(tables.dtype),
                           mode="sum", padding_idx=0)
    k = torch.arange(1, dim + 1, dtype=bags.dtype, device=bags.device) / dim
    return bags[: len(words)] + bags[len(words):] * k.repeat(tables.shape[1] // dim)


def time_indices(valid: Tensor, noise: float, max_memory: int, blanks: str = "ceil") -> Tensor:
    """Temporal index per slot, ``valid [B, M]`` -> ``[B, M]`` long: slot i gets i; with ``noise`` > 0 the
    story's n sentences take a sorted random n-subset of ``0 .. n + z - 1`` (the rest are blanks), capped at
    ``max_memory - 1``; ``z = ceil(noise * n)`` (``blanks="ceil"``) or uniform in ``0 .. ceil(noise * n)`` per
    story (``blanks="uniform"``). Assumes the sentences fill slots ``0 .. n - 1``."""
    batch, slots = valid.shape
    plain = torch.arange(slots, device=valid.device).expand(batch, slots)
    if noise <= 0:
        return plain
    n = valid.sum(dim=1, keepdim=True)
    count = torch.ceil(n.float() * noise).long()
    if blanks == "uniform":
        count = (torch.rand(count.shape, device=valid.device) * (count + 1)).long().clamp(max=count)
    total = n + count
    width = int(total.max()) if batch else 0
    places = torch.arange(width, device=valid.device).expand(batch, width)
    keys = torch.rand(batch, width, device=valid.device).masked_fill(places >= total, 2.0)
    blank = keys.argsort(dim=1).argsort(dim=1) < (total - n)
    real = ~blank & (places < total)
    rank = torch.where(real, real.long().cumsum(dim=1) - 1, torch.full_like(places, width))
    times = torch.zeros(batch, width + 1, dtype=torch.long, device=valid.device).scatter_(1, rank, places)
    times = torch.cat([times[:, :width], plain[:, width:]], dim=1) if slots > width else times[:, :slots]
    return torch.where(valid, times, plain).clamp(max=max_memory - 1)


def attend(scores: Tensor, valid: Tensor, linear: bool, mask_empty: bool, slots: int) -> Tensor:
    """Attention ``[B, M]`` from ``scores [B, M]``: raw scores of the non-empty slots (linear start), a softmax
    over the non-empty slots (``mask_empty``), or a softmax over all ``slots`` slots where the empty ones score
    0 (those past M are counted, not materialised)."""
    if linear:
        return scores * valid
    if mask_empty:
        return torch.softmax(scores.masked_fill(~valid, float("-inf")), dim=-1).nan_to_num(0.0)
    scores = scores * valid
    top = scores.max(dim=-1, keepdim=True).values.clamp(min=0.0).detach()
    weights = torch.exp(scores - top)
    return weights / (weights.sum(dim=-1, keepdim=True) + (slots - scores.shape[1]) * torch.exp(-top))


class MemN2N(nn.Module):
    """K-hop end-to-end memory network with adjacent weight tying."""

    def __init__(self, config: Optional[MemN2NConfig] = None, **kwargs: Any) -> None:
        super().__init__()
        if config is None:
            config = MemN2NConfig(**kwargs)
        elif kwargs:
            raise TypeError("MemN2N: pass either a MemN2NConfig or keyword arguments, not both")
        self.config = config
        self.linear_start = config.linear_start
        d = config.embedding_dim
        self.embeddings = nn.ModuleList(
            nn.Embedding(config.vocab_size, d, padding_idx=0) for _ in range(config.hops + 1))
        self.temporal = nn.ParameterList(
            nn.Parameter(torch.zeros(config.max_memory, d)) for _ in range(config.hops + 1))
        for module in self.embeddings:
            nn.init.normal_(module.weight, std=config.init_std)
            with torch.no_grad():
                module.weight[0].zero_()
        for table in self.temporal:
            nn.init.normal_(table, std=config.init_std)

    def end_linear_start(self) -> None:
        """Put the softmax back into the memory layers (end of the linear-start phase)."""
        self.linear_start = False

    def encode_query(self, queries: Tensor) -> Tensor:
        """``queries [B, Q]`` -> the first internal state ``u [B, d]`` (embedding ``B = E_0``)."""
        c = self.config
        return encode_sentences(queries, self.embeddings[0].weight, c.embedding_dim, c.position_encoding,
                                c.position_words)

    def memories(self, stories: Tensor, times: Optional[Tensor] = None) -> Tensor:
        """``stories [B, M, S]`` -> memory vectors in every table, ``[B, M, K+1, d]`` (TE added to the
        non-empty slots at ``times [B, M]``, default: the slot index)."""
        batch, slots, width = stories.shape
        c = self.config
        tables = torch.cat([e.weight for e in self.embeddings], dim=1)
        valid = stories.ne(0).any(dim=-1)
        rows = valid.flatten().nonzero().squeeze(1)  # only the non-empty slots are encoded (most are empty)
        encoded = encode_sentences(stories.reshape(-1, width)[rows], tables, c.embedding_dim, c.position_encoding,
                                   c.position_words)
        if c.temporal_encoding:
            if times is None:
                times = torch.arange(slots, device=stories.device).expand(batch, slots)
            encoded = encoded + F.embedding(times.flatten()[rows], torch.cat(list(self.temporal), dim=1))
        out = encoded.new_zeros(batch * slots, tables.shape[1]).index_copy(0, rows, encoded)
        return out.view(batch, slots, c.hops + 1, c.embedding_dim)

    def _hops(self, stories: Tensor, queries: Tensor, noise: float) -> Tuple[Tensor, List[Tensor]]:
        self._check(stories, queries)
        valid = stories.ne(0).any(dim=-1)
        times = time_indices(valid, noise, self.config.max_memory, self.config.random_noise_blanks)
        memory = self.memories(stories, times)
        tables = memory.unbind(dim=2)  # one backward stack instead of a zero-filled copy per slice
        u, attention = self.encode_query(queries), []
        for hop in range(self.config.hops):
            scores = torch.einsum("bmd,bd->bm", tables[hop], u)
            p = attend(scores, valid, self.linear_start, self.config.mask_empty, self.config.max_memory)
            u = u + torch.einsum("bm,bmd->bd", p, tables[hop + 1])
            attention.append(p)
        return u, attention

    def forward(self, stories: Tensor, queries: Tensor) -> Tensor:
        """``stories [B, M, S]``, ``queries [B, Q]`` (long) -> answer logits ``[B, vocab_size]``."""
        noise = self.config.random_noise if self.training and self.config.temporal_encoding else 0.0
        u, _ = self._hops(stories, queries, noise)
        return u @ self.embeddings[-1].weight.t()

    def attention(self, stories: Tensor, queries: Tensor) -> Tensor:
        """Attention over memory slots per hop, ``[B, K, M]`` (no noise, for inspection)."""
        return torch.stack(self._hops(stories, queries, 0.0)[1], dim=1)

    def _check(self, stories: Tensor, queries: Tensor) -> None:
        ok = stories.dim() == 3 and queries.dim() == 2 and stories.shape[0] == queries.shape[0]
        if not ok or stories.shape[1] > self.config.max_memory:
            raise ValueError(f"MemN2N.forward: expected stories [N, M <= max_memory ({self.config.max_memory}), S] and queries "
                             f"[N, Q], got {tuple(stories.shape)} and {tuple(queries.shape)}")
        words = self.config.position_words
        if words and max(stories.shape[2], queries.shape[1]) > words:
            raise ValueError(f"MemN2N.forward: position_words is {words}, shorter than the sentences "
                             f"({stories.shape[2]} words) or questions ({queries.shape[1]} words)")

