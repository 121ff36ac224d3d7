"""Replay from a FAISS episodic store (:mod:`clmem.episodic`) updated at every training iteration.

Per training iteration of an Avalanche ``SupervisedTemplate``:

1. ``before_forward``: ``batch_size_mem`` items are retrieved from the store — ``random``
   (uniform over the held items) or ``nearest`` (MIR-like: for every item of the current batch its
   nearest stored neighbours in feature space, see :func:`nearest_slots`; the batch is embedded
   first with :func:`embed`, no gradient) — and appended to the minibatch, so the model runs
   **one** forward pass over current and replayed items.
2. ``after_forward``: the minibatch and ``mb_output`` are cut back to the current items (so the
   strategy's criterion, its metrics and other plugins see only them); the replayed rows' outputs
   are kept. The current batch's features are taken from the input of the model's last ``nn.Linear`` in
   that same forward pass (a forward pre-hook; Avalanche's convention, see
   :mod:`strategies.features`); a model without one gets :func:`embed` (its flattened input).
3. ``before_backward``: the replay loss is added to the strategy's loss::

       loss += beta * criterion(out_mem, y_mem) + alpha * MSE(out_mem, logits_mem)

   ``alpha = 0, beta = 1`` is experience replay; ``alpha > 0`` is DER++-style logit distillation
   (the logits the model gave when an item was stored are kept in the store).
4. ``after_training_iteration``: the batch (embedding, input, label, logits, experience id) is
   offered to the store, whose policy (``reservoir`` or ``class_balanced``) decides what is kept.

Task labels of replayed items are not stored: the joint forward gives them the current batch's
first task label, which only matters for multi-head (``MultiTaskModule``) models.

**Stale embeddings**: a stored embedding is the model's feature vector at the moment the item was
inserted; it is not refreshed when the model changes. Only ``nearest`` retrieval uses them (the
replay loss always re-runs the model on the stored *inputs*), so neighbours are found in a mix of
past feature spaces — a deliberate, cheap approximation.

The store is created at the first batch (its dimension is the feature size). ``num_shards > 1``
uses an in-process :class:`~clmem.episodic.ShardedEpisodicStore`. ``state_dict()`` holds the
store's content and policy state, the plugin's counters and its sampling generator, so a plugin
loaded from it replays exactly the items the original would.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from torch import Tensor, nn

from clmem.episodic import EpisodeBatch, EpisodicStore, EpisodicStoreConfig, ShardedEpisodicStore
from strategies.features import embed as features_of
from strategies.features import last_linear

RETRIEVALS = ("random", "nearest")


def embed(model: nn.Module, x: Tensor) -> Tensor:
    """Feature vectors ``[B, D]`` of ``x`` (:func:`strategies.features.embed`: ``get_features`` or the input
    of the last ``nn.Linear``; the flattened input for a model with neither), no grad, float32."""
    if not callable(getattr(model, "get_features", None)) and last_linear(model) is None:
        return x.detach().reshape(x.shape[0], -1).float()
    return features_of(model, x)


def nearest_slots(ids: Tensor, n: int) -> Tensor:
    """Up to ``n`` distinct slot ids from per-query neighbour lists ``ids [Q, k]`` (nearest first).

    Rank by rank: every query's nearest neighbour first (queries in order), then every second
    nearest, …; duplicates and misses (``-1``) are skipped.
    """
    order = ids.t().reshape(-1).tolist()
    out: list[int] = []
    seen: set[int] = set()
    for slot in order:
        if slot >= 0 and slot not in seen:
            seen.add(slot)
            out.append(slot)
            if len(out) == n:
                break
    return torch.tensor(out, dtype=torch.int64)


class EpisodicReplay(SupervisedPlugin):
    """Replay (and optional DER++ distillation) from an episodic store updated every batch.

    Args:
        mem_size: capacity of the store (items).
        batch_size_mem: replayed items per iteration (``None``: the training batch size).
        policy: ``"reservoir"`` or ``"class_balanced"`` (the store's insertion policy).
        retrieval: ``"random"`` or ``"nearest"``.
        alpha: weight of the logit-distillation MSE (0: no logits are stored).
        beta: weight of the cross-entropy (the strategy's criterion) on replayed labels.
        num_shards: 1 for an :class:`EpisodicStore`, more for a local :class:`ShardedEpisodicStore`.
        index: FAISS index of the store (``flat``, ``ivf``, ``hnsw``).
        seed: seed of the store's policy and of random retrieval.
        exclude_current: ``nearest`` retrieval ignores items of the current experience (random
            retrieval always samples the whole store, as reservoir replay does).
        faiss_threads: FAISS OpenMP threads, set (process-wide) when the store is created; 1 by
            default because FAISS's and torch's thread pools contending for a few cores slowed
            training ~40× in our measurements; ``None`` leaves FAISS's setting alone.
    """

    def __init__(self, mem_size: int = 200, batch_size_mem: int | None = None, policy: str = "reservoir",
                 retrieval: str = "random", alpha: float = 0.0, beta: float = 1.0, num_shards: int = 1,
                 index: str = "flat", seed: int = 0, exclude_current: bool = True, faiss_threads: int | None = 1):
        super().__init__()
        if retrieval not in RETRIEVALS:
            raise ValueError(f"EpisodicReplay.retrieval: expected one of {', '.join(RETRIEVALS)}, got {retrieval!r}")
        if num_shards < 1:
            raise ValueError(f"EpisodicReplay.num_shards: expected an int >= 1, got {num_shards!r}")
        if alpha < 0 or beta < 0:
            raise ValueError(f"EpisodicReplay.alpha/beta: expected numbers >= 0, got {alpha!r}/{beta!r}")
        self.mem_size, self.batch_size_mem = int(mem_size), batch_size_mem
        self.policy, self.retrieval, self.index = policy, retrieval, index
        self.alpha, self.beta = float(alpha), float(beta)
        self.num_shards, self.seed = int(num_shards), int(seed)
        self.exclude_current, self.faiss_threads = bool(exclude_current), faiss_threads
        self.store: EpisodicStore | ShardedEpisodicStore | None = None
        self.generator = torch.Generator().manual_seed(seed)
        self.iterations = 0  # training iterations seen
        self.replayed = 0  # items replayed in total
        self.last_replayed: Tensor | None = None  # slot ids replayed at the latest iteration
        self._hook: Any = None  # forward pre-hook on the last nn.Linear while training
        self._captured: Tensor | None = None  # head input of the latest forward
        self._n_current = 0  # rows of the current minibatch (before replayed rows were appended)
        self._features: Tensor | None = None  # the current batch's features
        self._replay: EpisodeBatch | None = None  # items replayed at this iteration
        self._mbatch: list | None = None  # the minibatch as the strategy built it
        self._out_mem: Tensor | None = None  # model outputs of the replayed items

    # -- store -------------------------------------------------------------------------------
    def _config(self, dim: int) -> EpisodicStoreConfig:
        return EpisodicStoreConfig(dim=dim, capacity=self.mem_size, index=self.index, policy=self.policy,
                                   seed=self.seed)

    def _make_store(self, config: EpisodicStoreConfig):
        if self.faiss_threads is not None:  # FAISS's and torch's OpenMP pools fight over the cores
            import faiss

            faiss.omp_set_num_threads(self.faiss_threads)
        if self.num_shards == 1:
            return EpisodicStore(config)
        return ShardedEpisodicStore(config, num_shards=self.num_shards, backend="local")

    def add(self, features: Tensor, x: Tensor, y: Tensor, logits: Tensor | None = None,
            experience: int = 0) -> Tensor:
        """Offer a batch to the store (created on first use); returns the slot ids (-1: not kept)."""
        if self.store is None:
            self.store = self._make_store(self._config(int(features.shape[1])))
        return self.store.add(features, inputs=x.detach().cpu(), labels=y.detach().cpu().long(),
                              logits=logits.detach().cpu().float() if self.alpha > 0 else None,
                              experience=experience)

    def retrieve(self, features: Tensor | None, n: int, current_experience: int | None = None) -> EpisodeBatch | None:
        """``n`` stored items for a batch with ``features [B, D]`` (``None`` when there is nothing to replay).

        ``nearest``: the stored neighbours of the batch (:func:`nearest_slots`); with
        ``current_experience`` given only items of *other* experiences are candidates (the store is
        updated every batch, so the current experience's items would otherwise be the nearest).
        """
        if self.store is None or len(self.store) == 0 or n <= 0:
            return None
        if self.retrieval == "random":
            return self.store.sample(n, generator=self.generator)
        size = len(self.store)
        k = min(size, max(1, -(-n // max(1, len(features)))))
        if current_experience is None:
            _, ids = self.store.search(features, k)
            return self.store.get(nearest_slots(ids, n))
        k = min(size, 4 * k)
        while True:
            _, ids = self.store.search(features, k)
            held = ids[ids >= 0].unique()
            old = held[self.store.get(held).experiences != current_experience] if len(held) else held
            allowed = torch.isin(ids, old)
            slots = nearest_slots(torch.where(allowed, ids, torch.full_like(ids, -1)), n)
            if len(slots) == n or k == size:
                return self.store.get(slots) if len(slots) else None
            k = min(size, 2 * k)

    # -- Avalanche callbacks -----------------------------------------------------------------
    def before_training_exp(self, strategy, **kwargs):
        head = last_linear(strategy.model)
        if head is not None:
            self._hook = head.register_forward_pre_hook(self._capture)

    def after_training_exp(self, strategy, **kwargs):
        if self._hook is not None:
            self._hook.remove()
            self._hook, self._captured = None, None

    def _capture(self, module: nn.Module, args: tuple) -> None:
        """Forward pre-hook on the last ``nn.Linear``: remember its input (the features)."""
        self._captured = args[0]

    def before_forward(self, strategy, **kwargs):
        x = strategy.mb_x
        self._n_current = len(x)
        self._features = embed(strategy.model, x) if self.retrieval == "nearest" else None
        n = self.batch_size_mem or strategy.train_mb_size
        current = int(strategy.experience.current_experience) if self.exclude_current else None
        batch = self.retrieve(self._features, n, current)
        self._replay = batch
        self.last_replayed = None if batch is None else batch.slot_ids
        if batch is None:
            return
        self.replayed += len(batch)
        mbatch, device = strategy.mbatch, strategy.device
        self._mbatch = list(mbatch)
        mbatch[0] = torch.cat([x, batch.inputs.to(device, x.dtype)])
        mbatch[1] = torch.cat([strategy.mb_y, batch.labels.to(device, strategy.mb_y.dtype)])
        if len(mbatch) >= 3:
            task = mbatch[-1]
            mbatch[-1] = torch.cat([task, task[:1].expand(len(batch))])

    def after_forward(self, strategy, **kwargs):
        b = self._n_current
        if self._features is None:
            captured = self._captured
            use = captured is not None and captured.shape[0] == len(strategy.mb_output)
            self._features = captured[:b].detach().reshape(b, -1).float() if use else None
        if self._replay is not None:
            self._out_mem = strategy.mb_output[b:]
            strategy.mb_output = strategy.mb_output[:b]
            strategy.mbatch[:] = self._mbatch
        if self._features is None:
            self._features = embed(strategy.model, strategy.mb_x)
        self._captured = None

    def before_backward(self, strategy, **kwargs):
        batch, out = self._replay, self._out_mem
        if batch is None or out is None:
            return
        loss = strategy._criterion(out, batch.labels.to(strategy.device))
        loss = loss if self.beta == 1.0 else self.beta * loss
        if self.alpha > 0 and batch.logits is not None:
            target = batch.logits.to(strategy.device)
            if target.shape[1] != out.shape[1]:  # the head grew since the item was stored
                width = min(out.shape[1], target.shape[1])
                out, target = out[:, :width], target[:, :width]
            loss = loss + self.alpha * F.mse_loss(out, target)
        strategy.loss = strategy.loss + loss
        self._replay, self._out_mem = None, None

    def after_training_iteration(self, strategy, **kwargs):
        if self._features is not None:
            self.add(self._features, strategy.mb_x, strategy.mb_y, strategy.mb_output,
                     experience=int(strategy.experience.current_experience))
            self._features = None
        self.iterations += 1

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"iterations": self.iterations, "replayed": self.replayed,
                "generator": self.generator.get_state(), "num_shards": self.num_shards,
                "store_config": self.store.config.to_dict() if self.store is not None else None,
                "store": self.store.state_dict() if self.store is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["num_shards"] != self.num_shards:
            raise ValueError(f"EpisodicReplay.load_state_dict: state has {state['num_shards']} shards, "
                             f"plugin {self.num_shards}")
        self.iterations, self.replayed = int(state["iterations"]), int(state["replayed"])
        self.generator.set_state(state["generator"])
        if state["store"] is None:
            self.store = None
        else:
            self.store = self._make_store(EpisodicStoreConfig.from_dict(state["store_config"]))
            self.store.load_state_dict(state["store"])
        self._features, self._replay, self._out_mem = None, None, None


__all__ = ["EpisodicReplay", "embed", "nearest_slots", "RETRIEVALS"]
