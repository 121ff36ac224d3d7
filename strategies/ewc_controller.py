"""EWC and online EWC restricted to a chosen parameter set (all of them, or a memory learner's controller).

Penalty (Kirkpatrick et al. 2017), a pure function: ``(λ/2) Σ_i F_i (θ_i − θ*_i)²`` over the chosen
parameters (:func:`ewc_penalty`).

* ``mode="separate"``: one (anchor θ*, Fisher F) pair per past experience, penalties summed.
* ``mode="online"`` (Schwarz et al. 2018, "Progress & Compress"): a single running Fisher
  ``F ← γ F + F_new`` and the anchor at the parameters after the latest experience.

Fisher = **empirical** Fisher: the mean over the experience's samples (at most ``fisher_samples``)
of the squared per-sample gradient of the log-likelihood of the true label, i.e. of the
strategy's criterion on one sample (a batch of one, so a stream's masked loss works unchanged), the
model in eval mode. Per-sample gradients come from ``torch.func`` (``vmap`` of ``grad``) where the
model can be transformed, else from a plain autograd loop over the samples: the memory cores' custom
``autograd.Function``\ s and C kernels, and MemN2N's ``nonzero``, cannot be (``fisher_method="auto"``
falls back on the first failure and keeps the loop for that plugin). The samples are a random subset of
the experience (seeded by the experience count), not its first items, which may all share one class.

**Normalised Fisher** (``fisher_norm="max"``, the default): each experience's Fisher is divided by its
largest entry over all regularised parameters before it is stored or accumulated, so every entry lies in
[0, 1], as RWalk does with its Fisher (Chaudhry et al. 2018, "Riemannian Walk"; their code scales it to
[0, 1] per task). λ then sets the penalty's largest curvature: at most λ per stored experience
(``separate``) and λ / (1 − γ) in ``online`` mode, whatever the scale of the raw gradients; with the
defaults (λ = 5, γ = 0.9) that is 50, and SGD with learning rate η and momentum β is stable on it while
η · 50 < 2 (1 + β), e.g. η = 0.05 with β = 0.9. The raw Fisher has no such bound: it grows with the
gradients, and with λ = 100 on SplitMNIST (SGD 0.05, momentum 0.9) it reached 2.5e13 and NaN weights.
λ = 5 on the max-normalised Fisher is about λ = 100 on the raw one of a Permuted-MNIST MLP after its
first experience (raw maximum 0.043); ``fisher_norm="none"`` restores the raw scale, ``"mean"`` divides
by the mean entry (no bound on the largest).

Which parameters (``params``):

* ``"all"`` (default): every trainable parameter.
* ``"controller"``: the parameters with a ``controller`` component in their name (``controller.*``,
  ``core.controller.*`` in clmem's sequence learners over ``MANNCore``, ``NTMCore``, ``DNCCore``,
  ``SparseDNCCore``) when the model has any; otherwise every parameter except a read-out head, i.e.
  except names with a component in :data:`HEAD_PREFIXES` (``classifier.``, ``output_layer.``, ``head.``).
  On a plain MLP that leaves the head free to be overwritten: on Permuted MNIST it scored below naive.
* a list of name prefixes (or one comma-separated string of them), e.g. ``["body.0.", "body.2."]``.

The plugin's whole state (anchors, Fishers, experience count) is explicit and round-trips through
``state_dict()``/``load_state_dict()``.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from avalanche.core import SupervisedPlugin
from torch import Tensor, nn

from strategies.finite_guard import NonFiniteError, first_non_finite

#: Read-out heads left out by ``params="controller"`` when the model has no ``controller.*``.
HEAD_PREFIXES = ("classifier.", "output_layer.", "head.")
MODES = ("separate", "online")
FISHER_METHODS = ("auto", "vmap", "loop")
FISHER_NORMS = ("max", "mean", "none")
#: λ of the penalty on the max-normalised Fisher (see the module docstring for how it was chosen)
DEFAULT_LAMBDA = 5.0


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


def _has_component(name: str, prefix: str) -> bool:
    """Whether the dotted parameter ``name`` contains the component path ``prefix`` (e.g. ``"controller."``
    matches ``controller.cell.weight`` and ``core.controller.cell.weight``)."""
    return name.startswith(prefix) or f".{prefix}" in name


def select_parameters(model: nn.Module, params: str | Sequence[str] = "controller") -> list[str]:
    """Names of the trainable parameters of ``model`` chosen by ``params`` (see the module docstring)."""
    named = [n for n, p in model.named_parameters() if p.requires_grad]
    if isinstance(params, str) and params == "all":
        chosen = named
    elif isinstance(params, str) and params == "controller":
        chosen = [n for n in named if _has_component(n, "controller.")]
        if not chosen:
            chosen = [n for n in named if not any(_has_component(n, h) for h in HEAD_PREFIXES)]
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


def readout(output, y: Tensor) -> Tensor:
    """The model output the criterion scores, as :class:`strategies.sequence.SequenceStrategy` reads it out:
    the logits of a ``(logits, state)`` tuple; for class-id targets ``y [B]`` and per-step logits
    ``[B, T, V]``, the last (answer) step ``[B, V]``; otherwise the output unchanged."""
    if isinstance(output, tuple):
        output = output[0]
    if output.dim() == 3 and y.dim() == 1:
        output = output[:, -1]
    return output


def _vmap_square_grads(model: nn.Module, names: Sequence[str], criterion, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """``Σ_i g_i²`` over the samples of ``x [B, ...]``, ``y [B, ...]``, ``g_i`` the gradient of the loss of
    sample ``i`` w.r.t. the parameters ``names``, with ``torch.func`` (``vmap`` of ``grad``)."""
    from torch.func import functional_call, grad, vmap

    chosen = {n: p.detach() for n, p in model.named_parameters() if n in set(names)}
    others = {n: p.detach() for n, p in model.named_parameters() if n not in chosen}
    buffers = dict(model.named_buffers())

    def sample_loss(theta, xi, yi):
        out = functional_call(model, ({**others, **theta}, buffers), (xi.unsqueeze(0),))
        return criterion(readout(out, yi.unsqueeze(0)), yi.unsqueeze(0))

    grads = vmap(grad(sample_loss), in_dims=(None, 0, 0))(chosen, x, y)
    return {n: (grads[n] ** 2).sum(0) for n in chosen}


def _loop_square_grads(model: nn.Module, names: Sequence[str], criterion, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """The same sums as :func:`_vmap_square_grads` with plain autograd, one sample (``x[i:i+1]``) at a time:
    works through custom ``autograd.Function``\ s and C kernels that ``torch.func`` cannot transform."""
    named = dict(model.named_parameters())
    params = [named[n] for n in names]
    sums = [torch.zeros_like(p) for p in params]
    with torch.enable_grad():
        for i in range(len(x)):
            xi, yi = x[i:i + 1], y[i:i + 1]
            loss = criterion(readout(model(xi), yi), yi)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for s, g in zip(sums, grads):
                if g is not None:
                    s.add_(g.detach() ** 2)
    return dict(zip(names, sums))


def empirical_fisher(model: nn.Module, names: Sequence[str], batches: Iterable[tuple[Tensor, Tensor]],
                     criterion, device: str | torch.device = "cpu", method: str = "auto") -> dict[str, Tensor]:
    """Mean over samples of the squared per-sample gradient of ``criterion(readout(model(x_i)), y_i)``.

    ``criterion`` is the negative log-likelihood of the sample(s) it is given (cross-entropy, or a stream's
    masked loss) and is evaluated on one sample at a time (batch of 1). ``method``: ``"vmap"``
    (``torch.func``), ``"loop"`` (plain autograd per sample) or ``"auto"``: ``vmap``, and from the first batch
    it fails on (a custom ``autograd.Function`` without ``setup_context``, a C kernel, an op without a
    batching rule, …) the loop. The model is in eval mode for the computation and restored afterwards.
    """
    return fisher_and_method(model, names, batches, criterion, device, method)[0]


def fisher_and_method(model: nn.Module, names: Sequence[str], batches, criterion, device="cpu",
                method: str = "auto") -> tuple[dict[str, Tensor], str]:
    """(:func:`empirical_fisher`, the method that computed its last batch: ``"vmap"`` or ``"loop"``)."""
    if method not in FISHER_METHODS:
        raise ValueError(f"empirical_fisher.method: expected one of {', '.join(FISHER_METHODS)}, got {method!r}")
    was_training = model.training
    model.eval()
    names = list(names)
    sums = {n: torch.zeros_like(p, memory_format=torch.contiguous_format)
            for n, p in model.named_parameters() if n in set(names)}
    count, use = 0, "vmap" if method in ("auto", "vmap") else "loop"
    try:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            if use == "vmap":
                try:
                    batch = _vmap_square_grads(model, names, criterion, x, y)
                except Exception:  # noqa: BLE001 - any failure of the transform: fall back for good
                    if method == "vmap":
                        raise
                    use = "loop"
            if use == "loop":
                batch = _loop_square_grads(model, names, criterion, x, y)
            for n in sums:
                sums[n] += batch[n].detach()
            count += len(x)
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("empirical_fisher: no samples")
    return {n: s / count for n, s in sums.items()}, use


def normalize_fisher(fisher: dict[str, Tensor], how: str = "max") -> dict[str, Tensor]:
    """``fisher`` scaled by one number over all its entries: ``"max"`` divides by the largest entry (every
    value then lies in [0, 1]), ``"mean"`` by the mean entry, ``"none"`` leaves it. An all-zero Fisher is
    returned unchanged."""
    if how not in FISHER_NORMS:
        raise ValueError(f"EWCController.fisher_norm: expected one of {', '.join(FISHER_NORMS)}, got {how!r}")
    if how == "none" or not fisher:
        return dict(fisher)
    flat = [f.detach().flatten() for f in fisher.values()]
    if how == "max":
        scale = torch.stack([f.max() for f in flat if f.numel()]).max()
    else:
        scale = sum(f.sum() for f in flat) / max(1, sum(f.numel() for f in flat))
    if not float(scale) > 0.0:
        return dict(fisher)
    return {n: f / scale for n, f in fisher.items()}


class EWCController(SupervisedPlugin):
    """EWC / online EWC on a chosen parameter subset, for any Avalanche ``SupervisedTemplate``.

    Args:
        ewc_lambda: λ of the penalty (applied to the normalised Fisher, see ``fisher_norm``).
        mode: ``"separate"`` or ``"online"``.
        decay_factor: γ of online EWC (ignored by ``separate``).
        params: ``"controller"``, ``"all"`` or name prefixes (list or comma-separated string).
        fisher_samples: at most this many samples of each experience, drawn at random, enter the Fisher (0: all).
        fisher_mb_size: batch size of the Fisher computation.
        fisher_norm: ``"max"`` (each experience's Fisher divided by its largest entry), ``"mean"`` or ``"none"``.
        fisher_method: ``"auto"``, ``"vmap"`` or ``"loop"`` (see :func:`empirical_fisher`).
    """

    def __init__(self, ewc_lambda: float = DEFAULT_LAMBDA, mode: str = "online", decay_factor: float = 0.9,
                 params: str | Sequence[str] = "all", fisher_samples: int = 1000, fisher_mb_size: int = 64,
                 fisher_norm: str = "max", fisher_method: str = "auto"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"EWCController.mode: expected one of {', '.join(MODES)}, got {mode!r}")
        if not 0.0 <= decay_factor <= 1.0:
            raise ValueError(f"EWCController.decay_factor: expected a number in [0, 1], got {decay_factor!r}")
        if not ewc_lambda >= 0:
            raise ValueError(f"EWCController.ewc_lambda: expected a number >= 0, got {ewc_lambda!r}")
        if fisher_norm not in FISHER_NORMS:
            raise ValueError(f"EWCController.fisher_norm: expected one of {', '.join(FISHER_NORMS)}, got {fisher_norm!r}")
        if fisher_method not in FISHER_METHODS:
            raise ValueError(f"EWCController.fisher_method: expected one of {', '.join(FISHER_METHODS)}, "
                             f"got {fisher_method!r}")
        self.ewc_lambda = float(ewc_lambda)
        self.mode = mode
        self.decay_factor = float(decay_factor)
        self.params = params
        self.fisher_samples = int(fisher_samples)
        self.fisher_mb_size = int(fisher_mb_size)
        self.fisher_norm = fisher_norm
        self.fisher_method = fisher_method
        self._method = fisher_method  # "auto" turns into "loop" once torch.func has failed (not retried)
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
        batches = _xy_batches(dataset, self.fisher_mb_size, limit, seed=self.experiences_seen)
        fisher, self._method = fisher_and_method(model, names, batches, strategy._criterion, strategy.device,
                                                 self._method)
        bad = first_non_finite(fisher.items())
        if bad is not None:
            raise NonFiniteError(f"non-finite Fisher of parameter {bad!r} after experience "
                                 f"{strategy.experience.current_experience} (EWCController)")
        self.consolidate(model, normalize_fisher(fisher, self.fisher_norm))

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
