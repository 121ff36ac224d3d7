"""Shared input handling of the bAbI memory-network-layout learners (:mod:`clmem.learners.dmn`,
:mod:`clmem.learners.kv_memnn`, :mod:`clmem.learners.story_transformer`).

Layout (see :mod:`clmem.tasks.streams`): ``x [B, M + 1, S]`` word ids, rows ``0..M-1`` the memories (story
sentences, slot 0 the most recent one, all-zero rows are empty slots, words left-aligned), row ``M`` the question.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from clmem.memory._validation import check_batch_input

from .memn2n import encode_sentences


def split_memnet(owner: str, x: Tensor, vocab_size: int, max_memory: int) -> Tuple[Tensor, Tensor]:
    """Check ``x [B, M + 1, S]`` (any dtype holding whole word ids in ``[0, vocab_size)``, ``1 <= M <=
    max_memory``) and split it into ``stories [B, M, S]`` and ``question [B, S]`` (long). A bad ``x`` raises one
    ``ValueError`` line naming ``{owner}.x``."""
    check_batch_input(owner, x)
    if x.dim() != 3 or x.shape[1] < 2:
        raise ValueError(f"{owner}.x: expected word ids [B, M + 1, S] with M >= 1 memory rows, "
                         f"got shape {tuple(x.shape)}")
    if x.shape[1] - 1 > max_memory:
        raise ValueError(f"{owner}.x: expected at most {max_memory} memory rows (the model's max_memory), "
                         f"got M = {x.shape[1] - 1}")
    ids = x.long()
    if x.is_floating_point() and not bool(torch.equal(ids.to(x.dtype), x)):
        raise ValueError(f"{owner}.x: expected whole word ids, got fractional values")
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(f"{owner}.x: expected word ids in [0, {vocab_size}), got values in [{low}, {high}]")
    return ids[:, :-1], ids[:, -1]


def encode_rows(words: Tensor, table: Tensor) -> Tensor:
    """Position-encoded bags of words (Sukhbaatar et al. 2015, J = each row's own length): ``words [..., S]``
    word ids (0 = padding), ``table [V, E]`` -> ``[..., E]``; an all-padding row encodes to zeros."""
    flat = words.reshape(-1, words.shape[-1])
    rows = flat.ne(0).any(dim=-1).nonzero().squeeze(1)  # only the non-empty rows are encoded (many are empty)
    encoded = encode_sentences(flat[rows], table, table.shape[1], position=True)
    out = encoded.new_zeros(len(flat), table.shape[1]).index_copy(0, rows, encoded)
    return out.view(*words.shape[:-1], table.shape[1])


def chronological(valid: Tensor) -> Tuple[Tensor, Tensor]:
    """Order the slots oldest first: ``valid [B, M]`` (True at non-empty slots, slot 0 the most recent) ->
    ``order [B, M]`` (slot indices: the non-empty slots from the highest index down, then the empty ones) and
    ``lengths [B]`` (number of non-empty slots). ``gather(rows, 1, order)`` gives the story in time order
    with the ``lengths[b]`` real sentences first."""
    slots = valid.shape[1]
    index = torch.arange(slots, device=valid.device).expand_as(valid)
    key = torch.where(valid, slots - 1 - index, slots + index)
    return key.argsort(dim=1), valid.sum(dim=1)


def gather_slots(rows: Tensor, order: Tensor) -> Tensor:
    """``rows [B, M, E]`` reordered by ``order [B, M]`` (from :func:`chronological`) -> ``[B, M, E]``."""
    return rows.gather(1, order.unsqueeze(-1).expand(-1, -1, rows.shape[-1]))
