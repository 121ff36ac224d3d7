"""Sequence and question-answering learners in the model registry (:data:`clmem.models.MODELS`).

Names: ``lstm``, ``ntm``, ``dnc``, ``mann``, ``sparse_dnc`` (sequence learners, ``x [B, T, D]`` ->
``logits [B, T, num_classes]``, recurrent state starting at zero for every batch: the learners keep
no state across batches) and ``memn2n`` (bAbI memory-network layout, see
:mod:`clmem.tasks.streams`: ``x [B, M + 1, S]`` word ids, rows ``0..M-1`` the memories and row ``M``
the question -> answer logits ``[B, num_classes]``, ``num_classes`` being the vocabulary size).

Builders take ``(input_shape, num_classes, **options)``: for sequence learners ``input_shape`` is
``(T, D)`` and ``D`` is the input size.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from clmem.memory._validation import check_batch_input
from clmem.memory.controller import CONTROLLER_KINDS
from clmem.memory.ntm import MEMORY_INITS as NTM_MEMORY_INITS, WEIGHT_INITS as NTM_WEIGHT_INITS
from clmem.models import MODELS
from clmem.options import Opt

from .memn2n import NOISE_BLANKS, MemN2N
from .sequence import CORES, make_sequence_learner

__all__ = ["CORE_OPTIONS", "MemN2NClassifier", "SEQUENCE_KINDS", "SEQUENCE_LEARNERS"]

#: Stream kinds a sequence learner (``x [B, T, D]`` -> ``[B, T, V]``) takes: bit sequences, bAbI as a
#: word sequence, few-shot episodes (see :mod:`clmem.compat`).
SEQUENCE_KINDS = ("bits", "qa_sequence", "episodes")
_HIDDEN = {"hidden_size": Opt(int, 64, min=1, help="controller / LSTM hidden units")}
#: Options of every controller + memory core learner (also used by :mod:`clmem.learners.memories`).
CORE_OPTIONS = {
    **_HIDDEN,
    "controller": Opt(str, "lstm", choices=tuple(CONTROLLER_KINDS)),
    "memory_size": Opt(int, 32, min=1, help="memory slots N"),
    "word_size": Opt(int, 16, min=1, help="memory word width W"),
    "num_reads": Opt(int, 1, min=1),
    "num_writes": Opt(int, 1, min=1),
    "clip_value": Opt(float, 20.0, min=1e-6, nullable=True, help="clip of controller/core outputs (null: none)"),
}
#: DNC improvements (Csordás & Schmidhuber 2019, :mod:`clmem.memory.dnc_improved`), off by default
_DNC_IMPROVED = {
    "masked_content": Opt(bool, False, help="mask from the controller on key and memory before the cosine"),
    "dealloc_erase": Opt(bool, False, help="erase freed cells (memory times the free-gate retention) before writing"),
    "link_sharpness": Opt(bool, False, help="forward/backward weights raised to a learned power >= 1, renormalised"),
}
#: rsDNC (Franke et al. 2018) controller options, off by default
_ROBUST = {
    "layer_norm": Opt(bool, False, help="layer-normalised controller (LN-LSTM)"),
    "bypass_dropout": Opt(float, 0.0, min=0.0, max=0.9,
                          help="dropout on the controller output where it bypasses the memory (training only)"),
}
SEQUENCE_LEARNERS: dict[str, dict[str, Opt]] = {
    "lstm": {**_HIDDEN, "num_layers": Opt(int, 1, min=1, max=8)},
    "ntm": {**CORE_OPTIONS, "shift_range": Opt(int, 1, min=0),
            "memory_init": Opt(str, "constant", choices=NTM_MEMORY_INITS,
                               help="initial memory (Collier & Beel 2018): 1e-6 cells, learned tanh(b), fixed tanh(noise)"),
            "weight_init": Opt(str, "onehot", choices=NTM_WEIGHT_INITS,
                               help="initial head weights: one-hot on slot 0 or a learned softmax")},
    "dnc": {**CORE_OPTIONS, **_DNC_IMPROVED, **_ROBUST},
    # Santoro et al. (2016) sizes: LSTM 200, memory 128 x 40, 4 read heads, each also a write head
    "mann": {**CORE_OPTIONS, "hidden_size": Opt(int, 200, min=1, help="controller hidden units"),
             "memory_size": Opt(int, 128, min=1, help="memory slots N"),
             "word_size": Opt(int, 40, min=1, help="memory word width W"),
             "num_reads": Opt(int, 4, min=1),
             "num_writes": Opt(int, None, min=1, nullable=True,
                               help="write heads, <= num_reads (null: one per read head, as in the paper)"),
             "usage_decay": Opt(float, 0.95, min=0.0, max=1.0)},
    "sparse_dnc": {**CORE_OPTIONS, "k_neighbours": Opt(int, 4, min=1), "use_links": Opt(bool, False), **_ROBUST},
}
_DESCRIPTIONS = {
    "lstm": "LSTM sequence learner (baseline)",
    "ntm": "Neural Turing Machine (Graves et al. 2014) as a sequence learner",
    "dnc": "Differentiable Neural Computer (Graves et al. 2016) as a sequence learner",
    "mann": "MANN with least-recently-used access (Santoro et al. 2016) as a sequence learner",
    "sparse_dnc": "sparse DNC / sparse access memory (Rae et al. 2016) as a sequence learner",
}


def _sequence_builder(kind: str):
    def build(input_shape, num_classes, **options):
        if len(input_shape) != 2:
            raise ValueError(f"model.name: {kind!r} expects sequence inputs (T, D), got shape {tuple(input_shape)}")
        return make_sequence_learner(kind, int(input_shape[-1]), int(num_classes), **_resolved(kind, options))

    build.__name__ = f"build_{kind}"
    return build


def _resolved(kind: str, options: dict) -> dict:
    """``mann`` with ``num_writes`` null: one write head per read head (Santoro et al.)."""
    if kind == "mann" and options.get("num_writes", 0) is None:
        return {**options, "num_writes": options.get("num_reads", 4)}
    return options


def mann_config(**options):
    """Registry meta ``config`` of ``mann``: its core config (unit sizes) from the options as the builder resolves
    them (``num_writes`` null: ``num_reads``)."""
    return CORES["mann"].config_class(input_size=1, output_size=1, **_resolved("mann", options))


for _kind, _options in SEQUENCE_LEARNERS.items():
    if _kind == "lstm" or _kind in CORES:
        _check = mann_config if _kind == "mann" else CORES[_kind].config_class if _kind in CORES else None
        MODELS.register(_kind, _options, _DESCRIPTIONS[_kind], accepts=SEQUENCE_KINDS,
                        config=_check)(_sequence_builder(_kind))


class MemN2NClassifier(nn.Module):
    """:class:`MemN2N` on one packed tensor ``x [B, M + 1, S]`` (memories, then the question row)."""

    def __init__(self, memory: MemN2N) -> None:
        super().__init__()
        self.memn2n = memory

    def forward(self, x: Tensor) -> Tensor:
        check_batch_input("MemN2NClassifier.forward", x)  # word ids: any dtype, finite when floating
        x = x.long()
        return self.memn2n(x[:, :-1], x[:, -1])


@MODELS.register(
    "memn2n",
    {
        "embedding_dim": Opt(int, 20, min=1),
        "hops": Opt(int, 3, min=1, max=10),
        "position_encoding": Opt(bool, True),
        "position_formula": Opt(str, "paper", choices=("paper", "reference")),
        "temporal_encoding": Opt(bool, True),
        "linear_start": Opt(bool, False),
        "random_noise": Opt(float, 0.1, min=0.0, max=1.0),
        "random_noise_blanks": Opt(str, "ceil", choices=NOISE_BLANKS),
        "init_std": Opt(float, 0.1, min=1e-6),
    },
    "end-to-end memory network (Sukhbaatar et al. 2015) on bAbI streams with encoding: memnet",
    accepts=("qa_memnet",),
)
def memn2n(input_shape, num_classes, **options):
    if len(input_shape) != 2:
        raise ValueError(f"model.name: 'memn2n' expects the memnet layout (M + 1, S), got shape {tuple(input_shape)}")
    max_memory = max(1, int(input_shape[0]) - 1)
    # "reference": the authors' code's PE with J = the padded sentence / question length S
    words = int(input_shape[1]) if options.pop("position_formula", "paper") == "reference" else 0
    return MemN2NClassifier(MemN2N(vocab_size=int(num_classes), max_memory=max_memory, position_words=words,
                                   **options))
