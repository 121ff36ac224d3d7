"""MANN few-shot learner on Omniglot episodes (Santoro et al. 2016, "One-shot learning with MANNs").

An episode draws ``n_way`` characters (each rotated by a random multiple of 90°), gives them a
random label permutation, and presents ``n_way × shots`` images in random order. Step ``t`` sees
``(x_t, one-hot y_{t-1})`` (zeros at ``t = 0``) and must predict ``y_t``: the label of an image is
only learnable by binding it in memory when it is revealed one step later. The learner is a
:class:`clmem.memory.cores.MANNCore` (LSTM controller + LRUA memory); the memory state is reset at
every episode, the weights learn across episodes. :func:`accuracy_by_instance` reports accuracy on
the 1st, 2nd, … presentation of a class within an episode (published: 36.4% / 82.8% / … / 98.1%
at 1st / 2nd / … / 10th after ~10⁵ episodes).

:class:`LSTMFewShot` is the paper's memory-less baseline on the same inputs; :func:`train_step` and
:func:`evaluate_by_instance` are what ``benchmarks/mann_omniglot.py`` trains and evaluates with.

Data: ``images_background.npz`` (``images [C, 20, 105, 105]`` bool) from a path or
``$CLMEM_DATA/omniglot`` (:func:`load_omniglot`), or the characters of a Vinyals et al. split
(:func:`load_omniglot_split`); a missing file raises a one-line ``FileNotFoundError`` naming it.
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


def _downsample(images: np.ndarray, size: int, chunk: int = 64) -> Tensor:
    """``[C, D, 105, 105]`` bool → ``[C, D, size, size]`` float in [0, 1], strokes = 1, area-averaged.

    Converts ``chunk`` characters at a time (the whole background set as float32 would be ~850 MB).
    """
    strokes_are_zero = images[: min(len(images), chunk)].mean() > 0.5  # Omniglot: black strokes on white
    out = []
    for start in range(0, len(images), chunk):
        block = torch.from_numpy(images[start:start + chunk].astype(np.float32))
        block = 1.0 - block if strokes_are_zero else block
        out.append(F.adaptive_avg_pool2d(block, size))
    return torch.cat(out)


def load_omniglot(path: str | os.PathLike | None = None, size: int = 20) -> Tensor:
    """Omniglot images as ``[C, 20, size, size]`` float tensors in [0, 1] (strokes = 1), area-downsampled."""
    path = Path(path) if path is not None else default_omniglot_path()
    if not path.is_file():
        raise FileNotFoundError(f"Omniglot file not found: {path} (expected images_background.npz with an "
                                "'images' array [C, 20, 105, 105]; pass its path or set CLMEM_DATA)")
    return _downsample(np.load(path)["images"], size)


def load_omniglot_split(root: str | os.PathLike, split: str, size: int = 20) -> Tensor:
    """The characters of a Vinyals et al. split (``splits_vinyals/<split>.txt``: ``train``, ``val``,
    ``trainval`` or ``test``) as ``[C, 20, size, size]``, C = distinct ``alphabet/character`` names
    (1200 for ``trainval``, 423 for ``test``: Santoro et al.'s 1200 / 423 split). The ``rotNNN``
    suffixes are dropped: rotations are drawn per episode by :func:`sample_episodes`.
    ``root`` holds ``character_index.tsv``, both npz files and ``splits_vinyals/``.
    """
    root = Path(root)
    listing, index = root / "splits_vinyals" / f"{split}.txt", root / "character_index.tsv"
    for path in (listing, index):
        if not path.is_file():
            raise FileNotFoundError(f"Omniglot file not found: {path} (expected the Omniglot folder with "
                                    "character_index.tsv and splits_vinyals/)")
    rows: dict[str, tuple[str, int]] = {}
    for line in index.read_text().splitlines()[1:]:
        _, npz, alphabet, character, row = line.split("\t")
        rows[f"{alphabet}/{character}"] = (npz, int(row))
    names = list(dict.fromkeys("/".join(line.split("/")[:2]) for line in listing.read_text().split()))
    missing = [n for n in names if n not in rows]
    if missing:
        raise ValueError(f"load_omniglot_split: {len(missing)} characters of {listing} are not in {index} "
                         f"(first: {missing[0]})")
    parts = []
    for npz in sorted({rows[n][0] for n in names}):
        wanted = [rows[n][1] for n in names if rows[n][0] == npz]
        parts.append(_downsample(np.load(root / f"{npz}.npz")["images"][wanted], size))
    return torch.cat(parts)


def sample_episodes(images: Tensor, batch: int, n_way: int = 5, shots: int = 10,
                    generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """``batch`` episodes from ``images [C, D, S, S]``: inputs ``[B, T, S²]``, labels ``[B, T]`` (T = n_way × shots).

    Per episode: ``n_way`` distinct characters, each rotated by its own random multiple of 90° (class
    augmentation) and given label 0..n_way-1 in random order; ``shots`` distinct drawers per character;
    the ``T`` presentations in random order.
    """
    n_chars, n_drawers = images.shape[:2]
    if n_way > n_chars or shots > n_drawers:
        raise ValueError(f"sample_episodes: {n_way}-way {shots}-shot needs >= {n_way} characters and >= {shots} "
                         f"drawers, images have {n_chars} and {n_drawers}")
    chars = torch.rand(batch, n_chars, generator=generator).argsort(1)[:, :n_way]  # [B, n_way]
    rot = torch.randint(0, 4, (batch, n_way), generator=generator)  # [B, n_way]
    drawers = torch.rand(batch, n_way, n_drawers, generator=generator).argsort(-1)[..., :shots]  # [B, n_way, shots]
    order = torch.rand(batch, n_way * shots, generator=generator).argsort(1)
    y = torch.arange(n_way).repeat_interleave(shots)[order]  # [B, T]
    b = torch.arange(batch).unsqueeze(1)
    frames = images[chars[b, y], drawers[b, y, instance_index(y, n_way) - 1]].clone()  # [B, T, S, S]
    turns = rot[b, y]
    for k in (1, 2, 3):
        mask = turns == k
        frames[mask] = torch.rot90(frames[mask], k, (-2, -1))
    return frames.flatten(2), y


def shifted_inputs(x: Tensor, y: Tensor, n_way: int) -> Tensor:
    """``[B, T, D + n_way]``: each image with the one-hot label of the previous step (zeros first)."""
    prev = F.one_hot(y, n_way).float().roll(1, dims=1)
    prev[:, 0] = 0.0
    return torch.cat([x, prev], dim=-1)


def instance_index(y: Tensor, n_way: int = -1) -> Tensor:
    """``[B, T]`` 1-based presentation number of each step's class within its episode."""
    onehot = F.one_hot(y, n_way).long()
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


class LSTMFewShot(nn.Module):
    """LSTM-only baseline (Santoro et al.'s comparison): same ``(x_t, y_{t-1})`` input, no external memory."""

    def __init__(self, image_size: int = 20, n_way: int = 5, hidden_size: int = 200):
        super().__init__()
        self.n_way = n_way
        self.lstm = nn.LSTM(image_size * image_size + n_way, hidden_size, batch_first=True)
        self.output_layer = nn.Linear(hidden_size, n_way)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        out, _ = self.lstm(shifted_inputs(x, y, self.n_way))
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
                         seed: int = 0, instances=(1, 2, 3, 4, 5, 10)) -> dict[int, float]:
    """Accuracy on the k-th presentation of a class over ``episodes`` fresh episodes of ``images``
    (pooled counts, seeded: the same episodes for every model evaluated with the same arguments)."""
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    correct, total = torch.zeros(len(instances)), torch.zeros(len(instances))
    for start in range(0, episodes, batch):
        x, y = sample_episodes(images, min(batch, episodes - start), model.n_way, shots, g)
        hit = model(x, y).argmax(-1) == y
        idx = instance_index(y, model.n_way)
        for i, k in enumerate(instances):
            correct[i] += hit[idx == k].sum()
            total[i] += (idx == k).sum()
    model.train(was_training)
    return {k: (float(c / n) if n else float("nan")) for k, c, n in zip(instances, correct, total)}


def train_episodes(model: nn.Module, images: Tensor, steps: int, batch: int = 16, shots: int = 10,
                   lr: float = 1e-3, seed: int = 0) -> list[float]:
    """Train for ``steps`` batches of episodes with Adam; returns the loss of each step."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    return [train_step(model, opt, *sample_episodes(images, batch, model.n_way, shots, g)) for _ in range(steps)]
