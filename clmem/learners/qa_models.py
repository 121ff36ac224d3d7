"""The DMN+, key-value memory network and story transformer bAbI learners in the model registry
(:data:`clmem.models.MODELS`).

Names: ``dmn_plus`` (:mod:`clmem.learners.dmn`), ``kv_memnn`` (:mod:`clmem.learners.kv_memnn`) and
``story_transformer`` (:mod:`clmem.learners.story_transformer`). Like ``memn2n`` they take bAbI streams with
``encoding: memnet``: ``input_shape`` ``(M + 1, S)``, ``x [B, M + 1, S]`` word ids (rows ``0..M-1`` the
memories, row ``M`` the question) -> answer logits ``[B, num_classes]``, ``num_classes`` being the vocabulary
size. Builders take ``(input_shape, num_classes, **options)``.
"""
from __future__ import annotations

from typing import Tuple

from torch import nn

from clmem.models import MODELS
from clmem.options import Opt

from .dmn import DMNConfig, DMNPlus
from .kv_memnn import KVMemNN, KVMemNNConfig
from .story_transformer import StoryTransformer, StoryTransformerConfig

__all__ = ["QA_KINDS"]

#: Stream kinds these learners take (see :mod:`clmem.compat`).
QA_KINDS = ("qa_memnet",)
_DROPOUT = Opt(float, 0.1, min=0.0, max=0.95, help="dropout probability")


def _memnet_shape(name: str, input_shape) -> Tuple[int, int]:
    """``(M + 1, S)`` -> ``(max_memory M, S)``, or one line naming ``model.name``."""
    if len(input_shape) != 2:
        raise ValueError(f"model.name: {name!r} expects the memnet layout (M + 1, S), got shape {tuple(input_shape)}")
    return max(1, int(input_shape[0]) - 1), int(input_shape[1])


@MODELS.register(
    "dmn_plus",
    {
        "embedding_dim": Opt(int, 80, min=1, help="word embedding and GRU hidden size E"),
        "passes": Opt(int, 3, min=1, max=10, help="episodic memory passes"),
        "dropout": _DROPOUT,
    },
    "Dynamic Memory Network+ (Xiong et al. 2016: input fusion, attention-GRU episodic memory) on bAbI streams "
    "with encoding: memnet",
    accepts=QA_KINDS, config=DMNConfig, config_sizes={"vocab_size": 1},
)
def dmn_plus(input_shape, num_classes, **options) -> nn.Module:
    max_memory, _ = _memnet_shape("dmn_plus", input_shape)
    return DMNPlus(DMNConfig(vocab_size=int(num_classes), **options), max_memory=max_memory)


@MODELS.register(
    "kv_memnn",
    {
        "embedding_dim": Opt(int, 50, min=1, help="embedding size d"),
        "hops": Opt(int, 3, min=1, max=10, help="key-addressing hops (R_j query updates)"),
        "temporal_encoding": Opt(bool, True, help="add a learned slot-index vector to keys and values"),
        "dropout": Opt(float, 0.0, min=0.0, max=0.95, help="dropout on keys and values"),
        "init_std": Opt(float, 0.1, min=1e-6, help="std of the embedding initialisation"),
    },
    "Key-Value Memory Network (Miller et al. 2016) on bAbI streams with encoding: memnet",
    accepts=QA_KINDS, config=KVMemNNConfig, config_sizes={"vocab_size": 1, "max_memory": 1},
)
def kv_memnn(input_shape, num_classes, **options) -> nn.Module:
    max_memory, _ = _memnet_shape("kv_memnn", input_shape)
    return KVMemNN(KVMemNNConfig(vocab_size=int(num_classes), max_memory=max_memory, **options))


@MODELS.register(
    "story_transformer",
    {
        "embedding_dim": Opt(int, 64, min=1, help="model width d (a multiple of num_heads)"),
        "num_layers": Opt(int, 2, min=1, max=12, help="transformer encoder layers"),
        "num_heads": Opt(int, 4, min=1, help="attention heads (must divide embedding_dim)"),
        "ff_size": Opt(int, 128, min=1, help="feed-forward width"),
        "dropout": _DROPOUT,
    },
    "transformer encoder over the story sentences and the question (attention-only baseline) on bAbI streams "
    "with encoding: memnet",
    accepts=QA_KINDS, config=StoryTransformerConfig, config_sizes={"vocab_size": 1, "max_memory": 1},
)
def story_transformer(input_shape, num_classes, **options) -> nn.Module:
    max_memory, _ = _memnet_shape("story_transformer", input_shape)
    return StoryTransformer(StoryTransformerConfig(vocab_size=int(num_classes), max_memory=max_memory, **options))
