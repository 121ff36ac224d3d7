"""EWC and online EWC restricted to a chosen parameter set (by default a memory learner's controller).

Penalty (Kirkpatrick et al. 2017), a pure function: ``(λ/2) Σ_i F_i (θ_i − θ*_i)²`` over the chosen
parameters (:func:`ewc_penalty`).

* ``mode="separate"``: one (anchor θ*, Fisher F) pair per past experience, penalties summed.
* ``mode="online"`` (Schwarz et al. 2018, "Progress & Compress"): a single running Fisher
  ``F ← γ F + F_new`` and the anchor at the parameters after the latest experience.

Fisher = **empirical** Fisher: the mean over the experience's samples (at most ``fisher_samples``)
of the squared per-sample gradient of the log-likelihood of the true label, i.e. of the
strategy's criterion on one sample (computed with ``torch.func`` per-sample gradients, the model
in eval mode; a plain per-sample loop is the fallback). The samples are a random subset of the
experience (seeded by the experience count), not its first items, which may all share one class.

Which parameters (``params``):

* ``"controller"`` (default): the parameters whose name starts with ``controller.`` when the model
  has any (clmem's memory cores: ``MANNCore``, ``NTMCore``, ``DNCCore``); otherwise every parameter
  except a read-out head, i.e. except names starting with one of :data:`HEAD_PREFIXES`
  (``classifier.``, ``output_layer.``, ``head.``).
* ``"all"``: every trainable parameter.
* a list of name prefixes (or one comma-separated string of them), e.g. ``["body.0.", "body.2."]``.

The plugin's whole state (anchors, Fishers, experience count) is explicit and round-trips through
``state_dict()``/``load_state_dict()``.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from avalanche.core import SupervisedPlugin
from torch import Tensor, nn

#: Read-out heads left out by ``params="controller"`` when the model has no ``controller.*``.
HEAD_PREFIXES = ("classifier.", "output_layer.", "head.")
MODES = ("separate", "online")


def ewc_penalty(params: dict[str, Tensor], anchors: dict[str, Tensor], fishers: dict[str, Tensor],
                lam: float) -> Tensor:
    """``(lam / 2) * Σ_name Σ F[name] * (params[name] - anchors[name])²`` over the names in ``fishers``.

    Names of ``params`` absent from ``fishers`` are not penalised. Returns a scalar tensor (zero
    when ``fishers`` is empty), differentiable with respect to ``params``.
    """
    total: Tensor | None = None
    for name, fisher in fishers.items():
        term = (fisher * (params[name] - anchors[name]) ** 2).sum()
        total = term if total is None else total + term
    if total is None:
        ref = next(iter(params.values()), None)
        return torch.zeros((), device=ref.device if ref is not None else None)
    return 0.5 * lam * total


def select_parameters(model: nn.Module, params: str | Sequence[str] = "controller") -> list[str]:
    """Names of the trainable parameters of ``model`` chosen by ``params`` (see the module docstring)."""
    named = [n for n, p in model.named_parameters() if p.requires_grad]
    if isinstance(params, str) and params == "all":
        chosen = named
    elif isinstance(params, str) and params == "controller":
        chosen = [n for n in named if n.startswith("controller.")]
        if not chosen:
            chosen = [n for n in named if not n.startswith(HEAD_PREFIXES)]
    else:
        prefixes = [p.strip() for p in params.split(",")] if isinstance(params, str) else list(params)
        prefixes = [p for p in prefixes if p]
        if not prefixes:
            raise ValueError("EWCController.params: expected 'controller', 'all' or name prefixes, got none")
        chosen = [n for n in named if n.startswith(tuple(prefixes))]
    if not chosen:
        raise ValueError(f"EWCController.params: {params!r} selects no parameter of {type(model).__name__} "
                         f"(parameters: {', '.join(named[:8])}{', …' if len(named) > 8 else ''})")
    return chosen


def _xy_batches(dataset, batch_size: int, limit: int, seed: int = 0) -> Iterable[tuple[Tensor, Tensor]]:
    """Batches ``(x, y)`` over ``limit`` items of an Avalanche/torch dataset drawn at random without
    replacement (``torch.Generator`` seeded with ``seed``); the whole dataset when ``limit >= len``.

    A random subset, not the first ``limit`` items: Avalanche's PermutedMNIST experiences are sorted
    by class, so their first 1000 items are all digit 0.
    """
    if limit < len(dataset):
        generator = torch.Generator().manual_seed(seed)
        indices = torch.randperm(len(dataset), generator=generator)[:limit].sort().values
        dataset = torch.utils.data.Subset(dataset, indices.tolist())
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in loader:
        yield batch[0], batch[1]


def empirical_fisher(model: nn.Module, names: Sequence[str], batches: Iterable[tuple[Tensor, Tensor]],
                     criterion, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """Mean over samples of the squared per-sample gradient of ``criterion(model(x_i), y_i)``.

    ``criterion`` is the negative log-likelihood of one sample (e.g. cross-entropy). The model is
    put in eval mode for the computation and restored afterwards.
    """
    from torch.func import functional_call, grad, vmap

    was_training = model.training
    model.eval()
    chosen = {n: p.detach() for n, p in model.named_parameters() if n in set(names)}
    others = {n: p.detach() for n, p in model.named_parameters() if n not in chosen}
    buffers = dict(model.named_buffers())
    sums = {n: torch.zeros_like(p) for n, p in chosen.items()}
    count = 0

    def sample_loss(theta, x, y):
        out = functional_call(model, ({**others, **theta}, buffers), (x.unsqueeze(0),))
        return criterion(out, y.unsqueeze(0))

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))
    try:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            try:
                grads = per_sample(chosen, x, y)
                for n in sums:
                    sums[n] += (grads[n] ** 2).sum(0)
            except RuntimeError:  # ops vmap cannot batch: one sample at a time
                for i in range(len(x)):
                    g = grad(sample_loss)(chosen, x[i], y[i])
                    for n in sums:
                        sums[n] += g[n] ** 2
            count += len(x)
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("empirical_fisher: no samples")
    return {n: s / count for n, s in sums.items()}


class EWCController(SupervisedPlugin):
    """EWC / online EWC on a chosen parameter subset, for any Avalanche ``SupervisedTemplate``.

    Args:
        ewc_lambda: λ of the penalty.
        mode: ``"separate"`` or ``"online"``.
        decay_factor: γ of online EWC (ignored by ``separate``).
        params: ``"controller"``, ``"all"`` or name prefixes (list or comma-separated string).
        fisher_samples: at most this many samples of each experience, drawn at random, enter the Fisher (0: all).
        fisher_mb_size: batch size of the Fisher computation.
    """

    def __init__(self, ewc_lambda: float = 100.0, mode: str = "online", decay_factor: float = 0.9,
                 params: str | Sequence[str] = "controller", fisher_samples: int = 1000,
                 fisher_mb_size: int = 64):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"EWCController.mode: expected one of {', '.join(MODES)}, got {mode!r}")
        if not 0.0 <= decay_factor <= 1.0:
            raise ValueError(f"EWCController.decay_factor: expected a number in [0, 1], got {decay_factor!r}")
        if ewc_lambda < 0:
            raise ValueError(f"EWCController.ewc_lambda: expected a number >= 0, got {ewc_lambda!r}")
        self.ewc_lambda = float(ewc_lambda)
        self.mode = mode
        self.decay_factor = float(decay_factor)
        self.params = params
        self.fisher_samples = int(fisher_samples)
        self.fisher_mb_size = int(fisher_mb_size)
        #: one dict per consolidated experience (``separate``) or at most one (``online``)
        self.anchors: list[dict[str, Tensor]] = []
        self.fishers: list[dict[str, Tensor]] = []
        self.experiences_seen = 0

    # -- penalty -----------------------------------------------------------------------------
    def penalty(self, model: nn.Module) -> Tensor:
        """The current EWC penalty of ``model`` (zero before the first experience ends)."""
        named = dict(model.named_parameters())
        device = next(model.parameters()).device
        if self.anchors and next(iter(self.anchors[0].values())).device != device:
            self.to(device)
        total = torch.zeros((), device=device)
        for anchors, fishers in zip(self.anchors, self.fishers):
            total = total + ewc_penalty(named, anchors, fishers, self.ewc_lambda)
        return total

    def before_backward(self, strategy, **kwargs):
        if self.fishers:
            strategy.loss = strategy.loss + self.penalty(strategy.model)

    # -- consolidation -----------------------------------------------------------------------
    def after_training_exp(self, strategy, **kwargs):
        model = strategy.model
        names = select_parameters(model, self.params)
        dataset = strategy.experience.dataset
        limit = len(dataset) if self.fisher_samples <= 0 else min(self.fisher_samples, len(dataset))
        criterion = strategy._criterion
        batches = _xy_batches(dataset, self.fisher_mb_size, limit, seed=self.experiences_seen)
        fisher = empirical_fisher(model, names, batches, criterion, strategy.device)
        self.consolidate(model, fisher)

    def consolidate(self, model: nn.Module, fisher: dict[str, Tensor]) -> None:
        """Add an experience's Fisher with the current parameters of ``model`` as the anchor."""
        named = dict(model.named_parameters())
        anchor = {n: named[n].detach().clone() for n in fisher}
        fisher = {n: f.detach().clone() for n, f in fisher.items()}
        if self.mode == "online" and self.fishers:
            old = self.fishers[0]
            fisher = {n: self.decay_factor * old[n] + f if n in old else f for n, f in fisher.items()}
            self.anchors, self.fishers = [anchor], [fisher]
        else:
            self.anchors.append(anchor)
            self.fishers.append(fisher)
        self.experiences_seen += 1

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "experiences_seen": self.experiences_seen,
                "anchors": [{n: t.detach().cpu().clone() for n, t in a.items()} for a in self.anchors],
                "fishers": [{n: t.detach().cpu().clone() for n, t in f.items()} for f in self.fishers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["mode"] != self.mode:
            raise ValueError(f"EWCController.load_state_dict: state has mode {state['mode']!r}, plugin {self.mode!r}")
        self.experiences_seen = int(state["experiences_seen"])
        self.anchors = [dict(a) for a in state["anchors"]]
        self.fishers = [dict(f) for f in state["fishers"]]

    def to(self, device) -> "EWCController":
        """Move anchors and Fishers to ``device`` (they follow the model lazily otherwise)."""
        self.anchors = [{n: t.to(device) for n, t in a.items()} for a in self.anchors]
        self.fishers = [{n: t.to(device) for n, t in f.items()} for f in self.fishers]
        return self
