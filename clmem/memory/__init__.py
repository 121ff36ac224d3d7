"""Differentiable memories (NTM, DNC, LRUA), their addressing primitives, controllers and recurrent cores.

Package code depends only on torch/numpy and the standard library.
"""

from . import addressing
from .addressing import (
    EPSILON,
    allocation_weights,
    circular_shift,
    content_weights,
    cosine_similarity,
    directional_read_weights,
    erase_and_write,
    interpolate,
    least_used_weights,
    lrua_usage,
    lrua_write_weights,
    oneplus,
    read_memory,
    read_weights,
    sharpen,
    temporal_link_step,
    update_link,
    update_precedence,
    update_usage,
    write_allocation_weights,
    write_weights,
)
from .controller import Controller, ControllerConfig, ControllerState
from .cores import (
    CoreConfig,
    CoreState,
    CoreTrace,
    DNCCore,
    DNCCoreConfig,
    MANNCore,
    MANNCoreConfig,
    MemoryCore,
    NTMCore,
    NTMCoreConfig,
    detach_state,
)
from .dnc import DNCInterface, DNCMemory, DNCMemoryConfig, DNCState
from .lrua import LRUAInterface, LRUAMemory, LRUAMemoryConfig, LRUAState
from .ntm import NTMHeadParams, NTMInterface, NTMMemory, NTMMemoryConfig, NTMState, ntm_address

__all__ = [
    "addressing", "EPSILON", "allocation_weights", "circular_shift", "content_weights", "cosine_similarity",
    "directional_read_weights", "erase_and_write", "interpolate", "least_used_weights", "lrua_usage",
    "lrua_write_weights", "oneplus", "read_memory", "read_weights", "sharpen", "temporal_link_step", "update_link",
    "update_precedence", "update_usage", "write_allocation_weights", "write_weights",
    "Controller", "ControllerConfig", "ControllerState",
    "CoreConfig", "CoreState", "CoreTrace", "MemoryCore", "detach_state",
    "DNCCore", "DNCCoreConfig", "NTMCore", "NTMCoreConfig", "MANNCore", "MANNCoreConfig",
    "DNCInterface", "DNCMemory", "DNCMemoryConfig", "DNCState",
    "LRUAInterface", "LRUAMemory", "LRUAMemoryConfig", "LRUAState",
    "NTMHeadParams", "NTMInterface", "NTMMemory", "NTMMemoryConfig", "NTMState", "ntm_address",
]

# --------------------------------------------------------------------------------------------------------------
# Re-exports of memories written in other modules of this package (owned by other engineers).
# They are optional here so that this package imports while those files are missing or still in progress.
# --------------------------------------------------------------------------------------------------------------
try:  # clmem/memory/sparse.py: sparse access memory and its core
    from .sparse import SparseDNCCore, SparseMemory  # noqa: F401

    __all__ += ["SparseMemory", "SparseDNCCore"]
except ImportError:
    pass

try:  # clmem/memory/hopfield.py: modern Hopfield memory
    from .hopfield import HopfieldMemory  # noqa: F401

    __all__ += ["HopfieldMemory"]
except ImportError:
    pass
