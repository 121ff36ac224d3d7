"""End-to-End Memory Networks (Sukhbaatar et al. 2015) for bAbI-style question answering.

Input: the memory-network encoding of :func:`clmem.tasks.babi.encode_memnet`: ``stories [N, M, S]`` word ids with
slot 0 the most recent sentence (zero rows are empty slots) and ``queries [N, Q]``; output: answer logits
``[N, vocab_size]``.

* **Adjacent weight tying**: K+1 embedding matrices ``E_0..E_K``; hop k uses ``A^k = E_{k-1}``, ``C^k = E_k``;
  the question embedding is ``B = A^1 = E_0`` and the answer matrix is ``W^T = C^K = E_K``.
* **Position encoding** (PE): ``m_i = sum_j l_j * A x_ij`` with
  ``l_kj = (1 - j/J) - (k/d)(1 - 2j/J)`` (1-based j, k; J words, d dimensions); J is the padded sentence length.
  Without PE, a bag of words.
* **Temporal encoding** (TE): ``m_i += T_A(i)``, ``c_i += T_C(i)``, tied like the embeddings; slot i is the
  i-th most recent sentence.
* **Linear start** (LS): while ``linear_start`` is on, the softmax of every memory layer is removed (the
  attention is the raw scores of the non-empty slots); :meth:`MemN2N.end_linear_start` switches it off.
* **Random noise** (RN): in training, about ``random_noise`` × (number of sentences) empty memories are inserted
  at random slots (they shift the temporal indices); memories beyond ``max_memory`` are dropped.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from clmem.tasks._common import check_float, check_int


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

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for field in ("vocab_size", "embedding_dim", "hops", "max_memory"):
            check_int(owner, field, getattr(self, field), 1)
        for field in ("position_encoding", "temporal_encoding", "linear_start"):
            if not isinstance(getattr(self, field), bool):
                raise ValueError(f"{owner}.{field}: expected true or false, got {getattr(self, field)!r}")
        check_float(owner, "random_noise", self.random_noise, 0.0, 1.0)
        check_float(owner, "init_std", self.init_std, 0.0, float("inf"), open_low=True)


def position_encoding(sentence_len: int, embedding_dim: int) -> Tensor:
    """The paper's ``l [J, d]``: ``l[j-1, k-1] = (1 - j/J) - (k/d)(1 - 2j/J)``."""
    j = torch.arange(1, sentence_len + 1, dtype=torch.float32).unsqueeze(1) / sentence_len
    k = torch.arange(1, embedding_dim + 1, dtype=torch.float32).unsqueeze(0) / embedding_dim
    return (1 - j) - k * (1 - 2 * j)


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

    def _encode(self, words: Tensor, embedding: nn.Embedding) -> Tensor:
        """Sum the word embeddings of ``words [..., J]`` (position-weighted with PE) -> ``[..., d]``."""
        vectors = embedding(words)
        if self.config.position_encoding:
            vectors = vectors * position_encoding(words.shape[-1], vectors.shape[-1]).to(vectors)
        return vectors.sum(dim=-2)

    def _memory(self, stories: Tensor, hop: int) -> Tensor:
        memory = self._encode(stories, self.embeddings[hop])
        if self.config.temporal_encoding:
            memory = memory + self.temporal[hop][: stories.shape[1]]
        return memory

    def _attend(self, scores: Tensor, valid: Tensor) -> Tensor:
        if self.linear_start:
            return scores * valid
        return torch.softmax(scores.masked_fill(~valid, float("-inf")), dim=-1).nan_to_num(0.0)

    def forward(self, stories: Tensor, queries: Tensor) -> Tensor:
        """``stories [N, M, S]``, ``queries [N, Q]`` (long) -> answer logits ``[N, vocab_size]``."""
        self._check(stories, queries)
        valid = stories.ne(0).any(dim=-1)
        if self.training and self.config.random_noise > 0:
            stories, valid = self._insert_noise(stories, valid)
        u = self._encode(queries, self.embeddings[0])
        for hop in range(self.config.hops):
            memory_in, memory_out = self._memory(stories, hop), self._memory(stories, hop + 1)
            p = self._attend(torch.einsum("nmd,nd->nm", memory_in, u), valid)
            u = u + torch.einsum("nm,nmd->nd", p, memory_out)
        return u @ self.embeddings[-1].weight.t()

    def attention(self, stories: Tensor, queries: Tensor) -> Tensor:
        """Attention over memory slots per hop, ``[N, K, M]`` (no noise, for inspection)."""
        self._check(stories, queries)
        valid = stories.ne(0).any(dim=-1)
        u, hops = self._encode(queries, self.embeddings[0]), []
        for hop in range(self.config.hops):
            p = self._attend(torch.einsum("nmd,nd->nm", self._memory(stories, hop), u), valid)
            hops.append(p)
            u = u + torch.einsum("nm,nmd->nd", p, self._memory(stories, hop + 1))
        return torch.stack(hops, dim=1)

    def _check(self, stories: Tensor, queries: Tensor) -> None:
        ok = stories.dim() == 3 and queries.dim() == 2 and stories.shape[0] == queries.shape[0]
        if not ok or stories.shape[1] > self.config.max_memory:
            raise ValueError(f"MemN2N.forward: expected stories [N, M <= max_memory ({self.config.max_memory}), S] and queries "
                             f"[N, Q], got {tuple(stories.shape)} and {tuple(queries.shape)}")

    def _insert_noise(self, stories: Tensor, valid: Tensor) -> tuple:
        """Insert ``ceil(random_noise * n)`` empty (but attendable) memories at random slots of each story."""
        n_real = valid.sum(dim=1)
        n_noise = torch.ceil(n_real.float() * self.config.random_noise).long()
        slots = min(self.config.max_memory, int((n_real + n_noise).max()))
        out = stories.new_zeros(stories.shape[0], slots, stories.shape[2])
        out_valid = torch.zeros(stories.shape[0], slots, dtype=torch.bool, device=stories.device)
        for b in range(stories.shape[0]):
            total = int(n_real[b] + n_noise[b])
            is_noise = torch.zeros(total, dtype=torch.bool)
            is_noise[torch.randperm(total)[: int(n_noise[b])]] = True
            real_slots = torch.nonzero(~is_noise).flatten()[: slots].to(stories.device)
            real_slots = real_slots[real_slots < slots]
            out[b, real_slots] = stories[b, valid[b]][: len(real_slots)]
            out_valid[b, : min(total, slots)] = True
        return out, out_valid
