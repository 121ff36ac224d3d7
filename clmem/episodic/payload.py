"""Preallocated payload arrays indexed by slot id, and the batch type the stores return."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

OPTIONAL_FIELDS = ("inputs", "labels", "logits")


@dataclass(frozen=True)
class EpisodeBatch:
    """Items read from a store, in the order asked for.

    ``inputs``/``labels``/``logits`` are ``None`` when the store was never given them.
    ``slot_ids`` are the store's ids (global ids for a sharded store).
    """

    slot_ids: torch.Tensor
    embeddings: torch.Tensor
    experiences: torch.Tensor
    inputs: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    logits: torch.Tensor | None = None

    def __len__(self) -> int:
        """Number of items."""
        return int(self.slot_ids.shape[0])

    @staticmethod
    def concat(parts: list["EpisodeBatch"], order: np.ndarray | None = None) -> "EpisodeBatch":
        """Concatenate batches (then reorder rows by ``order`` if given)."""
        fields: dict[str, Any] = {}
        for name in ("slot_ids", "embeddings", "experiences", *OPTIONAL_FIELDS):
            values = [getattr(p, name) for p in parts]
            if any(v is None for v in values):
                fields[name] = None
                continue
            joined = torch.cat(values)
            fields[name] = joined[torch.from_numpy(order)] if order is not None else joined
        return EpisodeBatch(**fields)


def as_tensor(value: Any, name: str, rows: int) -> torch.Tensor:
    """CPU tensor with ``rows`` leading rows, or a one-line ``ValueError`` naming ``name``."""
    tensor = value.detach().cpu() if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    if tensor.dim() == 0 or tensor.shape[0] != rows:
        raise ValueError(f"add(): {name} must have {rows} rows (one per embedding), got shape {tuple(tensor.shape)}")
    return tensor


def as_range(index: np.ndarray) -> slice | None:
    """``index`` as an equivalent slice when it is a run of consecutive integers, else ``None``."""
    if len(index) == 0 or int(index[-1]) - int(index[0]) != len(index) - 1:
        return None
    if len(index) > 1 and not bool((np.diff(index) == 1).all()):
        return None
    return slice(int(index[0]), int(index[-1]) + 1)


class PayloadBuffer:
    """Payloads (torch) in arrays indexed by slot id, and the occupancy of the ``capacity`` slots.

    Optional payload arrays grow by amortised doubling up to ``capacity`` rows as higher slots are
    written (a store of 10^6 slots allocates no inputs/logits until it fills); experience ids and
    occupancy span the capacity from the start in lazily zeroed pages.  Embeddings are not kept here:
    the FAISS index holds the only copy (see :mod:`clmem.episodic.index`).  Optional payloads are
    allocated on the first ``write`` that provides them; from then on every write must provide them
    (and none may be introduced once items without them are held).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._allocate()

    def _allocate(self) -> None:
        """(Re)allocate empty arrays."""
        self.rows = 0  # allocated rows of the optional payload arrays
        # fixed-size per-slot arrays span the capacity; np.zeros maps zero pages lazily (no memset)
        self.experiences = torch.from_numpy(np.zeros(self.capacity, dtype=np.int64))
        self.occupied = np.zeros(self.capacity, dtype=bool)
        self.optional: dict[str, torch.Tensor | None] = {name: None for name in OPTIONAL_FIELDS}

    def _reserve(self, rows: int) -> None:
        """Grow the optional payload arrays to at least ``rows`` rows (doubling, at most ``capacity``)."""
        if rows <= self.rows:
            return
        new = min(self.capacity, max(rows, 2 * self.rows, 64))
        self.optional = {name: (_grow(t, new) if t is not None else None) for name, t in self.optional.items()}
        self.rows = new

    def check_schema(self, given: dict[str, torch.Tensor | None]) -> None:
        """Allocate newly seen optional payloads; reject a batch whose fields differ from what is held."""
        for name, value in given.items():
            held = self.optional[name]
            if held is None and value is not None:
                if self.occupied.any():
                    raise ValueError(f"add(): {name} given now but not for the items already held")
                self.optional[name] = torch.zeros((self.rows, *value.shape[1:]), dtype=value.dtype)
            elif held is not None and value is None:
                raise ValueError(f"add(): {name} expected (the store holds {name} of shape {tuple(held.shape[1:])})")
            elif held is not None and tuple(value.shape[1:]) != tuple(held.shape[1:]):
                raise ValueError(f"add(): {name} expected shape (*, {tuple(held.shape[1:])}), got {tuple(value.shape)}")

    def write(self, slots: np.ndarray, rows: np.ndarray, experience: torch.Tensor | int,
              given: dict[str, torch.Tensor | None]) -> None:
        """Copy batch rows ``rows`` into slots ``slots`` (plain slice copies when both are ranges)."""
        if len(slots) == 0:
            return
        self._reserve(int(slots.max()) + 1)
        dst, src = as_range(slots), as_range(rows)
        if dst is None or src is None:
            dst, src = torch.from_numpy(slots), torch.from_numpy(rows)  # type: ignore[assignment]
        self.experiences[dst] = experience if isinstance(experience, int) else experience[src]
        for name, value in given.items():
            held = self.optional[name]
            if held is not None and value is not None:
                held[dst] = value[src].to(held.dtype)
        self.occupied[dst if isinstance(dst, slice) else slots] = True

    def read(self, slots: np.ndarray, embeddings: np.ndarray) -> EpisodeBatch:
        """Payload batch of the (occupied) slots ``slots`` with their ``embeddings [len(slots), D]``."""
        index = torch.from_numpy(slots)
        fields = {name: t[index] if t is not None else None for name, t in self.optional.items()}
        return EpisodeBatch(slot_ids=index.clone(), embeddings=torch.from_numpy(embeddings),
                            experiences=self.experiences[index], **fields)

    def state(self) -> dict[str, Any]:
        """Checkpointable state (only occupied rows are kept)."""
        index = torch.from_numpy(np.flatnonzero(self.occupied))
        state: dict[str, Any] = {"slots": index.clone(), "experiences": self.experiences[index]}
        for name, held in self.optional.items():
            state[name] = held[index] if held is not None else None
            state[f"{name}_shape"] = list(held.shape[1:]) if held is not None else None
            state[f"{name}_dtype"] = str(held.dtype).removeprefix("torch.") if held is not None else None
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state`."""
        self._allocate()
        slots = state["slots"].numpy().astype(np.int64)
        for name in OPTIONAL_FIELDS:
            if state[name] is not None:
                dtype = getattr(torch, state[f"{name}_dtype"])
                self.optional[name] = torch.zeros((0, *state[f"{name}_shape"]), dtype=dtype)
        self._reserve(int(slots.max()) + 1 if len(slots) else 0)
        index = torch.from_numpy(slots)
        self.experiences[index] = state["experiences"]
        for name in OPTIONAL_FIELDS:
            if state[name] is not None:
                self.optional[name][index] = state[name]  # type: ignore[index]
        self.occupied[slots] = True


def _grow(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """``tensor`` with ``rows`` leading rows: its rows first, then uninitialised rows (never read unwritten)."""
    out = torch.empty((rows, *tensor.shape[1:]), dtype=tensor.dtype)
    out[:len(tensor)] = tensor
    return out
