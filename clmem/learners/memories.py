"""The associative, hierarchical and gated memories and the I/G/O/R network in the model registry.

Names (see :data:`clmem.models.MODELS`):

* ``associative``, ``hierarchical``, ``gated``: a controller over :mod:`clmem.memory.associative`,
  :mod:`clmem.memory.hierarchical` or :mod:`clmem.memory.gated` as a sequence learner (the
  :class:`~clmem.memory.cores.MemoryCore` plumbing, wrapped by
  :class:`~clmem.learners.sequence.CoreSequenceLearner`): ``input_shape`` ``(T, D)``, ``x [B, T, D]`` ->
  ``logits [B, T, num_classes]``, the recurrent state starting at zero for every batch.
* ``igor``: the I/G/O/R memory network (:mod:`clmem.learners.igor`) on image streams: ``input_shape``
  ``(C, H, W)``, ``x [B, C, H, W]`` -> ``logits [B, num_classes]``; its FAISS memory persists across batches
  and experiences.
* ``igor_qa``: the I/G/O/R network on bAbI streams with ``encoding: memnet`` (:mod:`clmem.learners.igor_qa`):
  ``input_shape`` ``(S + 1, L)``, ``x [B, S + 1, L]`` word ids -> answer logits ``[B, V]``; a fresh FAISS memory
  per story (nothing persists across batches).
"""
from __future__ import annotations

import math

from torch import nn

from clmem.memory.associative import AssociativeCore
from clmem.memory.gated import GatedCore, can_grow
from clmem.memory.hierarchical import HierarchicalCore
from clmem.models import MODELS
from clmem.options import Opt

from .igor import STORE_INDEXES, IGORConfig, IGORNetwork
from .igor_qa import METRICS as IGOR_QA_METRICS, IGORQA, IGORQAConfig
from .registry import CORE_OPTIONS, SEQUENCE_KINDS
from .sequence import CoreSequenceLearner

__all__ = ["MEMORY_LEARNERS", "SEQUENCE_KINDS"]

#: name -> (core class, options, description)
MEMORY_LEARNERS = {
    "associative": (AssociativeCore, {**CORE_OPTIONS, "steps": Opt(int, 1, min=1, max=16, help="Hopfield updates per recall")},
                    "controller + associative memory (modern Hopfield pattern completion, Ramsauer et al. 2020) "
                    "as a sequence learner"),
    "hierarchical": (HierarchicalCore, {
        **CORE_OPTIONS,
        "num_chunks": Opt(int, 4, min=1, help="chunks C of the top level (must divide memory_size)"),
        "read_chunks": Opt(int, 1, min=1, help="chunks searched per access (<= num_chunks)"),
    }, "controller + two-level chunked memory (maximum inner product over chunk means, then content "
       "attention inside) as a sequence learner"),
    "gated": (GatedCore, {**CORE_OPTIONS, "retain_bias": Opt(float, 1.0, min=-10.0, max=10.0,
                                                      help="bias of the per-slot retain-gate logits"),
                          "max_memory_size": Opt(int, None, min=1, nullable=True,
                                                 help="slots the memory may grow to (>= memory_size; null: no growth)"),
                          "grow_threshold": Opt(float, 0.9, min=1e-6, max=1 - 1e-6,
                                                help="usage every slot in use must exceed before one more is added")},
              "controller + memory with learned per-slot write and retain gates as a sequence learner; it may grow "
              "from memory_size to max_memory_size slots (one empty slot when all in use are full, or grow(n))"),
}


def _builder(name: str, core_class: type):
    def build(input_shape, num_classes, **options) -> nn.Module:
        if len(input_shape) != 2:
            raise ValueError(f"model.name: {name!r} expects sequence inputs (T, D), got shape {tuple(input_shape)}")
        core = core_class(input_size=int(input_shape[-1]), output_size=int(num_classes), **options)
        return CoreSequenceLearner(core)

    build.__name__ = f"build_{name}"
    return build


def _grows(options: dict) -> bool:
    """Whether a resolved ``gated`` section can gain slots (``max_memory_size > memory_size``)."""
    return can_grow(options["memory_size"], options.get("max_memory_size"))


for _name, (_core, _options, _description) in MEMORY_LEARNERS.items():
    _meta = {"grows": _grows} if _name == "gated" else {}
    MODELS.register(_name, _options, _description, accepts=SEQUENCE_KINDS,
                    config=_core.config_class, **_meta)(_builder(_name, _core))


@MODELS.register(
    "igor",
    {
        "hidden_size": Opt(int, 128, min=1, help="hidden units of the I and R MLPs"),
        "feature_size": Opt(int, 64, min=1, help="memory vector width D"),
        "memory_size": Opt(int, 256, min=1, help="memory slots N"),
        "k": Opt(int, 8, min=1, help="slots O retrieves per query (<= memory_size)"),
        "index": Opt(str, "flat", choices=STORE_INDEXES, help="FAISS index of the memory"),
        "beta": Opt(float, 1.0, min=1e-6, help="initial sharpness of O's attention (learned)"),
        "max_count": Opt(int, 0, min=0, help="cap on a slot's running-mean count (0: none)"),
    },
    "I/G/O/R memory network (Weston et al. 2014) with its memory in a FAISS episodic store",
    accepts=("image",), config=IGORConfig, config_sizes={"input_size": 1, "num_classes": 1},
)
def igor(input_shape, num_classes, **options) -> nn.Module:
    if len(input_shape) != 3:
        raise ValueError(f"model.name: 'igor' expects image inputs (C, H, W), got shape {tuple(input_shape)}")
    return IGORNetwork(IGORConfig(input_size=math.prod(int(s) for s in input_shape), num_classes=int(num_classes),
                                  **options))


@MODELS.register(
    "igor_qa",
    {
        "embedding_dim": Opt(int, 50, min=1, help="embedding and memory vector width D"),
        "memory_size": Opt(int, 50, min=1, help="memory slots N per story (a longer story merges into the nearest)"),
        "k": Opt(int, 10, min=1, help="slots O retrieves per hop through FAISS (<= memory_size)"),
        "hops": Opt(int, 3, min=1, max=10, help="O's reads, each next query q + o"),
        "metric": Opt(str, "ip", choices=IGOR_QA_METRICS, help="nearest = largest inner product or smallest L2"),
        "random_noise": Opt(float, 0.1, min=0.0, max=1.0, help="MemN2N's random temporal blanks in training"),
        "init_std": Opt(float, 0.1, min=1e-6, help="std of the embedding initialisation"),
        "response_hidden": Opt(int, 0, min=0, max=4096, help="hidden units of R (0: linear, Weston's; else a ReLU MLP)"),
    },
    "I/G/O/R memory network (Weston et al. 2014) on bAbI streams with encoding: memnet: a FAISS memory per "
    "story, top-k retrieval and attention over several hops, a linear response",
    accepts=("qa_memnet",), config=IGORQAConfig, config_sizes={"vocab_size": 1, "max_memory": 1},
)
def igor_qa(input_shape, num_classes, **options) -> nn.Module:
    if len(input_shape) != 2:
        raise ValueError(f"model.name: 'igor_qa' expects the memnet layout (S + 1, L), got shape {tuple(input_shape)}")
    return IGORQA(IGORQAConfig(vocab_size=int(num_classes), max_memory=max(1, int(input_shape[0]) - 1), **options))
