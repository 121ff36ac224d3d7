"""clmem's own strategies in :data:`strategies.registry.STRATEGIES`: the sequence loop plus a plugin.

Each is a :class:`~strategies.sequence.SequenceStrategy` (Avalanche's ``SupervisedTemplate``; with the
defaults here — no clipping, no curriculum — the same loop as Avalanche's ``Naive``), so each takes the
sequence loop's options and one grid can put ``sequence`` and ``ewc_controller`` side by side.

* ``ewc_controller``: :class:`~strategies.ewc_controller.EWCController` (EWC / online EWC on a
  parameter set — all by default, or a memory learner's controller — with a normalised Fisher).
* ``episodic_replay``: :class:`~strategies.episodic_replay.EpisodicReplay` (FAISS store updated every
  batch, random or nearest retrieval, optional DER++ logit distillation).
* ``hopfield_kv`` / ``ncm``: the model is wrapped in a
  :class:`~strategies.kv_memory.KVMemoryClassifier` / :class:`~strategies.kv_memory.NCMClassifier`
  filled by :class:`~strategies.kv_memory.MemoryClassifierPlugin`.

Every plugin here has ``state_dict``/``load_state_dict``, so each built strategy sets
``clmem_resumable = True`` (see :mod:`strategies.checkpoint`). The registry imports this module on first use.
"""
from __future__ import annotations

import torch

from clmem.options import Opt
from strategies.episodic_replay import RETRIEVALS, EpisodicReplay
from strategies.ewc_controller import DEFAULT_LAMBDA, FISHER_METHODS, FISHER_NORMS, MODES, EWCController
from strategies.kv_memory import TRAIN_ENCODER, KVMemoryClassifier, MemoryClassifierPlugin, NCMClassifier
from strategies.registry import STRATEGIES
from strategies.sequence import SEQUENCE_OPTIONS, SequenceStrategy


def sequence_with(own_plugins: list, *, plugins=None, **kwargs):
    """:class:`~strategies.sequence.SequenceStrategy` with ``plugins + own_plugins``.

    ``kwargs``: the sequence loop's options (``clip_grad_norm``, ``curriculum*``) and any keyword of
    Avalanche's ``SupervisedTemplate`` (``eval_every``, ``evaluator``, ``device`` …), passed through.
    The strategy is ``clmem_resumable`` when each of ``own_plugins`` has ``state_dict``/``load_state_dict`` (the
    sequence loop's own plugins, the gradient-spike guard and memory growth, have them).
    """
    strategy = SequenceStrategy(plugins=[*(plugins or []), *own_plugins], **kwargs)
    strategy.clmem_resumable = all(hasattr(p, "state_dict") and hasattr(p, "load_state_dict") for p in own_plugins)
    return strategy


def _template():
    return SequenceStrategy


#: The sequence loop's options, clipping off by default (the plain Avalanche loop).
_LOOP = {**SEQUENCE_OPTIONS["sequence"],
         "clip_grad_norm": Opt(float, None, min=1e-9, nullable=True, help="max global gradient norm (null: none)")}


@STRATEGIES.register("ewc_controller", {
    **_LOOP,
    "ewc_lambda": Opt(float, DEFAULT_LAMBDA, min=0.0, help="λ on the normalised Fisher (see fisher_norm)"),
    "mode": Opt(str, "online", choices=MODES),
    "decay_factor": Opt(float, 0.9, min=0.0, max=1.0, help="γ of online EWC"),
    "params": Opt(str, "all", allow_list=True,
                  help="'all', 'controller' (a memory learner's controller; all but the head otherwise), or "
                       "parameter-name prefixes (a list or one comma-separated string)"),
    "fisher_samples": Opt(int, 1000, min=0, help="samples per experience in the Fisher (0: all)"),
    "fisher_mb_size": Opt(int, 64, min=1),
    "fisher_norm": Opt(str, "max", choices=FISHER_NORMS, help="Fisher divided by its max / mean entry, or raw"),
    "fisher_method": Opt(str, "auto", choices=FISHER_METHODS,
                         help="per-sample gradients by torch.func vmap, a plain loop, or auto"),
}, "EWC / online EWC (Schwarz et al. 2018) on a parameter set (all, or a memory learner's controller)",
    template=_template)
def build_ewc_controller(*, ewc_lambda=DEFAULT_LAMBDA, mode="online", decay_factor=0.9, params="all",
                         fisher_samples=1000, fisher_mb_size=64, fisher_norm="max", fisher_method="auto", **common):
    plugin = EWCController(ewc_lambda=ewc_lambda, mode=mode, decay_factor=decay_factor, params=params,
                           fisher_samples=fisher_samples, fisher_mb_size=fisher_mb_size, fisher_norm=fisher_norm,
                           fisher_method=fisher_method)
    return sequence_with([plugin], **common)


@STRATEGIES.register("episodic_replay", {
    **_LOOP,
    "mem_size": Opt(int, 200, min=1, help="store capacity (samples)"),
    "batch_size_mem": Opt(int, None, min=1, nullable=True, help="replayed per iteration (null: train_mb_size)"),
    "policy": Opt(str, "reservoir", choices=("reservoir", "class_balanced")),
    "retrieval": Opt(str, "random", choices=RETRIEVALS),
    "alpha": Opt(float, 0.0, min=0.0, help="logit distillation weight (DER++ alpha)"),
    "beta": Opt(float, 1.0, min=0.0, help="replayed-label loss weight"),
    "num_shards": Opt(int, 1, min=1, max=64),
    "index": Opt(str, "flat", choices=("flat", "ivf", "hnsw")),
    "store_seed": Opt(int, None, min=0, nullable=True, help="store/sampling seed (null: from the trial seed)"),
}, "replay from a FAISS episodic store updated every batch (random or nearest retrieval, DER++ logits)",
    template=_template)
def build_episodic_replay(*, mem_size=200, batch_size_mem=None, policy="reservoir", retrieval="random",
                          alpha=0.0, beta=1.0, num_shards=1, index="flat", store_seed=None, **common):
    seed = int(torch.initial_seed() % (2**31)) if store_seed is None else store_seed
    plugin = EpisodicReplay(mem_size=mem_size, batch_size_mem=batch_size_mem, policy=policy, retrieval=retrieval,
                            alpha=alpha, beta=beta, num_shards=num_shards, index=index, seed=seed)
    return sequence_with([plugin], **common)


#: Feature-memory classifiers need one feature vector and one class id per sample.
_PER_SAMPLE = "it stores one feature vector per sample under its class id"
_FEATURE_REFUSALS = {
    "bits": f"{_PER_SAMPLE}; bit streams have per-step float targets",
    "qa_sequence": f"{_PER_SAMPLE}; a sequence learner's features are per step (use the memnet encoding)",
    "episodes": f"{_PER_SAMPLE}; an episode has one label per step",
    "qa_memnet": f"{_PER_SAMPLE} from the model's nn.Linear head; memn2n answers through its embedding matrix",
}
_ENCODER = {"train_encoder": Opt(str, "never", choices=TRAIN_ENCODER,
                                 help="train the encoder never (random features), on the first experience only, "
                                      "or always"),
            "normalize": Opt(bool, True, help="L2-normalise features")}


@STRATEGIES.register("hopfield_kv", {
    **_LOOP,
    **_ENCODER,
    "keys_per_class": Opt(int, 50, min=1),
    "beta": Opt(float, 30.0, min=0.0, help="inverse temperature of the Hopfield retrieval"),
}, "encoder + Hopfield key-value memory of (feature, one-hot label), grows with new classes", template=_template,
    refuses=_FEATURE_REFUSALS)
def build_hopfield_kv(*, model, train_encoder="never", normalize=True, keys_per_class=50, beta=30.0, **common):
    wrapped = KVMemoryClassifier(model, keys_per_class=keys_per_class, beta=beta, normalize=normalize)
    return sequence_with([MemoryClassifierPlugin(train_encoder)], model=wrapped, **common)


@STRATEGIES.register("ncm", {**_LOOP, **_ENCODER}, "encoder + nearest class mean (baseline of hopfield_kv)",
                     template=_template, refuses=_FEATURE_REFUSALS)
def build_ncm(*, model, train_encoder="never", normalize=True, **common):
    wrapped = NCMClassifier(model, normalize=normalize)
    return sequence_with([MemoryClassifierPlugin(train_encoder)], model=wrapped, **common)
