"""A DNC that reads bAbI one sentence per step, on the memory-network layout (``sentence_dnc`` in
:data:`clmem.models.MODELS`).

The word-stream DNC (``dnc`` on ``encoding: sequence``) spends one recurrent step per word; this learner takes the
same questions in the memnet layout that ``memn2n`` reads, so both can sit in one experiment grid on the same data.

Layout (see :mod:`clmem.learners._memnet`): ``x [B, M + 1, S]`` word ids, rows ``0..M-1`` the story sentences
(slot 0 the most recent one, all-zero rows empty), row ``M`` the question. Each row becomes one step
``[PE bag of words (E), question flag (1)]`` (the position-encoded bag of words of Sukhbaatar et al. 2015, a shared
learned ``[V, E]`` table); the steps run oldest first: the empty slots, then the sentences in story order, then
the question, then ``answer_steps`` more copies of the question step (``K``, default 0). ``time_encoding`` adds
a learned vector per sentence age (slot index, MemN2N's ``T_A``) to each sentence; ``input_dropout`` drops
sentence-vector units in training. The DNC core
(:class:`clmem.memory.cores.DNCCore`, all its options) reads ``[B, M + 1 + K, E + 1]`` and the answer logits
``[B, V]`` are its output at the last step. With ``K = 0`` the answer comes from one read keyed on the question;
each extra step lets the controller read again with what the previous read returned (a second hop, as task 2's
two supporting facts need), as the word-stream DNC of Graves et al. (2016) answers after the question.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from clmem.memory._validation import check_bool, check_fraction
from clmem.memory.cores import DNCCore, DNCCoreConfig
from clmem.models import MODELS
from clmem.options import Opt

from ._memnet import encode_rows, split_memnet
from .registry import SEQUENCE_LEARNERS

__all__ = ["SentenceDNC", "sentence_steps"]


def sentence_steps(x: Tensor, table: Tensor, answer_steps: int = 0, time_table: Optional[Tensor] = None) -> Tensor:
    """The DNC's input steps of a memnet batch.

    Args:
        x: ``[B, M + 1, S]`` long word ids (0 = padding), slot 0 the most recent sentence, row ``M`` the question.
        table: ``[V, E]`` word embeddings.
        answer_steps: ``K >= 0`` copies of the question step appended after it.
        time_table: optional ``[M', E]`` (``M' >= M``) temporal encoding: row ``s`` is added to the sentence in
            slot ``s`` (its age in sentences before the question, the ``T_A`` of Sukhbaatar et al. 2015); empty
            slots and the question get none.

    Returns:
        ``[B, M + 1 + K, E + 1]``: step ``t < M`` is memory slot ``M - 1 - t`` (oldest first; an empty slot is all
        zeros), steps ``M .. M + K`` the question; the last column is 1 at the question steps and 0 elsewhere.
    """
    story = encode_rows(x[:, :-1], table)  # [B, M, E], slot order
    if time_table is not None:
        slots = story.shape[1]
        if time_table.shape[0] < slots:
            raise ValueError(f"sentence_steps.time_table: expected at least {slots} rows, got {time_table.shape[0]}")
        filled = x[:, :-1].ne(0).any(dim=-1, keepdim=True).to(story.dtype)  # [B, M, 1]
        story = story + filled * time_table[:slots]
    rows = torch.cat([story.flip(1), encode_rows(x[:, -1:], table)], dim=1)  # [B, M + 1, E], oldest first
    flag = torch.zeros(*rows.shape[:2], 1, dtype=rows.dtype, device=rows.device)
    flag[:, -1] = 1.0
    steps = torch.cat([rows, flag], dim=-1)
    return torch.cat([steps, steps[:, -1:].expand(-1, answer_steps, -1)], dim=1) if answer_steps else steps


class SentenceDNC(nn.Module):
    """``forward(x [B, M + 1, S] word ids) -> answer logits [B, V]``; see the module docstring."""

    def __init__(self, vocab_size: int, max_memory: int, embedding_dim: int = 32, answer_steps: int = 0,
                 time_encoding: bool = False, input_dropout: float = 0.0, **core_options: Any) -> None:
        super().__init__()
        for field, value, least in (("vocab_size", vocab_size, 1), ("max_memory", max_memory, 1),
                                    ("embedding_dim", embedding_dim, 1), ("answer_steps", answer_steps, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"SentenceDNC.{field}: expected an int >= {least}, got {value!r}")
        check_bool("SentenceDNC", "time_encoding", time_encoding)
        check_fraction("SentenceDNC", "input_dropout", input_dropout)
        self.vocab_size, self.max_memory, self.answer_steps = vocab_size, max_memory, answer_steps
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        nn.init.normal_(self.embedding.weight, std=0.1)
        with torch.no_grad():
            self.embedding.weight[0].zero_()
        self.time_table = nn.Parameter(torch.randn(max_memory, embedding_dim) * 0.1) if time_encoding else None
        self.input_dropout = nn.Dropout(float(input_dropout))
        self.core = DNCCore(input_size=embedding_dim + 1, output_size=vocab_size, **core_options)
        self.config = self.core.config

    def forward(self, x: Tensor) -> Tensor:
        stories, question = split_memnet(f"{type(self).__name__}.forward", x, self.vocab_size, self.max_memory)
        steps = sentence_steps(torch.cat([stories, question.unsqueeze(1)], dim=1), self.embedding.weight,
                               self.answer_steps, self.time_table)
        steps = torch.cat([self.input_dropout(steps[..., :-1]), steps[..., -1:]], dim=-1)
        logits, _ = self.core(steps)
        return logits[:, -1]


_OPTIONS = {"embedding_dim": Opt(int, 32, min=1, help="sentence embedding size E (position-encoded bag of words)"),
            "answer_steps": Opt(int, 0, min=0, help="extra question steps before the answer (more read hops)"),
            "time_encoding": Opt(bool, False, help="learned temporal encoding of each sentence's age (MemN2N T_A)"),
            "input_dropout": Opt(float, 0.0, min=0.0, max=0.999, help="dropout on the sentence vectors"),
            **SEQUENCE_LEARNERS["dnc"]}


def _check_config(embedding_dim: int = 32, answer_steps: int = 0, time_encoding: bool = False,
                  input_dropout: float = 0.0, **core_options: Any) -> DNCCoreConfig:
    """The DNC core's config for the declared options (cross-option checks at validation)."""
    return DNCCoreConfig(input_size=embedding_dim + 1, output_size=1, **core_options)


@MODELS.register(
    "sentence_dnc", _OPTIONS,
    "DNC reading bAbI one position-encoded sentence per step (encoding: memnet), answering at the question step; "
    "every dnc option",
    accepts=("qa_memnet",), config=_check_config,
)
def sentence_dnc(input_shape, num_classes, **options) -> nn.Module:
    if len(input_shape) != 2:
        raise ValueError(f"model.name: 'sentence_dnc' expects the memnet layout (M + 1, S), "
                         f"got shape {tuple(input_shape)}")
    return SentenceDNC(int(num_classes), max(1, int(input_shape[0]) - 1), **options)
