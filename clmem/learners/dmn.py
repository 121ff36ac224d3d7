"""Dynamic Memory Network plus (DMN+, Xiong et al. 2016) for bAbI question answering.

Input ``x [B, M + 1, S]`` word ids in the memory-network layout (:mod:`clmem.learners._memnet`: rows ``0..M-1``
the story sentences, slot 0 the most recent, all-zero rows empty; row ``M`` the question) -> answer logits
``[B, V]``. Shapes: B batch, M memory slots (sentences), S words per sentence, E embedding / hidden size, V
vocabulary.

* **Input module**: each sentence is a positional-encoded bag of word embeddings (``f_i = sum_j l_j * w_j``, the
  MemN2N PE), then the **input fusion layer**: a bidirectional GRU over the sentences in time order (oldest
  first), ``f_i = fwd_i + bwd_i``; empty slots are skipped.
* **Question module**: a GRU over the question's word embeddings, ``q`` its last hidden state.
* **Episodic memory**, ``passes`` times, ``m^0 = q``: the **attention gate**
  ``z_i = [f_i * q; f_i * m; |f_i - q|; |f_i - m|]``, ``Z_i = W2 tanh(W1 z_i + b1) + b2``,
  ``g = softmax_i(Z)`` over the non-empty facts (:class:`AttentionGate`); the **attention GRU**
  (:func:`attention_gru_step`): ``r_i = sigmoid(W_r f_i + U_r h + b_r)``, ``h~_i = tanh(W f_i + r_i * (U h) + b)``,
  ``h_i = g_i h~_i + (1 - g_i) h_{i-1}``; the episode ``c = h_M``; the **untied memory update**
  ``m^t = ReLU(W^t [m^{t-1}; c^t; q] + b^t)`` (one layer per pass).
* **Answer module**: ``logits = W_a [m^T; q] + b_a``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from clmem.tasks._common import check_float, check_int

from ._memnet import chronological, encode_rows, gather_slots, split_memnet

__all__ = ["AttentionGRUCell", "AttentionGate", "DMNConfig", "DMNPlus", "attention_features", "attention_gru",
           "attention_gru_step", "gate_probabilities", "projected_step"]


@dataclass(frozen=True)
class DMNConfig:
    """DMN+ hyper-parameters (paper, bAbI: hidden size 80, 3 passes, dropout on the input module)."""

    vocab_size: int
    embedding_dim: int = 80
    passes: int = 3
    dropout: float = 0.1

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for field in ("vocab_size", "embedding_dim", "passes"):
            check_int(owner, field, getattr(self, field), 1)
        check_float(owner, "dropout", self.dropout, 0.0, 0.95)


def attention_features(facts: Tensor, question: Tensor, memory: Tensor) -> Tensor:
    """The gate's interaction features ``z [B, M, 4E]`` = ``[f * q; f * m; |f - q|; |f - m|]`` from
    ``facts [B, M, E]``, ``question [B, E]`` and the previous memory ``memory [B, E]``."""
    q, m = question.unsqueeze(1), memory.unsqueeze(1)
    return torch.cat([facts * q, facts * m, (facts - q).abs(), (facts - m).abs()], dim=-1)


def gate_probabilities(scores: Tensor, valid: Tensor) -> Tensor:
    """Softmax over the non-empty facts: ``scores [B, M]``, ``valid [B, M]`` bool -> ``g [B, M]`` (exactly 0 at
    empty slots; a story with no fact gets all zeros)."""
    return torch.softmax(scores.masked_fill(~valid, float("-inf")), dim=-1).nan_to_num(0.0)


class AttentionGate(nn.Module):
    """``g = softmax_i(W2 tanh(W1 z_i + b1) + b2)``, ``z`` from :func:`attention_features`; ``W1 [E, 4E]``,
    ``W2 [1, E]``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(4 * dim, dim)
        self.score = nn.Linear(dim, 1)

    def forward(self, facts: Tensor, question: Tensor, memory: Tensor, valid: Tensor) -> Tensor:
        """``facts [B, M, E]``, ``question, memory [B, E]``, ``valid [B, M]`` -> gates ``g [B, M]``."""
        z = attention_features(facts, question, memory)
        return gate_probabilities(self.score(torch.tanh(self.hidden(z))).squeeze(-1), valid)


def attention_gru_step(fact: Tensor, hidden: Tensor, gate: Tensor, input_weight: Tensor, hidden_weight: Tensor,
                       bias: Tensor) -> Tensor:
    """One attention-GRU step: ``fact [B, E]``, ``hidden [B, H]``, ``gate [B]`` -> ``h' [B, H]``.

    ``input_weight [2H, E]`` stacks ``W_r; W``, ``hidden_weight [2H, H]`` stacks ``U_r; U``, ``bias [2H]`` stacks
    ``b_r; b``: ``r = sigmoid(W_r f + U_r h + b_r)``, ``h~ = tanh(W f + r * (U h) + b)``,
    ``h' = g h~ + (1 - g) h`` (the attention gate replaces the GRU's update gate)."""
    return projected_step(fact @ input_weight.t() + bias, hidden, gate, hidden_weight)


def projected_step(projected: Tensor, hidden: Tensor, gate: Tensor, hidden_weight: Tensor) -> Tensor:
    """:func:`attention_gru_step` from the fact's input projection ``projected = [W_r f + b_r; W f + b]
    [B, 2H]`` (computed for every fact at once by :func:`attention_gru`), ``hidden [B, H]``, ``gate [B]``."""
    size = hidden.shape[-1]
    uh = hidden @ hidden_weight.t()
    reset = torch.sigmoid(projected[:, :size] + uh[:, :size])
    candidate = torch.tanh(projected[:, size:] + reset * uh[:, size:])
    g = gate.unsqueeze(-1)
    return g * candidate + (1 - g) * hidden


class AttentionGRUCell(nn.Module):
    """The parameters of :func:`attention_gru_step` for inputs of size ``E`` and hidden size ``H``."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_weight = nn.Parameter(torch.empty(2 * hidden_size, input_size))
        self.hidden_weight = nn.Parameter(torch.empty(2 * hidden_size, hidden_size))
        self.bias = nn.Parameter(torch.zeros(2 * hidden_size))
        for weight in (self.input_weight, self.hidden_weight):
            nn.init.xavier_uniform_(weight)

    def forward(self, fact: Tensor, hidden: Tensor, gate: Tensor) -> Tensor:
        """``fact [B, E]``, ``hidden [B, H]``, ``gate [B]`` -> ``[B, H]``."""
        return attention_gru_step(fact, hidden, gate, self.input_weight, self.hidden_weight, self.bias)


def attention_gru(facts: Tensor, gates: Tensor, cell: AttentionGRUCell) -> Tensor:
    """Run ``cell`` over ``facts [B, M, E]`` in slot order with ``gates [B, M]`` from ``h_0 = 0``; returns the
    episode ``c = h_M [B, H]``. A slot with gate 0 leaves ``h`` unchanged (empty slots)."""
    hidden = facts.new_zeros(facts.shape[0], cell.hidden_weight.shape[1])
    projected = (facts @ cell.input_weight.t() + cell.bias).unbind(dim=1)
    for i, step in enumerate(projected):
        hidden = projected_step(step, hidden, gates[:, i], cell.hidden_weight)
    return hidden


class DMNPlus(nn.Module):
    """DMN+ on the memory-network layout; see the module docstring."""

    def __init__(self, config: DMNConfig, max_memory: int) -> None:
        super().__init__()
        check_int(type(self).__name__, "max_memory", max_memory, 1)
        self.config, self.max_memory = config, max_memory
        e = config.embedding_dim
        self.embedding = nn.Embedding(config.vocab_size, e, padding_idx=0)
        nn.init.normal_(self.embedding.weight, std=e ** -0.5)
        with torch.no_grad():
            self.embedding.weight[0].zero_()
        self.fusion = nn.GRU(e, e, batch_first=True, bidirectional=True)
        self.question_gru = nn.GRU(e, e, batch_first=True)
        self.gate = AttentionGate(e)
        self.cell = AttentionGRUCell(e, e)
        self.update = nn.ModuleList(nn.Linear(3 * e, e) for _ in range(config.passes))
        self.answer = nn.Linear(2 * e, config.vocab_size)
        self.dropout = nn.Dropout(config.dropout)

    def fuse(self, facts: Tensor, lengths: Tensor) -> Tensor:
        """Input fusion: ``facts [B, M, E]`` in time order with the ``lengths [B]`` real ones first ->
        ``fwd + bwd [B, M, E]`` of the bidirectional GRU over them (zeros past the length)."""
        packed = pack_padded_sequence(facts, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(self.fusion(packed)[0], batch_first=True, total_length=facts.shape[1])
        mask = torch.arange(facts.shape[1], device=facts.device) < lengths.unsqueeze(1)
        return (out[..., :facts.shape[2]] + out[..., facts.shape[2]:]) * mask.unsqueeze(-1)

    def encode_question(self, question: Tensor) -> Tensor:
        """``question [B, S]`` word ids (left-aligned) -> ``q [B, E]``, the GRU's state after the last word."""
        lengths = question.ne(0).sum(dim=1).clamp(min=1).cpu()
        words = self.dropout(self.embedding(question))
        packed = pack_padded_sequence(words, lengths, batch_first=True, enforce_sorted=False)
        return self.question_gru(packed)[1][0]

    def _episodes(self, x: Tensor) -> Tuple[Tensor, Tensor, List[Tensor], Tensor]:
        """``x [B, M + 1, S]`` -> ``(m [B, E], q [B, E], gates per pass [B, M] in time order, order [B, M])``."""
        stories, question = split_memnet(f"{type(self).__name__}.forward", x, self.config.vocab_size,
                                         self.max_memory)
        order, lengths = chronological(stories.ne(0).any(dim=-1))
        facts = gather_slots(encode_rows(stories, self.embedding.weight), order)
        facts = self.dropout(self.fuse(facts, lengths))
        valid = torch.arange(facts.shape[1], device=x.device) < lengths.unsqueeze(1)
        q = self.encode_question(question)
        memory, gates = q, []
        for update in self.update:
            gates.append(self.gate(facts, q, memory, valid))
            episode = attention_gru(facts, gates[-1], self.cell)
            memory = torch.relu(update(torch.cat([memory, episode, q], dim=-1)))
        return memory, q, gates, order

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, M + 1, S]`` word ids -> answer logits ``[B, V]``."""
        memory, q, _, _ = self._episodes(x)
        return self.answer(self.dropout(torch.cat([memory, q], dim=-1)))

    def attention(self, x: Tensor) -> Tensor:
        """The attention gates per pass over the slots of ``x``, ``[B, passes, M]`` (slot order of ``x``)."""
        _, _, gates, order = self._episodes(x)
        stacked = torch.stack(gates, dim=1)
        return torch.zeros_like(stacked).scatter(2, order.unsqueeze(1).expand_as(stacked), stacked)
