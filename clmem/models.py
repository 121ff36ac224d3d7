"""Classifier models by name: an MLP and a small CNN (more join through :data:`MODELS`).

Builders take ``input_shape`` (C, H, W) and ``num_classes`` from the benchmark plus their
declared options.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from clmem.memory._validation import check_batch_input
from clmem.options import Opt
from clmem import registries

#: Sequence and QA learners register from :mod:`clmem.learners.registry` (imported on first lookup).
MODELS = registries.MODELS.extend(extensions=("clmem.learners.registry", "clmem.learners.memories",
                                                 "clmem.learners.qa_models", "clmem.learners.fewshot_models",
                                                 "clmem.learners.sentence_dnc"))


class MLP(nn.Module):
    """Flatten → ``num_layers`` × (Linear, ReLU, Dropout) → Linear classifier head.

    ``features(x)`` returns the penultimate representation (used by replay retrieval).
    """

    def __init__(self, input_size: int, num_classes: int, hidden_size: int = 256,
                 num_layers: int = 2, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = input_size
        for _ in range(num_layers):
            layers += [nn.Linear(width, hidden_size), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden_size
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def get_features(self, x: torch.Tensor) -> torch.Tensor:
        """The input of the head ``[B, hidden]`` (Avalanche's feature convention)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_batch_input(f"{type(self).__name__}.forward", x, self.classifier.weight.dtype)
        return self.classifier(self.get_features(x))


class SmallCNN(nn.Module):
    """Two 3×3 conv blocks (conv, ReLU, 2×2 max-pool when the map allows) → Linear head."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, channels: int = 32,
                 hidden_size: int = 128):
        super().__init__()
        in_ch, height, width = input_shape
        blocks: list[nn.Module] = []
        ch = in_ch
        for out_ch in (channels, 2 * channels):
            blocks += [nn.Conv2d(ch, out_ch, 3, padding=1), nn.ReLU()]
            if min(height, width) >= 4:
                blocks.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            ch = out_ch
        self.body = nn.Sequential(*blocks, nn.Flatten(), nn.Linear(ch * height * width, hidden_size),
                                  nn.ReLU())
        self.classifier = nn.Linear(hidden_size, num_classes)

    def get_features(self, x: torch.Tensor) -> torch.Tensor:
        """The input of the head ``[B, hidden]`` (Avalanche's feature convention)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_batch_input(f"{type(self).__name__}.forward", x, self.classifier.weight.dtype)
        return self.classifier(self.get_features(x))


@MODELS.register(
    "mlp",
    {
        "hidden_size": Opt(int, 256, min=1),
        "num_layers": Opt(int, 2, min=0, max=16),
        "dropout": Opt(float, 0.0, min=0.0, max=0.95),
    },
    "multi-layer perceptron on the flattened input",
    accepts=("image",),
)
def mlp(input_shape, num_classes, hidden_size=256, num_layers=2, dropout=0.0):
    return MLP(math.prod(input_shape), num_classes, hidden_size, num_layers, dropout)


@MODELS.register(
    "cnn",
    {"channels": Opt(int, 32, min=1), "hidden_size": Opt(int, 128, min=1)},
    "two conv blocks and a linear head",
    accepts=("image",),
)
def cnn(input_shape, num_classes, channels=32, hidden_size=128):
    if len(input_shape) != 3:
        raise ValueError(f"model.name: 'cnn' expects image inputs (C, H, W), got shape {input_shape}")
    return SmallCNN(tuple(input_shape), num_classes, channels, hidden_size)


def build_model(name: str, input_shape, num_classes: int, **options) -> nn.Module:
    """Build the model ``name`` for inputs of ``input_shape`` and ``num_classes`` outputs; options not given take
    their registry defaults (the values an experiment file resolves to), so both build the same model."""
    entry = MODELS.get(name)
    defaults = {key: opt.default for key, opt in entry.options.items() if key not in options}
    return entry.builder(tuple(input_shape), num_classes, **defaults, **options)
