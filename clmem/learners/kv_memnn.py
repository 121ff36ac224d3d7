"""Key-Value Memory Network (Miller et al. 2016) for bAbI question answering.

Input ``x [B, M + 1, S]`` word ids in the memory-network layout (:mod:`clmem.learners._memnet`: rows ``0..M-1``
the story sentences, slot 0 the most recent, all-zero rows empty; row ``M`` the question) -> answer logits
``[B, V]``. Shapes: B batch, M memory slots, S words, d embedding size, V vocabulary.

The memory holds one (key, value) pair per sentence: the key ``A Phi_K(k_i)`` is the sentence's position-encoded
bag of words in the embedding ``A`` (shared with the question), the value ``C Phi_V(v_i)`` the same sentence in
its own embedding ``C``; with ``temporal_encoding`` a learned vector per slot index (slot 0 the most recent) is
added to keys and values (bAbI's questions depend on recency, which a bag of words does not see).

* **Key addressing** (:func:`key_addressing`): ``p_i = softmax_i(q_j . k_i)`` over the non-empty slots;
* **value reading** (:func:`value_reading`): ``o = sum_i p_i v_i``;
* ``hops`` times the query is updated, ``q_{j+1} = R_j (q_j + o_j)``, one ``R_j [d, d]`` per hop (initialised to
  the identity); ``q_1 = A Phi_X(x)`` is the question's position-encoded bag of words;
* answer: ``logits = q_{H+1} B^T`` with an answer embedding ``B [V, d]`` (every vocabulary word a candidate).

Key hashing (pre-selecting the memories that share a word with the question) is not applied: the bAbI story
is small and its supporting facts often share no word with the question (task 2's second fact).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import torch
from torch import Tensor, nn

from clmem.tasks._common import check_float, check_int

from ._memnet import encode_rows, split_memnet

__all__ = ["KVMemNN", "KVMemNNConfig", "key_addressing", "value_reading"]


@dataclass(frozen=True)
class KVMemNNConfig:
    """Key-value memory network hyper-parameters."""

    vocab_size: int
    max_memory: int
    embedding_dim: int = 50
    hops: int = 3
    temporal_encoding: bool = True
    dropout: float = 0.0
    init_std: float = 0.1

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for field in ("vocab_size", "max_memory", "embedding_dim", "hops"):
            check_int(owner, field, getattr(self, field), 1)
        if not isinstance(self.temporal_encoding, bool):
            raise ValueError(f"{owner}.temporal_encoding: expected true or false, got {self.temporal_encoding!r}")
        check_float(owner, "dropout", self.dropout, 0.0, 0.95)
        check_float(owner, "init_std", self.init_std, 0.0, float("inf"), open_low=True)


def key_addressing(query: Tensor, keys: Tensor, valid: Tensor) -> Tensor:
    """``p_i = exp(q . k_i) / sum_{j valid} exp(q . k_j)``: ``query [B, d]``, ``keys [B, M, d]``, ``valid [B, M]``
    bool -> ``p [B, M]`` (exactly 0 at empty slots; all zeros when a story has no sentence)."""
    scores = torch.einsum("bmd,bd->bm", keys, query)
    return torch.softmax(scores.masked_fill(~valid, float("-inf")), dim=-1).nan_to_num(0.0)


def value_reading(weights: Tensor, values: Tensor) -> Tensor:
    """``o = sum_i p_i v_i``: ``weights [B, M]``, ``values [B, M, d]`` -> ``[B, d]``."""
    return torch.einsum("bm,bmd->bd", weights, values)


class KVMemNN(nn.Module):
    """Key-value memory network on the memory-network layout; see the module docstring."""

    def __init__(self, config: KVMemNNConfig) -> None:
        super().__init__()
        self.config = config
        d = config.embedding_dim
        self.key_embedding = nn.Embedding(config.vocab_size, d, padding_idx=0)  # A: question and keys
        self.value_embedding = nn.Embedding(config.vocab_size, d, padding_idx=0)  # C: values
        self.answer_embedding = nn.Embedding(config.vocab_size, d)  # B: answer candidates
        for table in (self.key_embedding, self.value_embedding, self.answer_embedding):
            nn.init.normal_(table.weight, std=config.init_std)
        with torch.no_grad():
            self.key_embedding.weight[0].zero_()
            self.value_embedding.weight[0].zero_()
        slots = config.max_memory if config.temporal_encoding else 0
        self.key_time = nn.Parameter(torch.randn(slots, d) * config.init_std)
        self.value_time = nn.Parameter(torch.randn(slots, d) * config.init_std)
        self.rotations = nn.ModuleList(nn.Linear(d, d, bias=False) for _ in range(config.hops))
        for r in self.rotations:
            nn.init.eye_(r.weight)
        self.dropout = nn.Dropout(config.dropout)

    def memory(self, stories: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """``stories [B, M, S]`` -> ``keys [B, M, d]``, ``values [B, M, d]`` (zero at empty slots), ``valid [B, M]``."""
        valid = stories.ne(0).any(dim=-1)
        keys = encode_rows(stories, self.key_embedding.weight)
        values = encode_rows(stories, self.value_embedding.weight)
        if self.config.temporal_encoding:
            slots, mask = stories.shape[1], valid.unsqueeze(-1)
            keys = keys + self.key_time[:slots] * mask
            values = values + self.value_time[:slots] * mask
        return self.dropout(keys), self.dropout(values), valid

    def _hops(self, x: Tensor) -> Tuple[Tensor, List[Tensor]]:
        """``x [B, M + 1, S]`` -> final query ``q [B, d]`` and the addressing weights per hop ``[B, M]``."""
        stories, question = split_memnet(f"{type(self).__name__}.forward", x, self.config.vocab_size,
                                         self.config.max_memory)
        keys, values, valid = self.memory(stories)
        query, weights = encode_rows(question, self.key_embedding.weight), []
        for rotation in self.rotations:
            weights.append(key_addressing(query, keys, valid))
            query = rotation(query + value_reading(weights[-1], values))
        return query, weights

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, M + 1, S]`` word ids -> answer logits ``[B, V]``."""
        return self._hops(x)[0] @ self.answer_embedding.weight.t()

    def attention(self, x: Tensor) -> Tensor:
        """Key-addressing weights per hop, ``[B, hops, M]``."""
        return torch.stack(self._hops(x)[1], dim=1)
