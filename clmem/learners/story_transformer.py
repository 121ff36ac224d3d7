"""A small transformer encoder over the story sentences and the question: the attention-only bAbI baseline.

Input ``x [B, M + 1, S]`` word ids in the memory-network layout (:mod:`clmem.learners._memnet`: rows ``0..M-1``
the story sentences, slot 0 the most recent, all-zero rows empty; row ``M`` the question) -> answer logits
``[B, V]``. Shapes: B batch, M memory slots, S words, d model width, V vocabulary.

Each sentence and the question become one token: the position-encoded bag of their word embeddings (the MemN2N
PE, J = the row's own length). A sentence token gets a learned embedding of its slot index (slot 0 the most
recent: the story's time order), the question token a learned "question" embedding. ``num_layers`` pre-norm
:class:`torch.nn.TransformerEncoder` layers run over the ``M + 1`` tokens with the empty slots masked out of
every attention (``src_key_padding_mask``); the answer is read from the question token's output (final
LayerNorm, then a linear layer to the vocabulary).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from clmem.tasks._common import check_float, check_int

from ._memnet import encode_rows, split_memnet

__all__ = ["StoryTransformer", "StoryTransformerConfig"]


@dataclass(frozen=True)
class StoryTransformerConfig:
    """Story transformer hyper-parameters (``num_heads`` must divide ``embedding_dim``)."""

    vocab_size: int
    max_memory: int
    embedding_dim: int = 64
    num_layers: int = 2
    num_heads: int = 4
    ff_size: int = 128
    dropout: float = 0.1

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for field in ("vocab_size", "max_memory", "embedding_dim", "num_layers", "num_heads", "ff_size"):
            check_int(owner, field, getattr(self, field), 1)
        if self.embedding_dim % self.num_heads:
            raise ValueError(f"{owner}.num_heads: expected a divisor of embedding_dim ({self.embedding_dim}), "
                             f"got {self.num_heads}")
        check_float(owner, "dropout", self.dropout, 0.0, 0.95)


class StoryTransformer(nn.Module):
    """Transformer encoder over sentence tokens + a question token; see the module docstring."""

    def __init__(self, config: StoryTransformerConfig) -> None:
        super().__init__()
        self.config = config
        d = config.embedding_dim
        self.embedding = nn.Embedding(config.vocab_size, d, padding_idx=0)
        nn.init.normal_(self.embedding.weight, std=d ** -0.5)
        with torch.no_grad():
            self.embedding.weight[0].zero_()
        self.slot = nn.Parameter(torch.randn(config.max_memory, d) * d ** -0.5)
        self.question = nn.Parameter(torch.randn(d) * d ** -0.5)
        layer = nn.TransformerEncoderLayer(d, config.num_heads, config.ff_size, config.dropout, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, config.vocab_size)

    def tokens(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x [B, M + 1, S]`` -> ``tokens [B, M + 1, d]`` (sentences then the question) and ``padding [B, M + 1]``
        (True at the empty slots, which no token attends to)."""
        stories, question = split_memnet(f"{type(self).__name__}.forward", x, self.config.vocab_size,
                                         self.config.max_memory)
        empty = stories.eq(0).all(dim=-1)
        sentences = encode_rows(stories, self.embedding.weight) + self.slot[:stories.shape[1]]
        asked = encode_rows(question, self.embedding.weight) + self.question
        tokens = torch.cat([sentences, asked.unsqueeze(1)], dim=1)
        return tokens, torch.cat([empty, empty.new_zeros(len(empty), 1)], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, M + 1, S]`` word ids -> answer logits ``[B, V]`` (read from the question token)."""
        tokens, padding = self.tokens(x)
        out = self.encoder(tokens, src_key_padding_mask=padding)
        return self.head(self.norm(out[:, -1]))
