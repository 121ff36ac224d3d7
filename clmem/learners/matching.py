"""Matching Networks (Vinyals et al. 2016) for few-shot classification, with optional full context embeddings.

Shapes: ``B`` episodes, ``S`` support items, ``Q`` queries, ``E`` embedding width, ``n`` = ``n_way`` classes,
images ``P x P`` (one channel; ``P`` = ``image_size``), ``T`` steps of an episode in the MANN layout.

* **Embedding** ``f = g`` (:class:`EmbeddingCNN`): the paper's ``blocks`` x (3x3 conv of ``channels`` filters,
  batch norm, ReLU, 2x2 max-pool); on 28x28 images 4 blocks of 64 give 28 -> 14 -> 7 -> 3 -> 1, E = 64. A
  block whose map is already 1x1 skips the pool (tiny images).
* **Attention** (:func:`cosine_attention`): ``a(x^, x_i) = softmax_i s cos(f(x^), g(x_i))`` over the support
  items a query may see (a mask); a query with no visible support attends to nothing (all-zero row). ``s`` is
  the inverse temperature (``MatchingConfig.scale``, learned by default; the paper's ``s = 1`` on the cosines of
  ReLU embeddings, all in [0, 1], caps ``y^_label`` at ``e / (e + n - 1)``: loss >= 0.905 for 5-way).
* **Classifier** (:func:`matching_logits`): ``y^ = sum_i a(x^, x_i) y_i`` (``y_i`` one-hot, or soft), returned as
  logits ``log((1 - eps) y^ + eps / n)``: ``softmax`` of them is ``y^`` mixed with ``eps`` of uniform mass, so
  the logits stay finite for classes without support, and a query with no support gets uniform logits.
  Cross-entropy on them is the paper's ``-log y^_label`` (up to ``eps``).
* **Full context embeddings** (``fce``, :class:`FullContextEmbedding`, off by default): the paper's
  ``g(x_i, S) = g'(x_i) + h_fwd_i + h_bwd_i`` (a bidirectional LSTM over the support embeddings ``g'``) and
  ``f(x^, S) = attLSTM(f'(x^), g(S), K)``: ``K`` = ``fce_steps`` steps of ``h_k = LSTM([f'(x^), r_{k-1}],
  h_{k-1}) + f'(x^)``, ``r_k = sum_i softmax_i(h_k . g_i) g_i``, ``h_0 = 0`` (the read enters as an input,
  not concatenated to the hidden state as in the paper's appendix). Only in :meth:`MatchingNetwork.classify`:
  the causal episode layout has no fixed support set, so :meth:`MatchingNetwork.forward` refuses it.

Two uses of :class:`MatchingNetwork`:

* :meth:`MatchingNetwork.classify` ``(support_x [B, S, P, P], support_y [B, S], query_x [B, Q, P, P])`` ->
  ``[B, Q, n]``: the standard N-way K-shot episode (:func:`sample_nk_episodes`, :func:`evaluate_n_way_k_shot`).
* :meth:`MatchingNetwork.forward` ``(x [B, T, P^2 + n])`` -> ``[B, T, n]``: the ``(x_t, one-hot y_{t-1})`` layout
  of the ``omniglot_episodes`` stream. Step ``t`` classifies ``x_t`` by attention over steps ``i < t`` (their
  labels have been revealed by then: ``y_i`` is the label channel of step ``i + 1``); ``t = 0`` gets uniform
  logits. In training mode batch norm pools statistics over all ``B x T`` images of the batch (as every BN
  network does); in eval mode no step's logits depend on any later step.

Only torch is used here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clmem.memory._validation import check_batch_input, check_int

#: Largest allowed inverse temperature of the attention.
MAX_SCALE = 100.0

__all__ = ["MatchingConfig", "EmbeddingCNN", "FullContextEmbedding", "MatchingNetwork", "FewShotBatch",
           "cosine_attention", "matching_logits", "sample_nk_episodes", "fewshot_train_step", "evaluate_n_way_k_shot"]


@dataclass(frozen=True)
class MatchingConfig:
    """``image_size`` P (images P x P), ``n_way`` classes, the embedding's ``blocks`` x ``channels`` filters,
    ``smoothing`` eps: the uniform mass mixed into ``y^`` (keeps logits finite; in (0, 1)); ``scale`` s: the
    inverse temperature of the attention, ``softmax_i(s cos)`` (in (0, 100]), learned (as ``log s``, starting at
    ``scale``) with ``learn_scale``; ``final_relu``: the last conv block ends in its ReLU (without it the
    embeddings, and so the cosines, may be negative); ``fce`` with ``fce_steps`` K: full context embeddings (see
    the module docstring). The paper's plain version is ``scale=1, learn_scale=False, final_relu=True``: raw
    cosines in [0, 1] cap ``y^_label`` at ``e / (e + n - 1)``; the defaults (learned s from 10, no final ReLU)
    were better in short Omniglot 1-shot pilots (train -> val characters; ``benchmarks/matching_omniglot.py``)."""

    image_size: int = 28
    n_way: int = 5
    channels: int = 64
    blocks: int = 4
    smoothing: float = 1e-3
    scale: float = 10.0
    learn_scale: bool = True
    final_relu: bool = False
    fce: bool = False
    fce_steps: int = 5

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for field in ("image_size", "n_way", "channels", "blocks", "fce_steps"):
            check_int(owner, field, getattr(self, field), 2 if field == "n_way" else 1)
        _check_float(owner, "smoothing", self.smoothing, 0.0, 1.0)
        _check_float(owner, "scale", self.scale, 0.0, MAX_SCALE, top_closed=True)
        for field in ("learn_scale", "final_relu", "fce"):
            if not isinstance(getattr(self, field), bool):
                raise ValueError(f"{owner}.{field}: expected a bool, got {getattr(self, field)!r}")


def _check_float(owner: str, field: str, value, low: float, high: float, top_closed: bool = False) -> None:
    """One line naming ``field`` unless ``value`` is a finite number in ``(low, high)`` (``(low, high]``)."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) \
        and low < value and (value <= high if top_closed else value < high)
    if not ok:
        raise ValueError(f"{owner}.{field}: expected a finite number in ({low:g}, {high:g}{']' if top_closed else ')'}"
                         f", got {value!r}")


class EmbeddingCNN(nn.Module):
    """``blocks`` x (conv 3x3 ``channels``, BN, ReLU, 2x2 max-pool): images ``[N, P, P]`` -> ``[N, E]``; without
    ``final_relu`` the last block has no ReLU (max-pool of the batch-normed map)."""

    def __init__(self, image_size: int, channels: int = 64, blocks: int = 4, final_relu: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        size, width = image_size, 1
        for block in range(blocks):
            layers += [nn.Conv2d(width, channels, 3, padding=1), nn.BatchNorm2d(channels)]
            if final_relu or block < blocks - 1:
                layers.append(nn.ReLU())
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            width = channels
        self.body = nn.Sequential(*layers, nn.Flatten())
        self.image_size, self.output_size = image_size, channels * size * size

    def forward(self, images: Tensor) -> Tensor:
        return self.body(images.reshape(-1, 1, self.image_size, self.image_size))


class FullContextEmbedding(nn.Module):
    """The paper's full context embeddings of width ``E``: :meth:`support` ``g'(S) [B, S, E]`` -> ``g(S)``,
    :meth:`query` ``(f'(x^) [B, Q, E], g(S) [B, S, E])`` -> ``f(x^, S) [B, Q, E]`` (``steps`` K)."""

    def __init__(self, width: int, steps: int):
        super().__init__()
        self.width, self.steps = width, steps
        self.support_lstm = nn.LSTM(width, width, batch_first=True, bidirectional=True)
        self.query_cell = nn.LSTMCell(2 * width, width)

    def support(self, g: Tensor) -> Tensor:
        """``g'(x_i) + h_fwd_i + h_bwd_i``: ``[B, S, E]`` -> ``[B, S, E]``."""
        both, _ = self.support_lstm(g)
        return g + both[..., :self.width] + both[..., self.width:]

    def query(self, f: Tensor, g: Tensor) -> Tensor:
        """``K`` attention-LSTM steps: ``f [B, Q, E]``, ``g [B, S, E]`` -> ``[B, Q, E]``."""
        b, q, e = f.shape
        h = torch.zeros_like(f)
        c = torch.zeros(b * q, e, dtype=f.dtype, device=f.device)
        for _ in range(self.steps):
            read = (h @ g.transpose(-1, -2)).softmax(-1) @ g  # [B, Q, E]
            h_new, c = self.query_cell(torch.cat([f, read], -1).reshape(b * q, 2 * e), (h.reshape(b * q, e), c))
            h = h_new.reshape(b, q, e) + f
        return h


# ----------------------------------------------------------------------------------------------- pure maths
def cosine_attention(query: Tensor, support: Tensor, mask: Optional[Tensor] = None, eps: float = 1e-8,
                     scale: float | Tensor = 1.0) -> Tensor:
    """``a [B, Q, S]``: softmax over the support of ``scale * cos(query_q, support_i)``.

    ``query [B, Q, E]``, ``support [B, S, E]``; ``mask [B or 1, Q, S]`` bool (True: query ``q`` may attend to
    item ``i``; ``None``: all). Masked entries get weight 0; a row with no allowed item is all zeros. A zero
    vector has cosine 0 with everything. ``scale`` (a number or a 0-d tensor, > 0): the inverse temperature.
    """
    sim = scale * (F.normalize(query, dim=-1, eps=eps) @ F.normalize(support, dim=-1, eps=eps).transpose(-1, -2))
    if mask is None:
        return sim.softmax(-1)
    mask = mask.expand_as(sim)
    allowed = mask.any(-1, keepdim=True)
    # rows with nothing allowed are zeroed before the softmax, so neither the value nor its gradient is NaN
    sim = torch.where(allowed, sim.masked_fill(~mask, float("-inf")), torch.zeros_like(sim))
    return sim.softmax(-1) * allowed


def matching_logits(attention: Tensor, labels: Tensor, smoothing: float = 1e-3) -> Tensor:
    """Logits ``[B, Q, n]`` = ``log((1 - eps) y^ + eps / n)`` with ``y^ = attention @ labels``.

    ``attention [B, Q, S]`` (rows sum to 1, or 0 for a query without support), ``labels [B, S, n]`` one-hot
    (or soft) labels of the support items. A zero row gives uniform logits ``log(eps / n)``.
    """
    n = labels.shape[-1]
    probs = attention @ labels.to(attention.dtype)
    return torch.log((1.0 - smoothing) * probs + smoothing / n)


# ------------------------------------------------------------------------------------------------- network
class MatchingNetwork(nn.Module):
    """Matching network: :class:`EmbeddingCNN` + :func:`cosine_attention` + :func:`matching_logits`."""

    def __init__(self, config: MatchingConfig = MatchingConfig()):
        super().__init__()
        self.config, self.n_way = config, config.n_way
        self.embedding = EmbeddingCNN(config.image_size, config.channels, config.blocks, config.final_relu)
        if config.learn_scale:
            self.log_scale = nn.Parameter(torch.tensor(math.log(config.scale)))
        if config.fce:
            self.context = FullContextEmbedding(self.embedding.output_size, config.fce_steps)

    @property
    def scale(self) -> float | Tensor:
        """The attention's inverse temperature: ``exp(log_scale)`` (0-d) when learned, else ``config.scale``."""
        return self.log_scale.exp() if self.config.learn_scale else self.config.scale

    def embed(self, images: Tensor) -> Tensor:
        """Images ``[..., P, P]`` or ``[..., P^2]`` -> embeddings ``[..., E]``."""
        p = self.config.image_size
        lead = images.shape[:-2] if images.shape[-2:] == (p, p) else images.shape[:-1]
        if images.shape[len(lead):].numel() != p * p:
            raise ValueError(f"MatchingNetwork.x: expected images of {p}x{p} = {p * p} pixels, "
                             f"got trailing shape {list(images.shape[len(lead):])}")
        return self.embedding(images).reshape(*lead, -1)

    def classify(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        """N-way K-shot: ``support_x [B, S, P, P]``, ``support_y [B, S]`` labels in ``0..n-1``,
        ``query_x [B, Q, P, P]`` -> logits ``[B, Q, n]`` (support and queries embedded in one pass)."""
        check_batch_input("MatchingNetwork.support_x", support_x, self.embedding.body[0].weight.dtype)
        check_batch_input("MatchingNetwork.query_x", query_x, self.embedding.body[0].weight.dtype)
        if support_y.min() < 0 or support_y.max() >= self.n_way:
            raise ValueError(f"MatchingNetwork.support_y: expected labels in 0..{self.n_way - 1}, "
                             f"got {support_y.min().item()}..{support_y.max().item()}")
        s = support_x.shape[1]
        emb = self.embed(torch.cat([support_x, query_x], dim=1))
        support, query = emb[:, :s], emb[:, s:]
        if self.config.fce:
            support = self.context.support(support)
            query = self.context.query(query, support)
        attention = cosine_attention(query, support, scale=self.scale)
        return matching_logits(attention, F.one_hot(support_y.long(), self.n_way), self.config.smoothing)

    def forward(self, x: Tensor) -> Tensor:
        """Episodes in the ``(x_t, one-hot y_{t-1})`` layout, ``x [B, T, P^2 + n]`` -> logits ``[B, T, n]``:
        step ``t`` attends over the steps ``i < t`` with label ``y_i`` = the label channels of step ``i + 1``."""
        check_batch_input("MatchingNetwork.x", x, self.embedding.body[0].weight.dtype)
        if self.config.fce:
            raise ValueError("MatchingNetwork.fce: full context embeddings need a fixed support set (classify); "
                             "the (x_t, y_{t-1}) episode layout has none")
        pixels, n = self.config.image_size ** 2, self.n_way
        if x.dim() != 3 or x.shape[-1] != pixels + n:
            raise ValueError(f"MatchingNetwork.x: expected [B, T, {pixels + n}] ({pixels} pixels + {n} previous-"
                             f"label channels), got {list(x.shape)}")
        steps = x.shape[1]
        emb = self.embed(x[..., :pixels])  # [B, T, E]
        mask = torch.ones(steps, steps - 1, dtype=torch.bool, device=x.device).tril(-1)  # [T, T-1]: i < t
        attention = cosine_attention(emb, emb[:, :-1], mask.unsqueeze(0), scale=self.scale)
        return matching_logits(attention, x[:, 1:, pixels:], self.config.smoothing)


# ---------------------------------------------------------------------------------- N-way K-shot episodes
class FewShotBatch(NamedTuple):
    """``support_x [B, n K, P, P]``, ``support_y [B, n K]``, ``query_x [B, n Q, P, P]``, ``query_y [B, n Q]``."""

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor


def sample_nk_episodes(images: Tensor, batch: int, n_way: int, k_shot: int, queries: int,
                       generator: Optional[torch.Generator] = None, rotations: bool = True) -> FewShotBatch:
    """``batch`` N-way K-shot episodes from ``images [C, D, P, P]`` (C characters x D drawers).

    With ``rotations`` the classes are the ``4 C`` (character, quarter turn) pairs (Vinyals et al.: rotations
    as new classes), else the ``C`` characters. Each episode draws ``n_way`` distinct classes, labels them
    ``0..n-1`` in random order and takes ``k_shot + queries`` distinct drawers per class: the first ``k_shot``
    are the support, the rest the queries (both ordered by class).
    """
    chars, drawers = images.shape[0], images.shape[1]
    classes = 4 * chars if rotations else chars
    if n_way > classes or k_shot + queries > drawers:
        raise ValueError(f"sample_nk_episodes: {n_way}-way {k_shot}-shot with {queries} queries needs >= {n_way} "
                         f"classes and >= {k_shot + queries} drawers, images have {classes} and {drawers}")
    picked = torch.rand(batch, classes, generator=generator).argsort(1)[:, :n_way]  # [B, n]
    per_class = torch.rand(batch, n_way, drawers, generator=generator).argsort(-1)[..., :k_shot + queries]
    char = (picked // 4 if rotations else picked).unsqueeze(-1).expand_as(per_class)
    frames = images[char, per_class]  # [B, n, K + Q, P, P]
    if rotations:
        turns = (picked % 4).unsqueeze(-1).expand_as(per_class)
        for k in (1, 2, 3):
            frames[turns == k] = torch.rot90(frames[turns == k], k, (-2, -1))
    labels = torch.arange(n_way).view(1, n_way, 1).expand(batch, n_way, k_shot + queries)
    p = images.shape[-1]

    def part(t: Tensor, lo: int, hi: int, *tail: int) -> Tensor:
        return t[:, :, lo:hi].reshape(batch, n_way * (hi - lo), *tail)

    return FewShotBatch(part(frames, 0, k_shot, p, p), part(labels, 0, k_shot),
                        part(frames, k_shot, k_shot + queries, p, p), part(labels, k_shot, k_shot + queries))


def fewshot_train_step(model: MatchingNetwork, optimizer: torch.optim.Optimizer, episode: FewShotBatch) -> float:
    """One update on ``episode``: mean cross-entropy of the queries' logits; returns the loss."""
    logits = model.classify(episode.support_x, episode.support_y, episode.query_x)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), episode.query_y.reshape(-1))
    if not torch.isfinite(loss):
        raise FloatingPointError(f"fewshot_train_step: non-finite loss {loss.item()}")
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


@torch.no_grad()
def evaluate_n_way_k_shot(model: MatchingNetwork, images: Tensor, episodes: int, k_shot: int, queries: int = 1,
                          batch: int = 50, seed: int = 0, rotations: bool = True) -> dict:
    """Query accuracy of ``model`` (eval mode) over ``episodes`` seeded ``model.n_way``-way ``k_shot`` episodes of
    ``images [C, D, P, P]``: ``{"accuracy", "ci95" (1.96 x std / sqrt(episodes) of the per-episode accuracy),
    "episodes", "queries_per_class"}``. The same arguments give the same episodes for every model."""
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    per_episode = []
    for start in range(0, episodes, batch):
        ep = sample_nk_episodes(images, min(batch, episodes - start), model.n_way, k_shot, queries, g, rotations)
        hit = model.classify(ep.support_x, ep.support_y, ep.query_x).argmax(-1) == ep.query_y
        per_episode.append(hit.float().mean(1))
    model.train(was_training)
    acc = torch.cat(per_episode)
    ci = 1.96 * acc.std().item() / math.sqrt(len(acc)) if len(acc) > 1 else float("nan")
    return {"accuracy": acc.mean().item(), "ci95": ci, "episodes": len(acc), "queries_per_class": queries}
