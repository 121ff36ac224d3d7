"""Few-shot learners in the model registry (:data:`clmem.models.MODELS`): ``matching_net``.

``matching_net`` is :class:`clmem.learners.matching.MatchingNetwork` (Vinyals et al. 2016, no full context
embeddings; by default a learned inverse temperature on the cosines and no final ReLU) on the ``episodes``
stream kind: ``input_shape`` ``(T, P^2 + n_way)`` and ``num_classes`` = ``n_way`` from the stream
(``omniglot_episodes``), ``x [B, T, P^2 + n_way]`` -> ``logits [B, T, n_way]``, step ``t`` classified by cosine
attention over the earlier steps of its episode whose labels have been revealed.
"""
from __future__ import annotations

import math

from torch import nn

from clmem.models import MODELS
from clmem.options import Opt

from .matching import MatchingConfig, MatchingNetwork

__all__ = ["matching_net"]


@MODELS.register(
    "matching_net",
    {
        "channels": Opt(int, 64, min=1, help="filters of each conv block of the embedding"),
        "blocks": Opt(int, 4, min=1, max=8, help="conv blocks (3x3 conv, batch norm, ReLU, 2x2 max-pool)"),
        "smoothing": Opt(float, 1e-3, min=1e-9, max=0.5, help="uniform mass mixed into the attention's "
                                                                 "label distribution (keeps logits finite)"),
        "scale": Opt(float, 10.0, min=1e-3, max=100.0, help="inverse temperature s of the attention, "
                                                            "softmax(s cos) (1: the paper's raw cosines)"),
        "learn_scale": Opt(bool, True, help="learn the inverse temperature (as log s, starting at scale)"),
        "final_relu": Opt(bool, False, help="the last conv block ends in its ReLU (the paper's; off: signed "
                                            "embeddings and cosines)"),
    },
    "Matching Networks (Vinyals et al. 2016, no full context embeddings): attention over the cosines (times a "
    "learned inverse temperature by default) to the revealed earlier steps of a few-shot episode",
    accepts=("episodes",), config=MatchingConfig, config_sizes={},
)
def matching_net(input_shape, num_classes, **options) -> nn.Module:
    if len(input_shape) != 2:
        raise ValueError(f"model.name: 'matching_net' expects episode inputs (T, P^2 + n_way), "
                         f"got shape {tuple(input_shape)}")
    pixels = int(input_shape[-1]) - int(num_classes)
    side = math.isqrt(max(pixels, 0))
    if pixels < 1 or side * side != pixels:
        raise ValueError(f"model.name: 'matching_net' expects steps of P^2 pixels + {num_classes} label "
                         f"channels, got width {input_shape[-1]} ({pixels} is not a square)")
    return MatchingNetwork(MatchingConfig(image_size=side, n_way=int(num_classes), **options))
