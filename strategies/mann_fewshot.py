"""MANN few-shot learner on Omniglot episodes (Santoro et al. 2016, "One-shot learning with MANNs").

An episode draws ``n_way`` characters (each rotated by a random multiple of 90°), gives them a
random label permutation, and presents ``n_way × shots`` images in random order, each slightly rotated and
shifted (the paper's instance-level augmentation; ``jitter=False`` turns it off). Step ``t`` sees
``(x_t, one-hot y_{t-1})`` (zeros at ``t = 0``) and must predict ``y_t``: the label of an image is
only learnable by binding it in memory when it is revealed one step later. The learner is a
:class:`clmem.memory.cores.MANNCore` (LSTM controller + LRUA memory); the memory state is reset at
every episode, the weights learn across episodes. :func:`accuracy_by_instance` reports accuracy on
the 1st, 2nd, … presentation of a class within an episode (published: 36.4% / 82.8% / … / 98.1%
at 1st / 2nd / … / 10th after 10⁵ training "episodes", which public reference implementations run as 10⁵
updates on batches of 16 episodes). Every read head also writes (``num_writes = num_reads``), as in the paper.

:class:`LSTMFewShot` is the paper's memory-less baseline on the same inputs; :func:`train_step` and
:func:`evaluate_by_instance` are what ``benchmarks/mann_omniglot.py`` trains and evaluates with.

Data: ``images_background.npz`` (``images [C, 20, 105, 105]`` bool) from a path or
``$CLMEM_DATA/omniglot`` (:func:`load_omniglot`), or the characters of a Vinyals et al. split
(:func:`load_omniglot_split`); a missing file raises a one-line ``FileNotFoundError`` naming it. The loaders and
episode functions live in :mod:`clmem.tasks.omniglot` (re-exported here), with the ``omniglot_episodes`` stream
whose samples are already in the ``(x_t, y_{t-1})`` layout: ``model(x)`` without ``y`` takes them as they are, so
both learners (and the registry's ``mann``/``lstm``) train on it under any strategy.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clmem.memory.cores import MANNCore, MANNCoreConfig
# the loaders and episode functions live in clmem.tasks.omniglot (re-exported here)
from clmem.tasks.omniglot import (DEFAULT_FILE, accuracy_by_instance, default_omniglot_path,  # noqa: F401
                                  instance_index, load_omniglot, load_omniglot_split, sample_episodes,
                                  shifted_inputs)


def _episode_inputs(x: Tensor, y: Tensor | None, n_way: int, width: int) -> Tensor:
    """``x [B, T, D]`` with labels ``y [B, T]`` → the MANN layout ``[B, T, D + n_way]``; with ``y=None``, ``x``
    is already in that layout (the ``omniglot_episodes`` stream's samples). ``width`` = D + n_way."""
    out = x if y is None else shifted_inputs(x, y, n_way)
    if out.dim() != 3 or out.shape[-1] != width:
        given = "x" if y is None else "x with the previous-label channels"
        raise ValueError(f"few-shot learner: expected {given} of shape [B, T, {width}] (image + {n_way} "
                         f"previous-label channels), got {list(out.shape)}")
    return out


class MANNFewShot(nn.Module):
    """MANN (LSTM + LRUA) mapping ``(x_t, y_{t-1})`` sequences to label logits ``[B, T, n_way]``."""

    def __init__(self, image_size: int = 20, n_way: int = 5, hidden_size: int = 200, memory_size: int = 128,
                 word_size: int = 40, num_reads: int = 4, num_writes: int | None = None):
        super().__init__()
        self.n_way = n_way
        num_writes = num_reads if num_writes is None else num_writes  # paper: every read head also writes
        self.core = MANNCore(MANNCoreConfig(input_size=image_size * image_size + n_way, output_size=n_way,
                                            hidden_size=hidden_size, memory_size=memory_size, word_size=word_size,
                                            num_reads=num_reads, num_writes=num_writes))

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """``(x [B, T, D], y [B, T])`` or, inside a strategy, ``x [B, T, D + n_way]`` → logits ``[B, T, n_way]``."""
        out, _ = self.core(_episode_inputs(x, y, self.n_way, self.core.config.input_size))
        return out


class LSTMFewShot(nn.Module):
    """LSTM-only baseline (Santoro et al.'s comparison): same ``(x_t, y_{t-1})`` input, no external memory."""

    def __init__(self, image_size: int = 20, n_way: int = 5, hidden_size: int = 200):
        super().__init__()
        self.n_way = n_way
        self.lstm = nn.LSTM(image_size * image_size + n_way, hidden_size, batch_first=True)
        self.output_layer = nn.Linear(hidden_size, n_way)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """As :meth:`MANNFewShot.forward`."""
        out, _ = self.lstm(_episode_inputs(x, y, self.n_way, self.lstm.input_size))
        return self.output_layer(out)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor,
               max_grad_norm: float = 10.0) -> float:
    """One update on episodes ``x [B, T, D]``, ``y [B, T]``: cross-entropy over every step; returns the loss."""
    logits = model(x, y)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    optimizer.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return loss.item()


@torch.no_grad()
def evaluate_by_instance(model: nn.Module, images: Tensor, episodes: int, batch: int = 50, shots: int = 10,
                         seed: int = 0, instances=(1, 2, 3, 4, 5, 10), jitter: bool = True) -> dict[int, float]:
    """Accuracy on the k-th presentation of a class over ``episodes`` fresh episodes of ``images``
    (pooled counts, seeded: the same episodes for every model evaluated with the same arguments; ``jitter`` as in
    :func:`sample_episodes`: the paper tests on held-out classes "plus augmentations")."""
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    correct, total = torch.zeros(len(instances)), torch.zeros(len(instances))
    for start in range(0, episodes, batch):
        x, y = sample_episodes(images, min(batch, episodes - start), model.n_way, shots, g, jitter)
        hit = model(x, y).argmax(-1) == y
        idx = instance_index(y, model.n_way)
        for i, k in enumerate(instances):
            correct[i] += hit[idx == k].sum()
            total[i] += (idx == k).sum()
    model.train(was_training)
    return {k: (float(c / n) if n else float("nan")) for k, c, n in zip(instances, correct, total)}


def train_episodes(model: nn.Module, images: Tensor, steps: int, batch: int = 16, shots: int = 10,
                   lr: float = 1e-3, seed: int = 0, jitter: bool = True) -> list[float]:
    """Train for ``steps`` batches of episodes with Adam; returns the loss of each step."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    return [train_step(model, opt, *sample_episodes(images, batch, model.n_way, shots, g, jitter))
            for _ in range(steps)]
