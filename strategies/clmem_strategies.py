"""clmem's own strategies in :data:`strategies.registry.STRATEGIES`: Avalanche ``Naive`` plus a plugin.

* ``ewc_controller``: :class:`~strategies.ewc_controller.EWCController` (EWC / online EWC on a
  parameter subset, default the controller / everything but the classifier head).
* ``episodic_replay``: :class:`~strategies.episodic_replay.EpisodicReplay` (FAISS store updated every
  batch, random or nearest retrieval, optional DER++ logit distillation).
* ``hopfield_kv`` / ``ncm``: the model is wrapped in a
  :class:`~strategies.kv_memory.KVMemoryClassifier` / :class:`~strategies.kv_memory.NCMClassifier`
  filled by :class:`~strategies.kv_memory.MemoryClassifierPlugin`.

Every plugin here has ``state_dict``/``load_state_dict``, so each built strategy sets
``clmem_resumable = True`` (see :mod:`strategies.checkpoint`). Imported by :mod:`clmem.catalog`.
"""
from __future__ import annotations

import torch

from clmem.options import Opt
from strategies.episodic_replay import RETRIEVALS, EpisodicReplay
from strategies.ewc_controller import MODES, EWCController
from strategies.kv_memory import TRAIN_ENCODER, KVMemoryClassifier, MemoryClassifierPlugin, NCMClassifier
from strategies.registry import STRATEGIES


def naive_with(own_plugins: list, *, model, optimizer, criterion, plugins=None, device="cpu", evaluator=None,
               train_mb_size=32, train_epochs=1, eval_mb_size=256):
    """Avalanche ``Naive`` with ``plugins + own_plugins``; ``clmem_resumable`` when all of them have state."""
    from avalanche.training.supervised import Naive

    kwargs = {} if evaluator is None else {"evaluator": evaluator}
    strategy = Naive(model=model, optimizer=optimizer, criterion=criterion,
                     plugins=[*(plugins or []), *own_plugins], device=device, train_mb_size=train_mb_size,
                     train_epochs=train_epochs, eval_mb_size=eval_mb_size, **kwargs)
    strategy.clmem_resumable = all(hasattr(p, "state_dict") and hasattr(p, "load_state_dict") for p in own_plugins)
    return strategy


@STRATEGIES.register("ewc_controller", {
    "ewc_lambda": Opt(float, 100.0, min=0.0),
    "mode": Opt(str, "online", choices=MODES),
    "decay_factor": Opt(float, 0.9, min=0.0, max=1.0, help="γ of online EWC"),
    "params": Opt(str, "controller", help="'controller', 'all' or comma-separated parameter-name prefixes"),
    "fisher_samples": Opt(int, 1000, min=0, help="samples per experience in the Fisher (0: all)"),
    "fisher_mb_size": Opt(int, 64, min=1),
}, "EWC / online EWC (Schwarz et al. 2018) on the controller (or all but the head)")
def build_ewc_controller(*, ewc_lambda=100.0, mode="online", decay_factor=0.9, params="controller",
                         fisher_samples=1000, fisher_mb_size=64, **common):
    plugin = EWCController(ewc_lambda=ewc_lambda, mode=mode, decay_factor=decay_factor, params=params,
                           fisher_samples=fisher_samples, fisher_mb_size=fisher_mb_size)
    return naive_with([plugin], **common)


@STRATEGIES.register("episodic_replay", {
    "mem_size": Opt(int, 200, min=1, help="store capacity (samples)"),
    "batch_size_mem": Opt(int, None, min=1, nullable=True, help="replayed per iteration (null: train_mb_size)"),
    "policy": Opt(str, "reservoir", choices=("reservoir", "class_balanced")),
    "retrieval": Opt(str, "random", choices=RETRIEVALS),
    "alpha": Opt(float, 0.0, min=0.0, help="logit distillation weight (DER++ alpha)"),
    "beta": Opt(float, 1.0, min=0.0, help="replayed-label loss weight"),
    "num_shards": Opt(int, 1, min=1, max=64),
    "index": Opt(str, "flat", choices=("flat", "ivf", "hnsw")),
    "store_seed": Opt(int, None, min=0, nullable=True, help="store/sampling seed (null: from the trial seed)"),
}, "replay from a FAISS episodic store updated every batch (random or nearest retrieval, DER++ logits)")
def build_episodic_replay(*, mem_size=200, batch_size_mem=None, policy="reservoir", retrieval="random",
                          alpha=0.0, beta=1.0, num_shards=1, index="flat", store_seed=None, **common):
    seed = int(torch.initial_seed() % (2**31)) if store_seed is None else store_seed
    plugin = EpisodicReplay(mem_size=mem_size, batch_size_mem=batch_size_mem, policy=policy, retrieval=retrieval,
                            alpha=alpha, beta=beta, num_shards=num_shards, index=index, seed=seed)
    return naive_with([plugin], **common)


_ENCODER = {"train_encoder": Opt(str, "never", choices=TRAIN_ENCODER,
                                 help="train the encoder never (random features), on the first experience only, "
                                      "or always"),
            "normalize": Opt(bool, True, help="L2-normalise features")}


@STRATEGIES.register("hopfield_kv", {
    **_ENCODER,
    "keys_per_class": Opt(int, 50, min=1),
    "beta": Opt(float, 30.0, min=0.0, help="inverse temperature of the Hopfield retrieval"),
}, "encoder + Hopfield key-value memory of (feature, one-hot label), grows with new classes")
def build_hopfield_kv(*, model, train_encoder="never", normalize=True, keys_per_class=50, beta=30.0, **common):
    wrapped = KVMemoryClassifier(model, keys_per_class=keys_per_class, beta=beta, normalize=normalize)
    return naive_with([MemoryClassifierPlugin(train_encoder)], model=wrapped, **common)


@STRATEGIES.register("ncm", dict(_ENCODER), "encoder + nearest class mean (baseline of hopfield_kv)")
def build_ncm(*, model, train_encoder="never", normalize=True, **common):
    wrapped = NCMClassifier(model, normalize=normalize)
    return naive_with([MemoryClassifierPlugin(train_encoder)], model=wrapped, **common)
