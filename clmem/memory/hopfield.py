"""Modern Hopfield / key-value memory (Ramsauer et al. 2020, "Hopfield Networks is All You Need").

Shapes: B queries, N stored patterns, W key size, V value size.

Retrieval is the update rule of the continuous modern Hopfield network, ``xi <- K^T softmax(beta K xi)``, applied
``steps - 1`` times in key space, followed by the read-out ``softmax(beta K xi)^T V`` (with ``V = K`` in keys-only,
auto-associative mode this is simply ``steps`` updates). ``hopfield_retrieve`` is the pure function.

``HopfieldMemory`` stores the patterns as registered buffers (``keys [N, W]``, ``values [N, V]``, ``filled``,
``usage``, ``pointer``): they are saved by ``state_dict``, persist across experiences, are never trained, and change
only through the explicit ``@torch.no_grad()`` methods ``write``, ``record_usage`` and ``reset``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from ._validation import check_choice, check_int

WRITE_POLICIES = ("ring", "least_used")


def hopfield_attention(query: Tensor, keys: Tensor, beta: float, mask: Optional[Tensor] = None) -> Tensor:
    """``softmax(beta * K xi)``: ``query [B, W]``, ``keys [N, W]``, ``mask [N]`` (bool, True = stored) -> ``[B, N]``."""
    scores = beta * query @ keys.transpose(0, 1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1)


def hopfield_retrieve(query: Tensor, keys: Tensor, values: Optional[Tensor] = None, beta: float = 1.0,
                      steps: int = 1, mask: Optional[Tensor] = None) -> Tensor:
    """Retrieve ``[B, V]`` for ``query [B, W]`` from ``keys [N, W]`` and ``values [N, V]`` (None: keys-only).

    ``steps - 1`` state updates ``xi <- K^T softmax(beta K xi)``, then ``softmax(beta K xi)^T V``.
    """
    if steps < 1:
        raise ValueError(f"hopfield_retrieve.steps: expected an int >= 1, got {steps!r}")
    values = keys if values is None else values
    state = query
    for _ in range(steps - 1):
        state = hopfield_attention(state, keys, beta, mask) @ keys
    return hopfield_attention(state, keys, beta, mask) @ values


@dataclass(frozen=True)
class HopfieldConfig:
    """Hopfield memory hyper-parameters.

    Attributes:
        capacity: N, number of pattern slots.
        key_size: W.  value_size: V (``None``: keys-only, values are the keys).
        beta: inverse temperature (``None``: ``1 / sqrt(key_size)`` as in Ramsauer et al.); 0 averages the values.
        steps: number of update steps (>= 1).
        policy: when full, ``"ring"`` overwrites the oldest pattern, ``"least_used"`` the pattern with the least
            attention mass accumulated by ``record_usage`` (ties: lowest slot index).
    """

    capacity: int
    key_size: int
    value_size: Optional[int] = None
    beta: Optional[float] = None
    steps: int = 1
    policy: str = "ring"

    def __post_init__(self) -> None:
        name = "HopfieldConfig"
        check_int(name, "capacity", self.capacity, 1)
        check_int(name, "key_size", self.key_size, 1)
        if self.value_size is not None:
            check_int(name, "value_size", self.value_size, 1)
        if self.beta is not None:
            ok = isinstance(self.beta, (int, float)) and not isinstance(self.beta, bool)
            if not ok or not math.isfinite(self.beta) or self.beta < 0:
                raise ValueError(f"{name}.beta: expected a finite number >= 0 or None, got {self.beta!r}")
        check_int(name, "steps", self.steps, 1)
        check_choice(name, "policy", self.policy, WRITE_POLICIES)

    @property
    def resolved_beta(self) -> float:
        """The inverse temperature actually used."""
        return 1.0 / math.sqrt(self.key_size) if self.beta is None else float(self.beta)

    @property
    def resolved_value_size(self) -> int:
        """V (the key size in keys-only mode)."""
        return self.key_size if self.value_size is None else self.value_size


class HopfieldMemory(nn.Module):
    """Key-value pattern store with Hopfield retrieval; the buffers change only through ``write``/``reset``."""

    keys: Tensor
    values: Tensor
    filled: Tensor
    usage: Tensor
    pointer: Tensor

    def __init__(self, config: HopfieldConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("keys", torch.zeros(config.capacity, config.key_size))
        self.register_buffer("values", torch.zeros(config.capacity, config.resolved_value_size))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("usage", torch.zeros(config.capacity))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))  # next slot of the ring policy

    @property
    def mask(self) -> Tensor:
        """``[N]`` bool, True for slots holding a pattern (slots fill in order)."""
        return torch.arange(self.config.capacity, device=self.keys.device) < self.filled

    def forward(self, query: Tensor) -> Tensor:
        """Retrieve ``[B, V]`` for ``query [B, W]``; zeros while the memory is empty. Buffers are not modified."""
        if int(self.filled) == 0:
            return query.new_zeros(query.shape[0], self.config.resolved_value_size)
        values = None if self.config.value_size is None else self.values
        return hopfield_retrieve(query, self.keys, values, self.config.resolved_beta, self.config.steps, self.mask)

    def _slots_for(self, count: int) -> Tensor:
        """Slots ``[count]`` to write next: free slots first, then the policy's victims."""
        cap, filled = self.config.capacity, int(self.filled)
        free = torch.arange(filled, min(cap, filled + count), device=self.keys.device)
        extra = count - free.numel()
        if extra == 0:
            return free
        if self.config.policy == "ring":
            victims = (int(self.pointer) + torch.arange(extra, device=self.keys.device)) % cap
            self.pointer.fill_((int(self.pointer) + extra) % cap)
        else:  # least_used over the patterns stored before this call
            victims = torch.sort(self.usage, stable=True).indices[:extra]
        return torch.cat([free, victims])

    @torch.no_grad()
    def write(self, keys: Tensor, values: Optional[Tensor] = None) -> Tensor:
        """Store ``keys [M, W]`` (and ``values [M, V]``, required unless keys-only); returns the slots ``[M]``.

        When more than ``capacity`` patterns are written at once only the last ``capacity`` are kept.
        """
        if (values is None) != (self.config.value_size is None):
            raise ValueError("HopfieldMemory.write.values: expected values exactly when config.value_size is set")
        keys = keys.detach()[-self.config.capacity:]
        values = keys if values is None else values.detach()[-self.config.capacity:]
        slots = self._slots_for(keys.shape[0])
        self.keys[slots] = keys.to(self.keys)
        self.values[slots] = values.to(self.values)
        self.usage[slots] = 0.0
        self.filled.fill_(min(self.config.capacity, int(self.filled) + keys.shape[0]))
        return slots

    @torch.no_grad()
    def record_usage(self, query: Tensor) -> None:
        """Add the attention mass of ``query [B, W]`` to each stored pattern's usage (``least_used`` policy)."""
        if int(self.filled) > 0:
            attention = hopfield_attention(query.detach().to(self.keys), self.keys, self.config.resolved_beta,
                                           self.mask)
            self.usage += attention.sum(0)

    @torch.no_grad()
    def reset(self) -> None:
        """Forget every pattern."""
        for buffer in (self.keys, self.values, self.filled, self.usage, self.pointer):
            buffer.zero_()

    def extra_repr(self) -> str:
        return f"{self.config}, filled={int(self.filled)}"
