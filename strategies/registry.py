"""One registry of Avalanche strategies by name, with declared options.

Avalanche's built-ins are registered here; clmem's own strategies (``ewc_controller``,
``episodic_replay``, ``hopfield_kv``, ``ncm``, ``sequence``, ``sequence_ewc``, ``sequence_replay``)
register from :mod:`strategies.clmem_strategies` and :mod:`strategies.sequence`, which the registry
imports the first time it is used. Use it from a plain Avalanche script::

    from strategies import create_strategy
    strategy = create_strategy("ewc_controller", model=model, optimizer=optimizer,
                               evaluator=my_evaluator, train_mb_size=32, eval_every=1,
                               plugins=[EarlyStoppingPlugin(2, "test_stream")])

Arguments are the strategy's declared options (validated by type and range) plus every keyword the
underlying Avalanche class accepts (``eval_every``, ``peval_mode``, ``device``, ``evaluator``,
``storage_policy`` …), passed through unchanged; anything else is one :class:`ConfigError` line
naming it and the valid ones. ``criterion``, batch sizes and epochs default as Avalanche's do.
"""
from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any

from clmem.options import ConfigError, Opt, defaults
from clmem import registries
from clmem.registries import TRAINING_OPTIONS

STRATEGIES = registries.STRATEGIES.extend(extensions=("strategies.sequence", "strategies.clmem_strategies"))

_LOOP_KEYS = ("train_epochs", "train_mb_size", "eval_mb_size")


class AvalancheClass:
    """A zero-argument callable returning ``avalanche.training.supervised.<class_name>`` (imported lazily)."""

    def __init__(self, class_name: str):
        self.class_name = class_name
        self.__name__ = f"template_{class_name}"

    def __call__(self):
        import avalanche.training.supervised as supervised

        return getattr(supervised, self.class_name)

    def manifest_spec(self) -> tuple[str, tuple]:
        """How :mod:`clmem.manifest` rebuilds this without importing Avalanche."""
        return "strategies.registry:AvalancheClass", (self.class_name,)


def avalanche_class(class_name: str) -> AvalancheClass:
    return AvalancheClass(class_name)


def _avalanche(class_name: str):
    def build(**kwargs):
        return avalanche_class(class_name)()(**kwargs)

    build.__name__ = f"build_{class_name}"
    return build


def _register_builtin(name: str, class_name: str, options: dict[str, Opt], description: str, **meta):
    STRATEGIES.register(name, options, description, template=avalanche_class(class_name),
                        **meta)(_avalanche(class_name))


#: Avalanche's DER buffer unpacks samples as ``(x, y, task)``; clmem's sequence and QA samples are
#: ``(x, y, info, task)`` (see :mod:`clmem.tasks.streams`).
_DER_REASON = "Avalanche's DER buffer takes (x, y, task) samples; these streams carry (x, y, info, task)"
_DER_REFUSALS = {kind: _DER_REASON for kind in ("bits", "qa_sequence", "qa_memnet", "episodes")}


_MEM = {"mem_size": Opt(int, 200, min=1, help="replay buffer size (samples)")}
_register_builtin("naive", "Naive", {}, "fine-tuning, no protection against forgetting")
_register_builtin("cumulative", "Cumulative", {}, "retrain on all data seen so far (upper bound)")
_register_builtin("ewc", "EWC", {
    "ewc_lambda": Opt(float, 10.0, min=0.0),
    "mode": Opt(str, "separate", choices=("separate", "online")),
    "decay_factor": Opt(float, None, min=0.0, max=1.0, nullable=True),
}, "Elastic Weight Consolidation (Kirkpatrick et al. 2017)")
_register_builtin("si", "SynapticIntelligence", {
    "si_lambda": Opt(float, 1.0, min=0.0), "eps": Opt(float, 1e-7, min=0.0),
}, "Synaptic Intelligence (Zenke et al. 2017)")
_register_builtin("lwf", "LwF", {
    "alpha": Opt(float, 1.0, min=0.0), "temperature": Opt(float, 2.0, min=1e-6),
}, "Learning without Forgetting (Li & Hoiem 2016)")


def _template_class():
    from avalanche.training.templates import SupervisedTemplate

    return SupervisedTemplate


#: ``replay`` = Avalanche's ``Replay`` built as ``SupervisedTemplate`` + ``ReplayPlugin``, so the
#: plugin's own arguments (``storage_policy``, ``batch_size``, ``batch_size_mem``,
#: ``task_balanced_dataloader``) pass through as well; with a ``storage_policy``, ``mem_size`` is its ``max_size``.
_REPLAY_PLUGIN_ARGUMENTS = ("storage_policy", "batch_size", "batch_size_mem", "task_balanced_dataloader")


@STRATEGIES.register("replay", dict(_MEM), "experience replay (Avalanche's ReplayPlugin: experience-balanced "
                     "buffer unless storage_policy is given)", template=_template_class,
                     plugin_arguments=_REPLAY_PLUGIN_ARGUMENTS)
def _build_replay(*, mem_size=200, plugins=None, **kwargs):
    from avalanche.training.plugins import ReplayPlugin

    own = {k: kwargs.pop(k) for k in _REPLAY_PLUGIN_ARGUMENTS if k in kwargs}
    if own.get("storage_policy") is not None:  # the buffer's own size is the replay memory size
        mem_size = own["storage_policy"].max_size
    return _template_class()(plugins=[*(plugins or []), ReplayPlugin(mem_size=mem_size, **own)], **kwargs)


_register_builtin("gem", "GEM", {
    "patterns_per_exp": Opt(int, 64, min=1), "memory_strength": Opt(float, 0.5, min=0.0),
}, "Gradient Episodic Memory (Lopez-Paz & Ranzato 2017)")
_register_builtin("agem", "AGEM", {
    "patterns_per_exp": Opt(int, 64, min=1), "sample_size": Opt(int, 64, min=1),
}, "Averaged GEM (Chaudhry et al. 2019)")
_register_builtin("der", "DER", {
    **_MEM,
    "batch_size_mem": Opt(int, None, min=1, nullable=True),
    "alpha": Opt(float, 0.1, min=0.0),
    "beta": Opt(float, 0.5, min=0.0),
}, "Dark Experience Replay++ (Buzzega et al. 2020)", refuses=_DER_REFUSALS)
_register_builtin("gdumb", "GDumb", dict(_MEM), "GDumb: greedy buffer, retrain from scratch")


def strategy_options(name: str) -> dict[str, Opt]:
    """All options of strategy ``name``: the shared training options plus its own."""
    return {**TRAINING_OPTIONS, **STRATEGIES.get(name).options}


def _declared(entry) -> dict[str, Opt]:
    """The options a strategy validates itself: its own plus the loop's (epochs, batch sizes)."""
    return {**entry.options, **{k: TRAINING_OPTIONS[k] for k in _LOOP_KEYS}}


def check_options(name: str, options: dict[str, Any], path: str = "strategy") -> dict[str, Any]:
    """Validate ``options`` for strategy ``name`` and fill in defaults (own options only)."""
    entry = STRATEGIES.get(name, f"{path}.name")
    declared = _declared(entry)
    out = {k: v for k, v in defaults(entry.options).items()}
    for key, value in options.items():
        if key not in declared:
            valid = ", ".join(sorted(declared)) or "none"
            raise ConfigError(f"{path}.{key}", f"unknown option of strategy {name!r} (expected one of: {valid})")
        out[key] = declared[key].check(f"{path}.{key}", value)
    return out


@lru_cache(maxsize=None)
def template_arguments(template) -> frozenset[str]:
    """Keyword arguments the strategy class ``template`` accepts, following ``**kwargs`` up its bases."""
    names: set[str] = set()
    for klass in template.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return frozenset(names - {"model", "optimizer"})


def passthrough_arguments(name: str) -> frozenset[str]:
    """The Avalanche keyword arguments strategy ``name`` passes through to its class unchanged."""
    entry = STRATEGIES.get(name)
    template = entry.meta.get("template")
    own = template_arguments(template()) if template is not None else frozenset()
    return own | frozenset(entry.meta.get("plugin_arguments", ()))


def split_arguments(name: str, arguments: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(declared options checked and filled with defaults, pass-through Avalanche arguments)."""
    entry = STRATEGIES.get(name, "strategy.name")
    declared = _declared(entry)
    allowed = passthrough_arguments(name)
    own, passed = defaults(entry.options), {}
    for key, value in arguments.items():
        if key in declared and (value is not None or declared[key].nullable):
            own[key] = declared[key].check(f"strategy.{key}", value)
        elif key in declared or key in allowed:  # e.g. eval_mb_size=None: Avalanche's own meaning
            own.pop(key, None)
            passed[key] = value
        else:
            valid = ", ".join(sorted(set(declared) | allowed))
            raise ConfigError(f"strategy.{key}", f"unknown argument of strategy {name!r} (expected one of: {valid})")
    return own, passed


def framework_plugins(name: str) -> list:
    """Plugins clmem attaches to every strategy it builds (non-finite guard, metric check)."""
    from strategies.finite_guard import FiniteGuard
    from strategies.metric_check import ScoreabilityCheck

    return [FiniteGuard(name), ScoreabilityCheck()]


def create_strategy(name: str, *, model, optimizer, criterion=None, plugins=None, **arguments):
    """Build the strategy ``name`` around ``model`` and ``optimizer``.

    ``arguments`` are the strategy's declared options (e.g. ``mem_size``; see :func:`strategy_options`)
    and any keyword its Avalanche class accepts (``train_mb_size``, ``eval_every``, ``evaluator``,
    ``device``, ``storage_policy`` …). ``criterion`` defaults to cross-entropy, batch sizes, epochs and
    the evaluator to Avalanche's own defaults. An unknown or ill-typed argument raises
    :class:`clmem.options.ConfigError` naming it. Every strategy also gets clmem's
    :func:`framework_plugins`: a non-finite loss, gradient or parameter stops training with one line.
    """
    import torch

    own, passed = split_arguments(name, arguments)
    criterion = torch.nn.CrossEntropyLoss() if criterion is None else criterion
    plugins = [*(plugins or []), *framework_plugins(name)]
    return STRATEGIES.get(name).builder(model=model, optimizer=optimizer, criterion=criterion, plugins=plugins,
                                        **own, **passed)
