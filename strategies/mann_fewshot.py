"""MANN few-shot learner on Omniglot episodes (Santoro et al. 2016, "One-shot learning with MANNs").

An episode draws ``n_way`` characters (each rotated by a random multiple of 90°), gives them a
random label permutation, and presents ``n_way × shots`` images in random order. Step ``t`` sees
``(x_t, one-hot y_{t-1})`` (zeros at ``t = 0``) and must predict ``y_t``: the label of an image is
only learnable by binding it in memory when it is revealed one step later. The learner is a
:class:`clmem.memory.cores.MANNCore` (LSTM controller + LRUA memory); the memory state is reset at
every episode, the weights learn across episodes. :func:`accuracy_by_instance` reports accuracy on
the 1st, 2nd, … presentation of a class within an episode (published: 36.4% / 82.8% / … / 98.1%
at 1st / 2nd / … / 10th after ~10⁵ episodes).

Data: ``images_background.npz`` (``images [C, 20, 105, 105]`` bool) from a path or
``$CLMEM_DATA/omniglot``; a missing file raises a one-line ``FileNotFoundError`` naming it.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clmem.memory.cores import MANNCore, MANNCoreConfig

DEFAULT_FILE = "images_background.npz"


def default_omniglot_path() -> Path:
    root = Path(os.environ.get("CLMEM_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    return root / "omniglot" / DEFAULT_FILE


def load_omniglot(path: str | os.PathLike | None = None, size: int = 20) -> Tensor:
    """Omniglot images as ``[C, 20, size, size]`` float tensors in [0, 1] (strokes = 1), area-downsampled."""
    path = Path(path) if path is not None else default_omniglot_path()
    if not path.is_file():
        raise FileNotFoundError(f"Omniglot file not found: {path} (expected images_background.npz with an "
                                "'images' array [C, 20, 105, 105]; pass its path or set CLMEM_DATA)")
    images = np.load(path)["images"]
    x = torch.from_numpy(images.astype(np.float32)).flatten(0, 1).unsqueeze(1)
    x = 1.0 - x if x.mean() > 0.5 else x  # strokes as 1 whatever the file's convention
    x = F.adaptive_avg_pool2d(x, size).squeeze(1)
    return x.reshape(images.shape[0], images.shape[1], size, size)


def sample_episodes(images: Tensor, batch: int, n_way: int = 5, shots: int = 10,
                    generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """``batch`` episodes: inputs ``[B, T, size²]`` and labels ``[B, T]`` (``T = n_way × shots``)."""
    n_chars, n_drawers = images.shape[:2]
    xs, ys = [], []
    for _ in range(batch):
        chars = torch.randperm(n_chars, generator=generator)[:n_way]
        labels = torch.arange(n_way).repeat_interleave(shots)
        order = torch.randperm(len(labels), generator=generator)
        labels = labels[order]
        rot = torch.randint(0, 4, (n_way,), generator=generator)
        drawers = torch.stack([torch.randperm(n_drawers, generator=generator)[:shots] for _ in range(n_way)])
        seen = torch.zeros(n_way, dtype=torch.long)
        frames = []
        for c in labels.tolist():
            img = images[chars[c], drawers[c, seen[c]]]
            frames.append(torch.rot90(img, int(rot[c]), (0, 1)).flatten())
            seen[c] += 1
        xs.append(torch.stack(frames))
        ys.append(labels)
    return torch.stack(xs), torch.stack(ys)


def shifted_inputs(x: Tensor, y: Tensor, n_way: int) -> Tensor:
    """``[B, T, D + n_way]``: each image with the one-hot label of the previous step (zeros first)."""
    prev = F.one_hot(y, n_way).float().roll(1, dims=1)
    prev[:, 0] = 0.0
    return torch.cat([x, prev], dim=-1)


def instance_index(y: Tensor) -> Tensor:
    """``[B, T]`` 1-based presentation number of each step's class within its episode."""
    onehot = F.one_hot(y).long()
    return (onehot.cumsum(1) * onehot).sum(-1)


def accuracy_by_instance(logits: Tensor, y: Tensor, instances=(1, 2, 3, 4, 5, 10)) -> dict[int, float]:
    """Accuracy on the ``k``-th presentation of a class, for each ``k`` in ``instances`` (NaN if none)."""
    correct = (logits.argmax(-1) == y).float()
    idx = instance_index(y)
    return {k: (correct[idx == k].mean().item() if (idx == k).any() else float("nan")) for k in instances}


class MANNFewShot(nn.Module):
    """MANN (LSTM + LRUA) mapping ``(x_t, y_{t-1})`` sequences to label logits ``[B, T, n_way]``."""

    def __init__(self, image_size: int = 20, n_way: int = 5, hidden_size: int = 200, memory_size: int = 128,
                 word_size: int = 40, num_reads: int = 4):
        super().__init__()
        self.n_way = n_way
        self.core = MANNCore(MANNCoreConfig(input_size=image_size * image_size + n_way, output_size=n_way,
                                            hidden_size=hidden_size, memory_size=memory_size, word_size=word_size,
                                            num_reads=num_reads, num_writes=1))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        out, _ = self.core(shifted_inputs(x, y, self.n_way))
        return out


def train_episodes(model: MANNFewShot, images: Tensor, steps: int, batch: int = 16, shots: int = 10,
                   lr: float = 1e-3, seed: int = 0) -> list[float]:
    """Train for ``steps`` batches of episodes with Adam; returns the loss of each step."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        x, y = sample_episodes(images, batch, model.n_way, shots, g)
        logits = model(x, y)
        loss = F.cross_entropy(logits.reshape(-1, model.n_way), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        losses.append(loss.item())
    return losses
