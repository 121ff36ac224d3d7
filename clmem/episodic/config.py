"""Configuration of an :class:`~clmem.episodic.store.EpisodicStore`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

INDEX_TYPES = ("flat", "ivf", "hnsw")
METRICS = ("l2", "ip")
POLICIES = ("reservoir", "class_balanced")
DEVICES = ("cpu", "cuda", "auto")

#: FAISS warns below 39 training points per centroid; an IVF store trains once it holds this many per list.
IVF_POINTS_PER_LIST = 39


def _check_positive_int(name: str, value: Any) -> None:
    """Raise a one-line ``ValueError`` unless ``value`` is an int >= 1 (bools are rejected)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"EpisodicStoreConfig.{name}: expected a positive int, got {value!r}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    """Raise a one-line ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"EpisodicStoreConfig.{name}: expected one of {', '.join(choices)}, got {value!r}")


@dataclass(frozen=True)
class EpisodicStoreConfig:
    """What an episodic store holds and how it indexes it.

    Attributes:
        dim: embedding dimension D.
        capacity: maximum number of items held (slot ids are ``0 .. capacity-1``).
        index: ``"flat"`` (exact), ``"ivf"`` (IVFFlat; exact flat search until it holds
            ``IVF_POINTS_PER_LIST * nlist`` items, then it trains once and switches) or ``"hnsw"``.
        metric: ``"l2"`` (squared Euclidean distance, smaller is nearer) or ``"ip"``
            (inner product, larger is nearer).
        policy: ``"reservoir"`` (Vitter's algorithm R over all items ever offered) or
            ``"class_balanced"`` (when full, replace a random item of the currently largest class).
        nlist: number of IVF lists; nprobe: lists visited per IVF query (<= nlist).
        hnsw_m: HNSW graph degree; hnsw_ef_search / hnsw_ef_construction: HNSW beam widths.
        seed: seed of the insertion policy and of IVF k-means.
        device: ``"cpu"``, ``"cuda"`` (FAISS GPU required) or ``"auto"`` (GPU when FAISS sees one).
    """

    dim: int
    capacity: int
    index: str = "flat"
    metric: str = "l2"
    policy: str = "reservoir"
    nlist: int = 64
    nprobe: int = 8
    hnsw_m: int = 32
    hnsw_ef_search: int = 64
    hnsw_ef_construction: int = 40
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        """Validate every field; errors are one line naming the field and what was expected."""
        for name in ("dim", "capacity", "nlist", "nprobe", "hnsw_m", "hnsw_ef_search", "hnsw_ef_construction"):
            _check_positive_int(name, getattr(self, name))
        _check_choice("index", self.index, INDEX_TYPES)
        _check_choice("metric", self.metric, METRICS)
        _check_choice("policy", self.policy, POLICIES)
        _check_choice("device", self.device, DEVICES)
        if self.nprobe > self.nlist:
            raise ValueError(f"EpisodicStoreConfig.nprobe: expected at most nlist={self.nlist}, got {self.nprobe}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"EpisodicStoreConfig.seed: expected a non-negative int, got {self.seed!r}")

    @property
    def ivf_train_size(self) -> int:
        """Number of stored items at which an IVF store trains its coarse quantizer."""
        return IVF_POINTS_PER_LIST * self.nlist

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (for checkpoints)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EpisodicStoreConfig":
        """Inverse of :meth:`to_dict`."""
        return cls(**data)
