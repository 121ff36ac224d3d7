"""Omniglot few-shot episodes (Santoro et al. 2016) as a continual Avalanche stream: ``omniglot_episodes``.

**Loading** (torch/numpy): ``images_background.npz`` / ``images_evaluation.npz`` hold ``images [C, 20, 105,
105]`` bool (C characters × 20 drawers); :func:`read_npz_rows` streams only the requested characters out of
the (deflated) npz, :func:`load_omniglot` / :func:`load_omniglot_split` return ``[C, 20, S, S]`` float in
[0, 1] (strokes = 1, area-downsampled). A missing file raises a one-line ``FileNotFoundError`` naming it.

**Episodes**: ``n_way`` distinct characters, each rotated by its own random multiple of 90° and given label
``0..n_way-1`` in random order, ``shots`` distinct drawers each, the ``T = n_way × shots`` presentations in
random order (:func:`episode_plan`, :func:`sample_episodes`); each presentation is then jittered by its own
small random rotation and translation (:func:`jitter_plan`, Santoro et al.'s instance-level augmentation; the paper
gives no magnitudes: ±11.25° and ±10/105 of the side, a public reference implementation's). The MANN layout
(:func:`shifted_inputs`): step ``t`` sees ``x_t = [image_t (S²), one-hot y_{t-1} (n_way)]`` (zeros at ``t = 0``)
and must predict ``y_t``.

**Stream** ``omniglot_episodes`` (stream kind ``episodes``): the background set's alphabets split into
``n_experiences`` disjoint groups, one experience each; within each alphabet a seeded ``test_fraction`` of the
characters is held out, so test episodes of experience ``j`` are few-shot problems on *unseen* characters of
group ``j``'s alphabets. A sample is one episode ``(x [T, S² + n_way], y [T] long, info [2] = (experience,
episode))``, drawn deterministically from the trial seed. Score: per-step accuracy (``EpisodeAcc_Exp``);
:class:`InstanceAccuracy` adds accuracy on the 1st, 2nd, 3rd, 4th, 5th and 10th presentation of a class
(``InstanceAcc_1st/eval_phase/test_stream``, ...). Criterion: cross-entropy over every step
(:class:`EpisodeCrossEntropy`).
"""
from __future__ import annotations

import os
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from clmem.benchmarks import BENCHMARKS, Stream
from clmem.datafiles import check_omniglot, default_omniglot_root, read_character_index
from clmem.datafiles import require_file as _require
from clmem.options import Opt

from .stream_metrics import _MetricValue, _PerExperienceMean, _Plugin, _logits
from .streams import _avalanche_benchmark

DEFAULT_FILE = "images_background.npz"
INSTANCES = (1, 2, 3, 4, 5, 10)
#: Per-presentation jitter (Santoro et al. 2016, Sec. 4: "randomly translating and rotating character images"):
#: uniform rotation within ±JITTER_DEGREES and translation within ±JITTER_SHIFT of the image side per axis.
JITTER_DEGREES = 11.25
JITTER_SHIFT = 10 / 105


# ------------------------------------------------------------------------------------------ loading
def default_omniglot_path() -> Path:
    return default_omniglot_root() / DEFAULT_FILE


def read_npz_rows(path: str | os.PathLike, rows, key: str = "images") -> np.ndarray:
    """Rows ``rows`` (in that order) of the array ``key`` of an npz, ``[len(rows), ...]``, reading the member
    only up to the last row asked for (the whole background set is 212 MB as bool)."""
    rows = [int(r) for r in rows]
    with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        if fortran or dtype.hasobject or not shape:
            raise ValueError(f"{path}: {key} must be a C-ordered numeric array, got shape {shape} dtype {dtype}")
        if rows and not 0 <= min(rows) <= max(rows) < shape[0]:
            raise ValueError(f"{path}: rows must lie in [0, {shape[0]}), got {min(rows)}..{max(rows)}")
        wanted, size = set(rows), int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        found: dict[int, np.ndarray] = {}
        for r in range(max(rows, default=-1) + 1):
            block = f.read(size)
            if r in wanted:
                found[r] = np.frombuffer(block, dtype=dtype).reshape(shape[1:])
    return np.stack([found[r] for r in rows]) if rows else np.zeros((0, *shape[1:]), dtype)


def _downsample(images: np.ndarray, size: int, chunk: int = 64) -> Tensor:
    """``[C, D, 105, 105]`` bool → ``[C, D, size, size]`` float in [0, 1], strokes = 1, area-averaged."""
    strokes_are_zero = images[: min(len(images), chunk)].mean() > 0.5  # Omniglot: black strokes on white
    out = []
    for start in range(0, len(images), chunk):
        block = torch.from_numpy(images[start:start + chunk].astype(np.float32))
        block = 1.0 - block if strokes_are_zero else block
        out.append(F.adaptive_avg_pool2d(block, size))
    return torch.cat(out) if out else torch.zeros(0, images.shape[1], size, size)


def load_omniglot(path: str | os.PathLike | None = None, size: int = 20, rows=None) -> Tensor:
    """Omniglot images ``[C, 20, size, size]`` in [0, 1] (strokes = 1); ``rows``: only these characters."""
    path = _require(Path(path) if path is not None else default_omniglot_path(),
                    "expected images_background.npz with an 'images' array [C, 20, 105, 105]; "
                    "pass its path or set CLMEM_DATA")
    if rows is None:
        return _downsample(np.load(path)["images"], size)
    return _downsample(read_npz_rows(path, rows), size)


def load_omniglot_split(root: str | os.PathLike, split: str, size: int = 20) -> Tensor:
    """The characters of a Vinyals et al. split (``splits_vinyals/<split>.txt``: ``train``, ``val``,
    ``trainval`` or ``test``) as ``[C, 20, size, size]``, C = distinct ``alphabet/character`` names
    (1200 for ``trainval``, 423 for ``test``: Santoro et al.'s 1200 / 423 split). The ``rotNNN``
    suffixes are dropped: rotations are drawn per episode by :func:`sample_episodes`.
    ``root`` holds ``character_index.tsv``, both npz files and ``splits_vinyals/``.
    """
    root = Path(root)
    listing = _require(root / "splits_vinyals" / f"{split}.txt",
                       "expected the Omniglot folder with character_index.tsv and splits_vinyals/")
    rows = {f"{alphabet}/{character}": (npz, row) for npz, alphabet, character, row in read_character_index(root)}
    names = list(dict.fromkeys("/".join(line.split("/")[:2]) for line in listing.read_text().split()))
    missing = [n for n in names if n not in rows]
    if missing:
        raise ValueError(f"load_omniglot_split: {len(missing)} characters of {listing} are not in "
                         f"{root / 'character_index.tsv'} (first: {missing[0]})")
    parts = []
    for npz in sorted({rows[n][0] for n in names}):
        wanted = [rows[n][1] for n in names if rows[n][0] == npz]
        parts.append(load_omniglot(root / f"{npz}.npz", size, rows=wanted))
    return torch.cat(parts)


# ----------------------------------------------------------------------------------------- episodes
def instance_index(y: Tensor, n_way: int = -1) -> Tensor:
    """``[B, T]`` 1-based presentation number of each step's class within its episode."""
    onehot = F.one_hot(y, n_way).long()
    return (onehot.cumsum(1) * onehot).sum(-1)


def episode_plan(n_chars: int, n_drawers: int, batch: int, n_way: int = 5, shots: int = 10,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Which image each step of ``batch`` episodes shows: ``(character, drawer, quarter turns, label)``, each
    ``[B, T]`` (T = n_way × shots), characters in ``0..n_chars-1``, drawers distinct per character."""
    if n_way > n_chars or shots > n_drawers:
        raise ValueError(f"sample_episodes: {n_way}-way {shots}-shot needs >= {n_way} characters and >= {shots} "
                         f"drawers, images have {n_chars} and {n_drawers}")
    chars = torch.rand(batch, n_chars, generator=generator).argsort(1)[:, :n_way]  # [B, n_way]
    rot = torch.randint(0, 4, (batch, n_way), generator=generator)  # [B, n_way]
    drawers = torch.rand(batch, n_way, n_drawers, generator=generator).argsort(-1)[..., :shots]  # [B, n_way, shots]
    order = torch.rand(batch, n_way * shots, generator=generator).argsort(1)
    y = torch.arange(n_way).repeat_interleave(shots)[order]  # [B, T]
    b = torch.arange(batch).unsqueeze(1)
    return chars[b, y], drawers[b, y, instance_index(y, n_way) - 1], rot[b, y], y


def jitter_plan(shape: tuple[int, ...], generator: torch.Generator | None = None, degrees: float = JITTER_DEGREES,
                shift: float = JITTER_SHIFT) -> Tensor:
    """Per-image jitter ``[*shape, 3]``: rotation in radians, uniform in ±``degrees``, and translation ``(dx, dy)``
    as fractions of the image side, uniform in ±``shift`` each (+dx moves strokes right, +dy down)."""
    u = torch.rand(*shape, 3, generator=generator) * 2.0 - 1.0
    return u * torch.tensor([degrees * torch.pi / 180.0, shift, shift])


def jitter_frames(frames: Tensor, jitter: Tensor) -> Tensor:
    """Rotate ``frames [..., S, S]`` about their centre by ``jitter[..., 0]`` radians (clockwise on screen, rows
    downwards: ``pi/2`` equals ``torch.rot90(frames, -1, (-2, -1))``), then translate by ``jitter[..., 1:] × S``
    pixels; bilinear, zeros enter from outside: ``[..., S, S]``."""
    shape, size = frames.shape, frames.shape[-1]
    flat, jit = frames.reshape(-1, 1, size, size), jitter.reshape(-1, 3).to(frames.dtype)
    cos, sin = torch.cos(jit[:, 0]), torch.sin(jit[:, 0])
    # affine_grid maps output to input coordinates: input = R(-angle) (output - 2 * shift), normalised to [-1, 1]
    rot = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)  # [N, 2, 2]
    theta = torch.cat([rot, -(rot @ (2.0 * jit[:, 1:]).unsqueeze(-1))], dim=-1)  # [N, 2, 3]
    grid = F.affine_grid(theta, list(flat.shape), align_corners=False)
    return F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False).reshape(shape)


def render_frames(images: Tensor, chars: Tensor, drawers: Tensor, turns: Tensor, jitter: Tensor | None = None) -> Tensor:
    """``images [C, D, S, S]`` at ``chars, drawers [...]`` rotated by ``turns`` × 90°, then (``jitter [..., 3]``, see
    :func:`jitter_frames`) jittered: ``[..., S²]``."""
    frames = images[chars, drawers].clone()
    for k in (1, 2, 3):
        mask = turns == k
        frames[mask] = torch.rot90(frames[mask], k, (-2, -1))
    if jitter is not None:
        frames = jitter_frames(frames, jitter)
    return frames.flatten(-2)


def sample_episodes(images: Tensor, batch: int, n_way: int = 5, shots: int = 10,
                    generator: torch.Generator | None = None, jitter: bool = True) -> tuple[Tensor, Tensor]:
    """``batch`` episodes from ``images [C, D, S, S]``: inputs ``[B, T, S²]``, labels ``[B, T]`` (T = n_way × shots);
    ``jitter``: each presentation with its own small rotation and translation (:func:`jitter_plan`), drawn after
    the plan, so the same generator gives the same characters, drawers and labels either way."""
    chars, drawers, turns, y = episode_plan(images.shape[0], images.shape[1], batch, n_way, shots, generator)
    jit = jitter_plan(tuple(y.shape), generator) if jitter else None
    return render_frames(images, chars, drawers, turns, jit), y


def shifted_inputs(x: Tensor, y: Tensor, n_way: int) -> Tensor:
    """``x [..., T, D]``, ``y [..., T]`` → ``[..., T, D + n_way]``: each image with the one-hot label of the
    previous step (zeros at ``t = 0``)."""
    prev = F.one_hot(y, n_way).to(x.dtype).roll(1, dims=-2)
    prev[..., 0, :] = 0.0
    return torch.cat([x, prev], dim=-1)


def accuracy_by_instance(logits: Tensor, y: Tensor, instances=INSTANCES) -> dict[int, float]:
    """Accuracy on the ``k``-th presentation of a class, for each ``k`` in ``instances`` (NaN if none)."""
    correct = (logits.argmax(-1) == y).float()
    idx = instance_index(y)
    return {k: (correct[idx == k].mean().item() if (idx == k).any() else float("nan")) for k in instances}


class EpisodeDataset(Dataset):
    """Episodes in the MANN layout, rendered on access from a plan (``[E, T]`` character, drawer, turn and
    label of each step) over ``images [C, D, S, S]``: ``(x [T, S² + n_way], y [T], info [2])``."""

    def __init__(self, images: Tensor, plan: tuple[Tensor, Tensor, Tensor, Tensor], n_way: int, info: Tensor,
                 targets: Tensor, jitter: Tensor | None = None):
        self.images, self.n_way, self.info, self.targets, self.jitter = images, n_way, info, targets, jitter
        self.chars, self.drawers, self.turns, self.y = plan
        if not (len(self.y) == len(info) == len(targets)):
            raise ValueError("EpisodeDataset: plan, info and targets must have the same length")

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index):
        jitter = None if self.jitter is None else self.jitter[index]
        frames = render_frames(self.images, self.chars[index], self.drawers[index], self.turns[index], jitter)
        return shifted_inputs(frames, self.y[index], self.n_way), self.y[index], self.info[index]


# ------------------------------------------------------------------------------------ loss, metrics
def episode_cross_entropy(output, y: Tensor) -> Tensor:
    """Mean cross-entropy over every step of ``logits [B, T, n_way]`` against labels ``y [B, T]``."""
    logits = _logits(output)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1).long())


class EpisodeCrossEntropy(torch.nn.Module):
    """:func:`episode_cross_entropy` as a module (the episode stream's criterion)."""

    def forward(self, output, y):
        return episode_cross_entropy(output, y)


class EpisodeAccuracy(_PerExperienceMean):
    """Per-step accuracy (every step of every episode) over an evaluation experience: ``EpisodeAcc_Exp``."""

    name = "EpisodeAcc_Exp"

    def per_sequence(self, output, y):
        return (_logits(output).argmax(-1) == y).to(torch.float32).mean(dim=1)


def ordinal(k: int) -> str:
    """``1st``, ``2nd``, ``3rd``, ``4th``, ``11th``, ``21st``, ..."""
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


class InstanceAccuracy(_Plugin):
    """Accuracy on the ``k``-th presentation of a class within an episode, pooled over one evaluation of a
    stream, for each ``k`` in ``instances``; emits ``InstanceAcc_<k-th>/eval_phase/<stream>`` (k with no
    step, e.g. beyond ``shots``, is not emitted)."""

    def __init__(self, instances=INSTANCES):
        super().__init__()
        self.instances = tuple(int(k) for k in instances)
        self.reset()

    def reset(self) -> None:
        self._correct = torch.zeros(len(self.instances))
        self._count = torch.zeros(len(self.instances))

    def update(self, output, y: Tensor) -> None:
        """Count hits of ``logits [B, T, C]`` against ``y [B, T]`` per presentation number."""
        logits = _logits(output).detach().cpu()
        y = y.cpu().long()
        hit, idx = logits.argmax(-1) == y, instance_index(y, logits.shape[-1])
        for i, k in enumerate(self.instances):
            self._correct[i] += hit[idx == k].sum()
            self._count[i] += (idx == k).sum()

    def result(self) -> dict[int, float]:
        return {k: float(c / n) for k, c, n in zip(self.instances, self._correct, self._count) if n > 0}

    def before_eval(self, strategy):
        self.reset()

    def after_eval_iteration(self, strategy):
        self.update(strategy.mb_output, strategy.mb_y)

    def after_eval(self, strategy):
        values = self.result()
        if not values:
            return None
        stream = f"{strategy.experience.origin_stream.name}_stream"
        x = strategy.clock.train_iterations
        return [_MetricValue(self, f"InstanceAcc_{ordinal(k)}/eval_phase/{stream}", v, x) for k, v in values.items()]

    def __str__(self) -> str:
        return "InstanceAccuracy"


_EXP_KEY = re.compile(r"^EpisodeAcc_Exp/eval_phase/test_stream/(?:Task\d+/)?Exp(\d+)$")
_INSTANCE_KEY = re.compile(r"^InstanceAcc_(\d+(?:st|nd|rd|th))/eval_phase/test_stream$")


def report_episodes(results: dict) -> dict[str, float]:
    """The stream's metrics in Avalanche eval ``results`` as flat MLflow keys: ``episode_acc_exp_<j>`` and
    ``instance_acc_<k-th>`` (test stream)."""
    out: dict[str, float] = {}
    for key, value in results.items():
        if (m := _EXP_KEY.match(key)):
            out[f"episode_acc_exp_{int(m.group(1))}"] = float(value)
        elif (m := _INSTANCE_KEY.match(key)):
            out[f"instance_acc_{m.group(1)}"] = float(value)
    return out


# ------------------------------------------------------------------------------------------- stream
def alphabet_groups(root: str | os.PathLike, alphabets: int, n_experiences: int, order: str, seed: int,
                    npz: str = "images_background") -> list[list[str]]:
    """The first ``alphabets`` alphabets of ``npz`` (file order, or seeded order) in ``n_experiences``
    contiguous groups of near-equal size."""
    names = list(dict.fromkeys(a for n, a, _, _ in read_character_index(root) if n == npz))
    if not 1 <= n_experiences <= alphabets <= len(names):
        raise ValueError(f"benchmark.alphabets: expected n_experiences <= alphabets <= {len(names)} "
                         f"(the alphabets of {npz}), got alphabets={alphabets}, n_experiences={n_experiences}")
    if order == "random":
        names = [names[i] for i in np.random.default_rng([seed, 7]).permutation(len(names))]
    return [list(g) for g in np.array_split(np.array(names[:alphabets], dtype=object), n_experiences)]


def split_characters(root, groups: list[list[str]], test_fraction: float, seed: int,
                     npz: str = "images_background") -> list[dict[str, list[int]]]:
    """Per group, ``{"train": npz rows, "test": npz rows}``: in each alphabet a seeded ``test_fraction`` of
    its characters (at least one) is held out for test episodes."""
    by_alphabet: dict[str, list[int]] = {}
    for n, alphabet, _, row in read_character_index(root):
        if n == npz:
            by_alphabet.setdefault(alphabet, []).append(row)
    out = []
    for group in groups:
        split = {"train": [], "test": []}
        for alphabet in group:
            rows = by_alphabet[alphabet]
            perm = np.random.default_rng([seed, 11, zlib.crc32(alphabet.encode())]).permutation(len(rows))
            held = max(1, int(round(test_fraction * len(rows))))
            split["test"] += sorted(rows[i] for i in perm[:held])
            split["train"] += sorted(rows[i] for i in perm[held:])
        out.append(split)
    return out


def _generator(*key: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1)[0]))


def episode_experiences(images: Tensor, local: dict[int, int], splits: list[dict[str, list[int]]],
                        counts: dict[str, int], n_way: int, shots: int, rotate: bool, seed: int,
                        jitter: bool = True) -> dict:
    """``{split: [EpisodeDataset per experience]}``: ``counts[split]`` episodes per experience, drawn with a
    generator seeded by ``(seed, split, experience)`` from that experience's characters (``local`` maps npz
    rows to rows of ``images``); ``jitter`` draws each presentation's jitter from a second generator
    ``(seed, split, experience, 1)``. ``targets`` of every episode = its experience index."""
    out: dict[str, list[EpisodeDataset]] = {}
    for s, (split, count) in enumerate(counts.items()):
        out[split] = []
        for j, chars in enumerate(splits):
            rows = torch.tensor([local[r] for r in chars[split]])
            if len(rows) < n_way:
                raise ValueError(f"benchmark.n_way: experience {j} has {len(rows)} {split} characters, fewer than "
                                 f"n_way={n_way}; use fewer experiences, more alphabets or another test_fraction")
            c, d, k, y = episode_plan(len(rows), images.shape[1], count, n_way, shots, _generator(seed, s, j))
            info = torch.stack([torch.full((count,), j), torch.arange(count)], dim=1)
            plan = (rows[c], d, k if rotate else torch.zeros_like(k), y)
            jit = jitter_plan(tuple(y.shape), _generator(seed, s, j, 1)) if jitter else None
            out[split].append(EpisodeDataset(images, plan, n_way, info, torch.full((count,), j), jit))
    return out


_EPISODE_OPTS = {
    "n_experiences": Opt(int, 2, min=1, max=30, help="experiences = disjoint groups of background alphabets"),
    "alphabets": Opt(int, 30, min=1, max=30, help="background alphabets used (the first ones in order)"),
    "order": Opt(str, "given", choices=("given", "random"), help="random: permute the alphabets with the seed"),
    "n_way": Opt(int, 5, min=2, help="classes per episode"),
    "shots": Opt(int, 10, min=1, max=20, help="presentations (drawers) per class; T = n_way x shots"),
    "image_size": Opt(int, 20, min=4, max=105, help="images area-downsampled to image_size x image_size"),
    "rotate": Opt(bool, True, help="rotate each class of an episode by a random multiple of 90 degrees"),
    "jitter": Opt(bool, True, help="each presentation slightly rotated (within 11.25 degrees) and shifted (within "
                                   "10/105 of the side), Santoro et al.'s instance-level augmentation"),
    "test_fraction": Opt(float, 0.25, min=0.01, max=0.9, help="characters per alphabet held out for test"),
    "train_episodes": Opt(int, 64, min=1, help="training episodes per experience"),
    "test_episodes": Opt(int, 32, min=1, help="test episodes per experience (on held-out characters)"),
    "data_root": Opt(str, None, nullable=True,
                     help="folder with images_background.npz and character_index.tsv; default $CLMEM_DATA/omniglot"),
}


@BENCHMARKS.register("omniglot_episodes", _EPISODE_OPTS,
                     "Omniglot few-shot episodes (MANN layout), one experience per group of alphabets; "
                     "per-step accuracy and accuracy by instance", kind="episodes",
                     tiny={"n_experiences": 2, "alphabets": 2, "n_way": 2, "shots": 2, "image_size": 4,
                           "train_episodes": 4, "test_episodes": 2}, preflight=check_omniglot)
def omniglot_episodes(seed: int, n_experiences: int = 2, alphabets: int = 30, order: str = "given", n_way: int = 5,
                      shots: int = 10, image_size: int = 20, rotate: bool = True, jitter: bool = True,
                      test_fraction: float = 0.25,
                      train_episodes: int = 64, test_episodes: int = 32, data_root: str | None = None) -> Stream:
    root = Path(data_root) if data_root else default_omniglot_root()
    splits = split_characters(root, alphabet_groups(root, alphabets, n_experiences, order, seed), test_fraction, seed)
    rows = sorted({r for s in splits for part in s.values() for r in part})
    images = load_omniglot(root / DEFAULT_FILE, image_size, rows=rows)
    data = episode_experiences(images, {r: i for i, r in enumerate(rows)}, splits,
                               {"train": train_episodes, "test": test_episodes}, n_way, shots, rotate, seed,
                               jitter)
    instances = tuple(k for k in INSTANCES if k <= shots)
    return Stream(_avalanche_benchmark(data["train"], data["test"]), (n_way * shots, image_size ** 2 + n_way), n_way,
                  metric="episode_accuracy", higher_is_better=True, metric_prefix="EpisodeAcc_Exp",
                  eval_metrics=lambda: [EpisodeAccuracy(), InstanceAccuracy(instances)],
                  criterion=EpisodeCrossEntropy, report=report_episodes)


