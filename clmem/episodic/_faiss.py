"""Lazy FAISS import and device selection."""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

FAISS_MISSING = "faiss is not installed: pip install 'clmem[cpu]' (or 'clmem[gpu]' on CUDA nodes)"


def import_faiss() -> ModuleType:
    """Import FAISS on first use; raise one clear ``ImportError`` naming both extras if it is absent."""
    module = sys.modules.get("faiss")  # fast path: already imported (hot loops call this)
    if module is not None:
        return module
    try:
        return importlib.import_module("faiss")
    except ImportError as exc:
        raise ImportError(FAISS_MISSING) from exc


def gpu_available() -> bool:
    """True when this FAISS build has GPU support and sees at least one GPU."""
    faiss = import_faiss()
    get_num_gpus = getattr(faiss, "get_num_gpus", None)
    return bool(get_num_gpus is not None and get_num_gpus() > 0 and hasattr(faiss, "StandardGpuResources"))


def resolve_device(device: str, index_type: str) -> str:
    """Map a configured device (``cpu``/``cuda``/``auto``) to the one the index will use.

    HNSW has no FAISS GPU implementation, so it always runs on the CPU; ``"cuda"`` is an error
    there, ``"auto"`` quietly picks the CPU.
    """
    if device == "cpu":
        return "cpu"
    usable = index_type != "hnsw" and gpu_available()
    if device == "cuda" and not usable:
        why = "HNSW has no FAISS GPU index" if index_type == "hnsw" else "faiss-gpu with a visible GPU is required"
        raise RuntimeError(f"EpisodicStoreConfig.device='cuda' cannot be honoured: {why}")
    return "cuda" if usable else "cpu"
